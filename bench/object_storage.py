"""Publishing to object storage against a raw upload of the same files with the same client.

    python -m bench.object_storage [--rounds 5]

Starts an S3-protocol server on loopback (moto's, as the tests do), then in the same run, per
round and alternating which goes first, times for a dataset-like and a model-like directory:
- the raw upload: s3fs `put_file` of every file to a fresh prefix (the baseline);
- `storage.publish_dir`: the same files into a new attempt prefix, `_SUCCESS`, then the
  `_PUBLISHED` pointer (goal <= 1.3x the raw upload).
Prints medians and the ratio. The staging copy each publish consumes is made before timing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

SHAPES = {  # file name -> megabytes, as the project's published directories look
    "dataset": {"training.parquet": 96, "quarantine.parquet": 2, "recipes.parquet": 1, "schema.json": 0.02,
                "dataset_summary.md": 0.01, "validation.json": 0.01, "counts.json": 0.01},
    "model": {"model.safetensors": 128, "tokenizer.json": 1, "tokenizer_config.json": 0.01, "config.json": 0.01,
              "recipes.parquet": 1, "training_manifest.json": 0.01},
}


def make_directory(directory: Path, shape: dict[str, float]) -> int:
    directory.mkdir(parents=True)
    total = 0
    for name, megabytes in shape.items():
        size = int(megabytes * 1e6)
        (directory / name).write_bytes(os.urandom(size))
        total += size
    return total


def raw_upload(fs, source: Path, target: str) -> float:
    started = time.perf_counter()
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        fs.put_file(str(file), f"{target}/{file.relative_to(source).as_posix()}")
    return time.perf_counter() - started


def publish(source: Path, uri: str, scratch: Path) -> float:
    from include.core import storage

    staging = scratch / f"staging-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, staging)
    started = time.perf_counter()
    storage.publish_dir(staging, uri)
    elapsed = time.perf_counter() - started
    assert storage.is_complete(uri)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    from include.core import storage
    from scripts.object_store import S3Server

    parser = argparse.ArgumentParser(prog="python -m bench.object_storage", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="planner-bench-s3-") as tmp:
        scratch = Path(tmp)
        server = S3Server(scratch / "server").start()
        try:
            os.environ.update(server.client_env())
            bucket = server.create_bucket("planner-bench")
            fs, _ = storage.filesystem(f"{bucket}/x")
            for kind, shape in SHAPES.items():
                source = scratch / kind
                total = make_directory(source, shape)
                raw, ours = [], []
                for round_ in range(args.rounds):
                    uri = f"{bucket}/planner/{kind}s/v{round_}"
                    raw_target = f"{bucket.removeprefix('s3://')}/raw/{kind}/{round_}"
                    if round_ % 2:
                        ours.append(publish(source, uri, scratch))
                        raw.append(raw_upload(fs, source, raw_target))
                    else:
                        raw.append(raw_upload(fs, source, raw_target))
                        ours.append(publish(source, uri, scratch))
                raw_median, ours_median = statistics.median(raw), statistics.median(ours)
                print(f"{kind} ({len(shape)} files, {total / 1e6:.0f} MB): raw upload {raw_median:.2f} s, "
                      f"publish_dir {ours_median:.2f} s -> {ours_median / raw_median:.2f}x (goal <= 1.3x); "
                      f"per round {', '.join(f'{o / r:.2f}' for o, r in zip(ours, raw))}", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
