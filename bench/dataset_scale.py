"""The dataset phase at 1M and at 4M events, in one run: does it stay linear and bounded?

    python -m bench.dataset_scale [--reuse] [--sizes 1m,4m] [--batch-rows N]

For each size (1m: 48,000 households x 8 weeks, about 1M events; 4m: 192,000 x 8, about 4M;
seed 7, 2 % dirty, the week ending 2026-11-23), one database of its own, `planner_bench_<size>`:

1. generator: generated and loaded (COPY), timed, in events/s (goal: the same at both sizes).
   The world and that figure are recorded in the database's table `public.bench_world`, so with
   `--reuse` a database holding the same world is kept and its recorded figure printed again;
2. the whole `planner_dataset` DAG (`airflow dags test`, every task: resolve_window, plan_ranges,
   4 mapped extract_range, assemble_validate_publish, log_dataset, in one process tree), on a
   fresh storage root and MLflow store, the 28-day window of version 2026-11-23. Its wall time
   (start-up of the Airflow process included) and the sum of its task instances' durations, in
   seconds per million events of the database; its peak RSS, the process tree's resident memory
   summed and polled every 0.1 s (psutil), and GNU time's maximum of the largest process.

Goals (issue 20): peak RSS under 1.5 GB at both sizes and at 4M within 1.25x of 1M; seconds per
million events at 4M within 1.15x of 1M; generator events/s the same. Each ratio is 4M over 1M,
measured in this run. Both databases together take about 8 GB of disk.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from include.core.config import PROJECT_ROOT, settings

END = datetime(2026, 11, 23, tzinfo=UTC)
VERSION = "2026-11-23"
SIZES = {"1m": 48_000, "4m": 192_000}  # households, 8 weeks each
WEEKS, SEED, DIRTY = 8, 7, 0.02


def _dsn(size: str) -> str:
    from include.core.local_postgres import ensure_database

    return ensure_database(f"{settings().events_dsn.rsplit('/', 1)[0]}/planner_bench_{size}")


def _recorded_world(dsn: str) -> dict | None:
    from include.events.db import connect

    with connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('public.bench_world')").fetchone()[0]:
            return None
        row = conn.execute("SELECT world FROM public.bench_world").fetchone()
        return row[0] if row else None


def _record_world(dsn: str, world: dict) -> None:
    from psycopg.types.json import Jsonb

    from include.events.db import connect

    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.bench_world (world jsonb NOT NULL)")
        conn.execute("DELETE FROM public.bench_world")
        conn.execute("INSERT INTO public.bench_world VALUES (%s)", (Jsonb(world),))
        conn.commit()


def ensure_world(size: str, reuse: bool) -> tuple[str, dict, bool]:
    """The size's database with its world generated (or kept, with --reuse, when it holds the same
    world); returns (dsn, the recorded world with the generator's figures, generated now)."""
    from include.events import generate

    dsn = _dsn(size)
    wanted = {"households": SIZES[size], "weeks": WEEKS, "seed": SEED, "end": END.isoformat(), "dirty_share": DIRTY}
    recorded = _recorded_world(dsn) if reuse else None
    if recorded and {k: recorded.get(k) for k in wanted} == wanted:
        return dsn, recorded, False
    started = time.perf_counter()
    counts = generate.generate_and_load(dsn, SIZES[size], WEEKS, seed=SEED, end=END, dirty_share=DIRTY, reset=True)
    seconds = time.perf_counter() - started
    world = {**wanted, "events": counts["exp.events"], "other_rows": sum(counts.values()) - counts["exp.events"],
             "generate_seconds": round(seconds, 2), "generated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    _record_world(dsn, world)
    return dsn, world, True


def _tree_rss(process) -> int:
    import psutil

    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_dag(dsn: str, home: Path, size: str, batch_rows: int | None) -> dict:
    """One `airflow dags test planner_dataset` in a child process tree; its time and memory."""
    import psutil

    from include.core.local_postgres import airflow_connection_json

    work = home / size
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "AIRFLOW_HOME": str(home / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_CONN_EVENTS_DB": airflow_connection_json(dsn), "PLANNER_STORAGE_ROOT": str(work / "storage"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PLANNER_MLFLOW_ARTIFACT_ROOT": str(work / "artifacts"), "PLANNER_DATASET_SCHEDULE": "none",
           "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    if batch_rows:
        env["PLANNER_DATASET_BATCH_ROWS"] = str(batch_rows)
    work.mkdir(parents=True)
    airflow = str(Path(sys.executable).with_name("airflow"))
    command = ["/usr/bin/time", "-v", airflow, "dags", "test", "planner_dataset", "-c",
               json.dumps({"end_date": VERSION, "lookback_days": 28})]
    peak, samples, stop = [0], [], threading.Event()
    log = work / "dags-test.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        watched = psutil.Process(child.pid)

        def poll() -> None:
            while not stop.is_set():
                rss = _tree_rss(watched)
                peak[0] = max(peak[0], rss)
                samples.append((time.time(), rss))
                stop.wait(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        code = child.wait()
        stop.set()
        poller.join()
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    pointer = work / "storage" / "datasets" / "planner" / VERSION / "_PUBLISHED"
    if code != 0 or not pointer.exists():
        raise RuntimeError(f"the {size} DAG run failed (exit {code}, published: {pointer.exists()}); see {log}:\n"
                           + text[-3000:])
    revision = json.loads(pointer.read_text())
    counts = json.loads((pointer.parent / revision["attempt"] / "counts.json").read_text())
    tasks, spans = _task_seconds(home / "airflow" / "airflow.db")
    task_peaks = {}
    for task, start, end in spans:  # the tree's peak while each task ran (mapped ones together)
        inside = [rss for at, rss in samples if start <= at <= end]
        if inside:
            task_peaks[task] = max(task_peaks.get(task, 0), max(inside) / 2**20)
    return {"seconds": seconds, "tasks": tasks, "task_peaks": task_peaks, "peak_rss_mb": peak[0] / 2**20,
            "largest_process_mb": int(match.group(1)) / 1024 if match else float("nan"),
            "rows": counts["rows"], "digest": revision["digest"], "log": str(log)}


def _task_seconds(database: Path) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
    """Durations of the latest planner_dataset run's task instances, by task (mapped ones summed),
    and each instance's (task, start, end) as epoch seconds."""
    with sqlite3.connect(database) as conn:
        run_id = conn.execute("SELECT run_id FROM dag_run WHERE dag_id = 'planner_dataset' "
                              "ORDER BY id DESC LIMIT 1").fetchone()[0]
        rows = conn.execute("SELECT task_id, duration, start_date, end_date FROM task_instance "
                            "WHERE dag_id = 'planner_dataset' AND run_id = ?", (run_id,)).fetchall()
    durations: dict[str, float] = {}
    spans = []
    for task, duration, start, end in rows:
        durations[task] = durations.get(task, 0.0) + float(duration or 0)
        try:
            spans.append((task, _epoch(start), _epoch(end)))
        except (TypeError, ValueError):
            pass
    return durations, spans


def _epoch(value: str) -> float:
    moment = datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true", help="keep a size's database when it holds the same world")
    parser.add_argument("--sizes", default="1m,4m", help="comma-separated, of: " + ", ".join(SIZES))
    parser.add_argument("--batch-rows", type=int, default=None, help="PLANNER_DATASET_BATCH_ROWS for the DAG runs")
    parser.add_argument("--generate-only", action="store_true", help="generate (or keep) the databases and stop")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    print(f"# dataset phase at scale: {', '.join(sizes)}; batch rows "
          f"{args.batch_rows or settings().dataset_batch_rows:,}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f} at the start")
    worlds = {}
    for size in sizes:
        dsn, world, fresh = ensure_world(size, args.reuse)
        worlds[size] = (dsn, world)
        rate = world["events"] / world["generate_seconds"]
        print(f"generator {size}: {world['events']:,} events (+{world['other_rows']:,} state/edit/truth rows) in "
              f"{world['generate_seconds']:.1f}s = {rate:,.0f} events/s"
              + ("" if fresh else f" (recorded when generated, {world['generated_at']}; --reuse)"))
    if len(sizes) == 2:
        rates = [worlds[s][1]["events"] / worlds[s][1]["generate_seconds"] for s in sizes]
        print(f"generator {sizes[1]} vs {sizes[0]}: {rates[1] / rates[0]:.2f}x the events/s (goal: the same)")
    if args.generate_only:
        return 0

    results = {}
    with tempfile.TemporaryDirectory(prefix="planner-scale-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"), "PYTHONPATH": str(PROJECT_ROOT)}
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True,
                       capture_output=True)
        for size in sizes:
            dsn, world = worlds[size]
            result = run_dag(dsn, home, size, args.batch_rows)
            millions = world["events"] / 1e6
            task_s = sum(result["tasks"].values())
            result.update(per_million=result["seconds"] / millions, task_per_million=task_s / millions)
            results[size] = result
            print(f"planner_dataset {size}: {result['rows']:,} rows from {world['events']:,} events; whole run "
                  f"{result['seconds']:.1f}s = {result['per_million']:.1f} s per million events (tasks "
                  f"{task_s:.1f}s = {result['task_per_million']:.1f} s/M: "
                  + ", ".join(f"{t} {s:.1f}" for t, s in sorted(result["tasks"].items())) + ")")
            print(f"    peak RSS {result['peak_rss_mb']:,.0f} MB (process tree, polled; the largest process "
                  f"{result['largest_process_mb']:,.0f} MB by GNU time; goal < 1,536 MB); by task: "
                  + ", ".join(f"{t} {mb:,.0f}" for t, mb in sorted(result["task_peaks"].items()))
                  + f" MB; digest {result['digest'][:16]}")
    if len(sizes) == 2:
        small, big = (results[s] for s in sizes)
        print(f"ratio {sizes[1]} / {sizes[0]}: peak RSS {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x "
              f"(goal <= 1.25x); seconds per million events {big['per_million'] / small['per_million']:.2f}x "
              f"whole run, {big['task_per_million'] / small['task_per_million']:.2f}x tasks (goal <= 1.15x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
