"""Training throughput: the trainer against a bare PyTorch loop (same model, same batches), two DDP
processes against one, and the start-up of a resumed training against a cold one.

    python -m bench.training_throughput [--dataset-uri <published version>] [--examples 8000]

1. Trainer overhead: both start from the same initial weights and see the same shuffled batches;
   the bare loop does forward, backward and step only (no scheduler, clipping, loss bookkeeping,
   Accelerate). The ratio is the trainer's overhead (goal <= 1.2x). Tokenization is timed on its own.
2. DDP: `planner-train` under the pod's launcher (planner-train-ddp: torch's elastic launcher) with 2 processes (gloo) and with 1 on the same examples
   (examples/s of each). On 2 CPU cores this shows the cost of the collective, not a speed-up.
3. Resume: seconds from a process start to its first optimizer step, cold and resumed from a
   checkpoint (the attempt is killed after its first checkpoint, then started again).

Without --dataset-uri, a demo dataset is generated and built first (database `planner_bench_train`).
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from include.core.config import settings
from include.core.features import recipe_index
from include.training import modeling
from include.training.cli import load_dataset
from include.training.examples import example_columns, split_columns

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIRST_STEP = re.compile(r"first optimizer step of this attempt: ([0-9.]+) s")


def demo_dataset() -> str:
    from include.core.local_postgres import ensure_database
    from include.dataset.pipeline import build_validate_publish
    from include.dataset.window import resolve_window
    from include.events import generate

    base = settings().events_dsn.rsplit("/", 1)[0]
    dsn = ensure_database(f"{base}/planner_bench_train")
    generate.generate_and_load(dsn, 2000, 8, seed=7, end=datetime(2026, 11, 23, tzinfo=UTC), dirty_share=0.02,
                               reset=True)
    os.environ["PLANNER_STORAGE_ROOT"] = tempfile.mkdtemp(prefix="bench-train-")
    return build_validate_publish(dsn, resolve_window("2026-11-23", 28), max_bad_share=0.05)["uri"]


def bare_loop(model, encoded, batch_size: int, pad_id: int, seed: int, learning_rate: float) -> float:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.01)
    model.train()
    started = time.perf_counter()
    count = 0
    for ids, mask, labels in modeling.batches(encoded, batch_size, pad_id, shuffle_seed=seed * 1000):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        count += len(labels)
    return count / (time.perf_counter() - started)


def trainer_epoch(model, encoded_train, encoded_val, batch_size: int, pad_id: int) -> float:
    """One epoch of the project's trainer (Accelerate, one process, checkpoint at the end): examples/s."""
    from accelerate import Accelerator

    from include.training.checkpoints import CheckpointStore
    from include.training.loop import LoopSettings, Trainer

    scratch = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    trainer = Trainer(Accelerator(cpu=True), model, encoded_train, encoded_val,
                      LoopSettings(epochs=1, learning_rate=1e-3, batch_size=batch_size, seed=7, pad_id=pad_id),
                      CheckpointStore(str(scratch / "checkpoints"), "planner_acceptance-v20261123_000000"),
                      scratch, fingerprint={})
    trainer.fit()
    return trainer.examples_per_second


def trainer_argv(uri: str, out: Path, run_id: str, max_rows: int) -> list[str]:
    return ["--dataset-uri", uri, "--output-root", str(out), "--training-run-id", run_id, "--epochs", "2",
            "--max-rows", str(max_rows), "--batch-size", "32", "--device", "cpu"]


