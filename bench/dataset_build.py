"""Dataset-phase benchmark at ~1M events; every figure is a ratio against a baseline measured
in the same run, on the same database.

    make bench                      # or: python -m bench.dataset_build [--households 48000 --weeks 8] [--reuse]

1. generator: events loaded per second (goal: 1M events well under a minute);
2. extraction: our extraction stage (plan_id ranges in parallel, each streamed to its staged
   part with its marker: what `planner_dataset`'s mapped `extract_range` tasks do) against a raw Arrow fetch of the same rows (ADBC fetch_arrow_table of the same statement
   on one connection): goal <= 1.5x; the raw fetch of the window's source events alone is
   printed too, to show what the pushed-down joins cost;
3. the whole build (extract, as-of joins, rows, Parquet) in a child process, with its peak
   RSS: goals <= 60 s and <= 2 GB on a 2-core machine;
4. the naive per-event lookup (a loop of one query per lookup, as-of semantics kept)
   on a 20k-event sample, scaled to the window: goal >= 20x slower than the build; once with
   one persistent connection (the strongest form of the loop) and once through
   PostgresHook.get_records (what the loop becomes in an Airflow task: a connection per call).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from include.core.config import settings
from include.core.local_postgres import ensure_database
from include.dataset.build import (
    arrow_connect,
    bind_settings,
    extraction_session_settings,
    fetch_arrow,
    sql_text,
)
from include.dataset.window import resolve_window
from include.events import generate
from include.events.db import connect

END = datetime(2026, 11, 23, tzinfo=UTC)
WINDOW = resolve_window("2026-11-23", 28)


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def _bench_dsn() -> str:
    base = settings().events_dsn.rsplit("/", 1)[0]
    return ensure_database(f"{base}/planner_bench")


def _event_count(dsn: str) -> int:
    with connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('exp.events')").fetchone()[0]
        return conn.execute("SELECT count(*) FROM exp.events").fetchone()[0] if exists else 0


def raw_fetch_same_rows(dsn: str) -> int:
    """Baseline: the whole candidate statement fetched as one Arrow table on one connection."""
    conn = arrow_connect(dsn)
    try:
        bind_settings(conn, {**extraction_session_settings(),
                             "planner.window_start": WINDOW.start, "planner.window_end": WINDOW.end,
                             "planner.plan_id_from": "", "planner.plan_id_to": ""})
        with conn.cursor() as cur:
            cur.execute(sql_text("candidate_rows.sql"))
            return cur.fetch_arrow_table().num_rows
    finally:
        conn.close()


def raw_fetch_source_events(dsn: str) -> int:
    table = fetch_arrow(dsn, "SELECT event_id, event_type, unit_id, \"timestamp\", context::text, payload::text "
                             "FROM exp.events WHERE event_type IN ('plan_generated', 'plan_accepted') "
                             "AND \"timestamp\" >= $1 AND \"timestamp\" < $2", (WINDOW.start, WINDOW.end))
    return table.num_rows


def our_extraction(dsn: str, parts: int) -> int:
    """The mapped extract_range tasks' work, run concurrently here: one staged part per range."""
    from concurrent.futures import ThreadPoolExecutor

    from include.dataset import parts as ranges

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(parts) as pool:
        specs = ranges.plan_ranges(WINDOW, parts, run_key="bench/extraction", staging_uri=str(Path(tmp) / "parts"))
        parts_written = list(pool.map(lambda spec: ranges.extract_range(dsn, spec), specs))
        return sum(p["rows"] + p["quarantined"] for p in parts_written)


