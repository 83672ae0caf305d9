"""Training throughput of the trainer against a bare PyTorch loop, same model, same batches.

    python -m bench.training_throughput [--dataset-uri <published version>] [--examples 8000]

Both start from the same initial weights and see the same shuffled batches; the bare loop
does forward, backward and step only (no scheduler, clipping, loss bookkeeping). The ratio is
the trainer's overhead (goal <= 1.2x). Tokenization is timed on its own. Without
--dataset-uri, a demo dataset is generated and built first (database `planner_bench_train`).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from datetime import UTC, datetime

from include.core.config import settings
from include.training import modeling
from include.training.cli import load_dataset
from include.training.examples import examples_from_rows, split_by_household


def demo_dataset() -> str:
    import os

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-uri", default=None)
    parser.add_argument("--examples", type=int, default=8000, help="training examples per measured epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    uri = args.dataset_uri or demo_dataset()

    rows, recipes, _, _, _ = load_dataset(uri, holdout_days=7, max_rows=0)
    train, val = split_by_household(examples_from_rows(rows, recipes), 0.2, seed=7)
    train, val = train[:args.examples], val[:2000]
    modeling.seed_everything(7)
    started = time.perf_counter()
    tokenizer = modeling.train_tokenizer([e.context for e in train] + [e.meal for e in train])
    vocab_s = time.perf_counter() - started
    model, tokenizer = modeling.build_model(modeling.TINY, tokenizer)
    encoded_train, encoded_val = modeling.encode(tokenizer, train), modeling.encode(tokenizer, val)
    initial = copy.deepcopy(model.state_dict())
    print(f"# training throughput on {uri}: {len(train):,} training examples, batch {args.batch_size}")
    print(f"tokenization: vocabulary {vocab_s:.2f}s, encoding {len(train) + len(val):,} examples "
          f"{encoded_train.seconds + encoded_val.seconds:.2f}s "
          f"({(len(train) + len(val)) / (encoded_train.seconds + encoded_val.seconds):,.0f} examples/s)")

    warmup = modeling.Encoded(encoded_train.input_ids[:640], encoded_train.labels[:640])
    bare_loop(model, warmup, args.batch_size, tokenizer.pad_token_id, 7, 1e-3)  # allocator and thread warm-up
    model.load_state_dict(initial)
    bare_before = bare_loop(model, encoded_train, args.batch_size, tokenizer.pad_token_id, 7, 1e-3)
    model.load_state_dict(initial)
    history = modeling.fit(model, encoded_train, encoded_val, epochs=1, learning_rate=1e-3,
                           batch_size=args.batch_size, seed=7, pad_id=tokenizer.pad_token_id, device="cpu")
    model.load_state_dict(initial)
    bare_after = bare_loop(model, encoded_train, args.batch_size, tokenizer.pad_token_id, 7, 1e-3)
    ours, bare = history.train_examples_per_s, (bare_before + bare_after) / 2
    print(f"trainer: {ours:,.0f} examples/s vs bare PyTorch loop {bare:,.0f} examples/s (before {bare_before:,.0f}, "
          f"after {bare_after:,.0f}) -> overhead {bare / ours:.2f}x (goal <= 1.2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