def run_trainer(launcher: list[str], argv: list[str], kill_after_checkpoint: Path | None = None) -> str:
    """Run planner-train; its log. With `kill_after_checkpoint`, SIGKILL it once a checkpoint is complete there."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    process = subprocess.Popen([*launcher, *argv], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if kill_after_checkpoint is not None:
        while not list(kill_after_checkpoint.glob("step-*/_COMPLETE")) and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    code = process.wait()
    output = Path(log.name).read_text()
    if kill_after_checkpoint is None and code != 0:
        raise RuntimeError(f"planner-train exited with {code}:\n{output[-3000:]}")
    return output


def examples_per_s(out: Path, run_id: str) -> float:
    import json

    manifest = json.loads((out / run_id / "training_manifest.json").read_text())
    return manifest["final_metrics"]["train_examples_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-uri", default=None)
    parser.add_argument("--examples", type=int, default=8000, help="training examples per measured epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ddp-rows", type=int, default=1500, help="dataset rows of the DDP and resume runs")
    args = parser.parse_args(argv)
    uri = args.dataset_uri or demo_dataset()

    table, recipes, _, _, _ = load_dataset(uri, holdout_days=7, max_rows=0)
    examples = example_columns(table, recipe_index(recipes.to_pylist()), 0.2, seed=7)
    train, val = split_columns(examples)
    train = train.take(__import__("numpy").arange(len(train)) < args.examples)
    val = val.take(__import__("numpy").arange(len(val)) < 2000)
    modeling.seed_everything(7)
    started = time.perf_counter()
    tokenizer = modeling.train_tokenizer(text for chunk in train.text_chunks() for texts in chunk for text in texts)
    vocab_s = time.perf_counter() - started
    model, tokenizer = modeling.build_model(modeling.TINY, tokenizer)
    encoded_train, encoded_val = modeling.encode(tokenizer, train), modeling.encode(tokenizer, val)
    initial = copy.deepcopy(model.state_dict())
    print(f"# training throughput on {uri}: {len(train):,} training examples, batch {args.batch_size}")
    print(f"tokenization: vocabulary {vocab_s:.2f}s, encoding {len(train) + len(val):,} examples "
          f"{encoded_train.seconds + encoded_val.seconds:.2f}s "
          f"({(len(train) + len(val)) / (encoded_train.seconds + encoded_val.seconds):,.0f} examples/s)")

    pad = tokenizer.pad_token_id
    bare_loop(model, encoded_train.head(640), args.batch_size, pad, 7, 1e-3)  # allocator and thread warm-up
    model.load_state_dict(initial)
    bare_before = bare_loop(model, encoded_train, args.batch_size, pad, 7, 1e-3)
    model.load_state_dict(initial)
    ours = trainer_epoch(model, encoded_train, encoded_val, args.batch_size, pad)
    model.load_state_dict(initial)
    bare_after = bare_loop(model, encoded_train, args.batch_size, pad, 7, 1e-3)
    bare = (bare_before + bare_after) / 2
    print(f"trainer: {ours:,.0f} examples/s vs bare PyTorch loop {bare:,.0f} examples/s (before {bare_before:,.0f}, "
          f"after {bare_after:,.0f}) -> overhead {bare / ours:.2f}x (goal <= 1.2x)")

    out = Path(tempfile.mkdtemp(prefix="bench-ddp-")) / "models" / "planner_acceptance"
    script = [sys.executable, "-m", "include.training.cli"]
    torchrun = [sys.executable, "-m", "include.training.launch", "--nproc-per-node=2", "--"]  # the pod's launcher
    run_trainer(script, trainer_argv(uri, out, "planner_acceptance-v20261123_000001", args.ddp_rows))
    run_trainer(torchrun, trainer_argv(uri, out, "planner_acceptance-v20261123_000002", args.ddp_rows))
    one, two = (examples_per_s(out, f"planner_acceptance-v20261123_00000{i}") for i in (1, 2))
    print(f"DDP on CPU (gloo, OMP_NUM_THREADS=1 per process): 2 processes {two:,.0f} examples/s vs 1 process "
          f"{one:,.0f} examples/s -> {two / one:.2f}x")

    run_id = "planner_acceptance-v20261123_000003"
    checkpoints = out.parent.parent / "checkpoints" / run_id
    cold = run_trainer(script, trainer_argv(uri, out, run_id, args.ddp_rows), kill_after_checkpoint=checkpoints)
    resumed = run_trainer(script, trainer_argv(uri, out, run_id, args.ddp_rows))
    cold_s, resumed_s = (float(FIRST_STEP.search(text).group(1)) for text in (cold, resumed))
    print(f"start to first optimizer step: resumed {resumed_s:.2f}s vs cold {cold_s:.2f}s "
          f"-> resume overhead {resumed_s / cold_s:.2f}x ({resumed_s - cold_s:+.2f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