BUILD_CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
from include.dataset.build import build_dataset
from include.dataset.window import resolve_window
started = time.perf_counter()
counts = build_dataset(sys.argv[1], resolve_window("2026-11-23", 28), Path(tempfile.mkdtemp()), 0.05, int(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - started, "rows": counts["rows"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def whole_build(dsn: str, parts: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BUILD_CHILD, dsn, str(parts)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


NAIVE_LOOKUPS = [
    # (name, SQL with %s placeholders, which arguments) -- the naive loop, made correct (as of the plan time)
    ("generation", "SELECT \"timestamp\", context, payload FROM exp.events WHERE payload->>'plan_id' = %s "
                   "AND event_type = 'plan_generated' AND \"timestamp\" <= %s ORDER BY \"timestamp\" DESC LIMIT 1"),
    ("household", "SELECT * FROM app.households WHERE household_id = %s AND valid_from <= %s "
                  "ORDER BY valid_from DESC LIMIT 1"),
    ("pantry", "SELECT * FROM app.pantry_snapshots WHERE household_id = %s AND valid_from <= %s "
               "ORDER BY valid_from DESC LIMIT 1"),
    ("constraints", "SELECT * FROM app.constraints WHERE household_id = %s AND valid_from <= %s "
                    "ORDER BY valid_from DESC LIMIT 1"),
    ("previous_plan", "SELECT payload FROM exp.events WHERE unit_id = %s AND event_type = 'plan_accepted' "
                      "AND \"timestamp\" < %s ORDER BY \"timestamp\" DESC LIMIT 1"),
    ("user_edits", "SELECT * FROM app.plan_edits WHERE plan_id = %s AND \"timestamp\" <= %s ORDER BY \"timestamp\""),
]


def _sample_events(dsn: str, sample: int) -> list[tuple]:
    """The first `sample` plan events of the window, in time order (the loop's input)."""
    with connect(dsn) as conn:
        return conn.execute(
            "SELECT event_type, unit_id, \"timestamp\", payload FROM exp.events "
            "WHERE event_type IN ('plan_generated', 'plan_accepted') AND \"timestamp\" >= %s AND \"timestamp\" < %s "
            "ORDER BY \"timestamp\", event_id LIMIT %s", (WINDOW.start, WINDOW.end, sample)).fetchall()


def naive_per_event(events: list[tuple], query) -> float:
    """One query per lookup per acceptance; `query(sql, params)` returns rows."""
    started = time.perf_counter()
    for event_type, unit_id, accepted_at, payload in events:
        if event_type != "plan_accepted":
            continue
        plan_id = (payload or {}).get("plan_id")
        generation = query(NAIVE_LOOKUPS[0][1], (plan_id, accepted_at))
        if not generation:
            continue
        plan_time = generation[0][0]
        state = [query(sql, (unit_id, plan_time)) for _, sql in NAIVE_LOOKUPS[1:5]]
        edits = query(NAIVE_LOOKUPS[5][1], (plan_id, accepted_at))
        json.dumps({"input": state, "target": [payload, edits], "metadata": generation[0][1]}, default=str)
    return time.perf_counter() - started


def naive_with_one_connection(dsn: str, events: list[tuple]) -> float:
    with connect(dsn) as conn:
        return naive_per_event(events, lambda sql, params: conn.execute(sql, params).fetchall())


def naive_with_hook_calls(dsn: str, events: list[tuple]) -> float:
    """What the loop becomes inside an Airflow task: PostgresHook.get_records per lookup."""
    import os

    from include.core.local_postgres import airflow_connection_json

    os.environ["AIRFLOW_CONN_EVENTS_DB"] = airflow_connection_json(dsn)
    # Airflow logs two lines per call through structlog; its own setting silences them (read
    # when Airflow is first imported, which is here).
    os.environ.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "airflow.task.hooks=WARNING")
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id="events_db")
    return naive_per_event(events, lambda sql, params: hook.get_records(sql, parameters=params))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset_build", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=48_000, help="48k households x 8 weeks ~ 1M events")
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--parts", type=int, default=settings().extract_parallelism)
    parser.add_argument("--naive-sample", type=int, default=20_000, help="window plan events in the naive sample")
    parser.add_argument("--hook-sample", type=int, default=2_000, help="events in the PostgresHook naive sample")
    parser.add_argument("--reuse", action="store_true", help="keep the bench database if it already has data")
    args = parser.parse_args(argv)
    dsn = _bench_dsn()

    print(f"# dataset benchmark on {dsn}")
    if not (args.reuse and _event_count(dsn)):
        seconds, counts = _timed(generate.generate_and_load, dsn, args.households, args.weeks, seed=7, end=END,
                                 dirty_share=0.02, reset=True)
        events = counts["exp.events"]
        print(f"generator: {events:,} events (+{sum(counts.values()) - events:,} state/edit/truth rows) generated "
              f"and loaded in {seconds:.1f}s = {events / seconds:,.0f} events/s")
    events = _event_count(dsn)

    raw_s, raw_rows = _timed(raw_fetch_same_rows, dsn)
    ours_s, ours_rows = _timed(our_extraction, dsn, args.parts)
    assert raw_rows == ours_rows, (raw_rows, ours_rows)
    source_s, source_rows = _timed(raw_fetch_source_events, dsn)
    print(f"extraction: {ours_rows:,} candidate rows in {ours_s:.1f}s ({args.parts} ranges, streamed to Parquet) vs "
          f"raw fetch_arrow_table of the same rows {raw_s:.1f}s -> ratio {ours_s / raw_s:.2f}x (goal <= 1.5x)")
    print(f"            for scale: raw fetch of the window's {source_rows:,} source plan events alone {source_s:.1f}s "
          f"(the as-of joins, dedup and JSON assembly run in PostgreSQL on top of that)")

    build = whole_build(dsn, args.parts)
    print(f"whole build: {build['rows']:,} rows from {events:,} events in {build['seconds']:.1f}s "
          f"({build['seconds'] / 60:.2f}x of the 60 s goal), peak RSS {build['peak_rss_mb']:,.0f} MB "
          f"({build['peak_rss_mb'] / 2048:.2f}x of the 2 GB goal)")

    with connect(dsn) as conn:
        window_events = conn.execute(
            "SELECT count(*) FROM exp.events WHERE event_type IN ('plan_generated', 'plan_accepted') "
            "AND \"timestamp\" >= %s AND \"timestamp\" < %s", (WINDOW.start, WINDOW.end)).fetchone()[0]
    sample = _sample_events(dsn, args.naive_sample)
    naive_s = naive_with_one_connection(dsn, sample)
    scaled = naive_s * window_events / len(sample)
    print(f"naive per-event lookup (one persistent connection, indexed as-of queries): {len(sample):,}-event sample "
          f"in {naive_s:.1f}s, scaled to the window's {window_events:,} plan events: {scaled:.0f}s -> the build is "
          f"{scaled / build['seconds']:.1f}x faster (goal >= 20x)")
    hook_sample = sample[: args.hook_sample]
    hook_s = naive_with_hook_calls(dsn, hook_sample)
    hook_scaled = hook_s * window_events / len(hook_sample)
    print(f"naive per-event lookup through PostgresHook.get_records (a connection per lookup, as in an Airflow task): "
          f"{len(hook_sample):,}-event sample in {hook_s:.1f}s, scaled: {hook_scaled:.0f}s -> the build is "
          f"{hook_scaled / build['seconds']:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
