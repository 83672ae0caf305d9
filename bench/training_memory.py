"""Peak memory of turning a dataset into training examples: column-wise (the trainer) against a
list of Python objects per row and per example (the row-wise way it replaced), same dataset.

    python -m bench.training_memory [--households 48000 --weeks 8] [--reuse] [--max-rows 0]

48k households x 8 weeks is about 1M events and a 150k-row dataset version. Each way runs in a
process of its own, from reading the Parquet to the token ids the training loop reads (examples,
household split, the tiny model's vocabulary, tokenization); its peak RSS is that process's
high-water mark. Printed against the Arrow size of the columns read. Goal: <= 3 GB at 150k rows.
The database `planner_bench_examples` is kept for `--reuse`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
END = datetime(2026, 11, 23, tzinfo=UTC)


def _child(way: str, uri: str, max_rows: int, holdout_days: int) -> dict:
    from include.core.features import recipe_index
    from include.training import cli, modeling

    started = time.perf_counter()
    table, recipes, *_ = cli.load_dataset(uri, holdout_days=holdout_days, max_rows=max_rows)
    arrow_bytes, rows_read = table.nbytes, table.num_rows
    index = recipe_index(recipes.to_pylist())
    if way == "columns":
        from include.training.examples import split_example_columns

        train, val = split_example_columns(table, index, 0.2, seed=7)
        del table
        tokenizer = modeling.train_tokenizer(t for chunk in train.text_chunks() for texts in chunk for t in texts)
        encoded = [modeling.encode(tokenizer, part) for part in (train, val)]
        examples = len(train) + len(val)
        tokens = sum(len(e.tokens) for e in encoded)
    else:  # the row-wise way: every row and every example a Python object, token ids as lists
        from include.training.examples import examples_from_rows, split_by_household

        rows = table.to_pylist()
        del table
        train, val = split_by_household(examples_from_rows(rows, index), 0.2, seed=7)
        tokenizer = modeling.train_tokenizer([e.context for e in train] + [e.meal for e in train])
        encoded = [tokenizer([e.context for e in part], [e.meal for e in part], truncation="only_first",
                             max_length=modeling.MAX_LENGTH)["input_ids"] for part in (train, val)]
        examples = len(train) + len(val)
        tokens = sum(len(ids) for part in encoded for ids in part)
    return {"way": way, "rows": rows_read, "examples": examples, "tokens": tokens, "arrow_mb": arrow_bytes / 2**20,
            "seconds": time.perf_counter() - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def dataset(households: int, weeks: int, reuse: bool) -> str:
    from include.core.config import settings
    from include.core.local_postgres import ensure_database
    from include.dataset.pipeline import build_validate_publish
    from include.dataset.window import resolve_window
    from include.events import generate
    from include.events.db import connect

    dsn = ensure_database(f"{settings().events_dsn.rsplit('/', 1)[0]}/planner_bench_examples")
    with connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('exp.events')").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM exp.events").fetchone()[0] if exists else 0
    if not (reuse and events):
        generate.generate_and_load(dsn, households, weeks, seed=7, end=END, dirty_share=0.02, reset=True)
    os.environ["PLANNER_STORAGE_ROOT"] = tempfile.mkdtemp(prefix="bench-examples-")
    return build_validate_publish(dsn, resolve_window("2026-11-23", 28), max_bad_share=0.05)["uri"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=48_000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--reuse", action="store_true", help="keep the bench database if it already has data")
    parser.add_argument("--max-rows", type=int, default=0, help="dataset rows to read (0: all)")
    parser.add_argument("--holdout-days", type=int, default=0,
                        help="days before the version's end left out, as the trainer does (0: every row)")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "URI"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.max_rows, args.holdout_days)))
        return 0

    uri = dataset(args.households, args.weeks, args.reuse)
    print(f"# examples from {uri}")
    results = {}
    for way in ("columns", "rows"):
        out = subprocess.run([sys.executable, "-m", "bench.training_memory", "--max-rows", str(args.max_rows),
                              "--holdout-days", str(args.holdout_days), "--child", way, uri], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
        results[way] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, rows = results["columns"], results["rows"]
    print(f"{ours['rows']:,} rows -> {ours['examples']:,} examples ({ours['tokens']:,} tokens), "
          f"{ours['arrow_mb']:,.0f} MB of Arrow columns read")
    for label, r in (("column-wise (the trainer)", ours), ("row-wise Python objects", rows)):
        print(f"  {label}: peak RSS {r['peak_rss_mb']:,.0f} MB = {r['peak_rss_mb'] / r['arrow_mb']:.1f}x the Arrow "
              f"columns, {r['seconds']:.0f} s")
    print(f"column-wise peak RSS {ours['peak_rss_mb'] / rows['peak_rss_mb']:.2f}x the row-wise one; "
          f"{ours['peak_rss_mb'] / 3072:.2f}x of the 3 GB goal")
    assert ours["examples"] == rows["examples"] and ours["tokens"] == rows["tokens"], (ours, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
