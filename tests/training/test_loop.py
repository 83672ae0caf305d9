"""The training loop itself (include/training/loop.py) on the tiny model and real examples, with
the real Accelerate state and checkpoint store: gradient accumulation's last, short group, and a
resume across precisions."""
from __future__ import annotations

import argparse

import pytest

from include.training import cli, modeling
from include.training.checkpoints import CheckpointStore
from include.training.loop import LoopSettings, Trainer, accumulated_in_group


def _accelerator(precision: str):
    return cli.accelerator_for(argparse.Namespace(device="cpu", mixed_precision=precision))


def _model(tokenizer, seed: int, dropout: bool = True):
    import torch

    modeling.seed_everything(seed)
    model, _ = modeling.build_model(modeling.TINY, tokenizer)
    if not dropout:  # dropout draws its masks per batch: accumulated micro-batches would not see the same ones
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def _trainer(tmp_path, name: str, tokenizer, train, val, settings: LoopSettings, precision: str = "fp32",
             fingerprint: dict | None = None, dropout: bool = True) -> Trainer:
    accelerator, _ = _accelerator(precision)
    store = CheckpointStore(str(tmp_path / "checkpoints"), f"planner_acceptance-v20261123_{name}")
    scratch = tmp_path / "scratch" / name
    scratch.mkdir(parents=True, exist_ok=True)
    return Trainer(accelerator, _model(tokenizer, settings.seed, dropout), train, val, settings, store, scratch,
                   fingerprint or {})


def _weights(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def test_each_accumulation_group_is_scaled_by_the_micro_batches_it_holds():
    settings = LoopSettings(epochs=1, learning_rate=1e-3, batch_size=16, seed=3, pad_id=0,
                            gradient_accumulation_steps=4)
    assert [accumulated_in_group(n, 10, settings) for n in range(10)] == [4] * 8 + [2, 2]
    assert [accumulated_in_group(n, 8, settings) for n in range(8)] == [4] * 8


def test_accumulating_four_batches_of_16_trains_what_batches_of_64_do_the_short_last_group_included(
        tiny_examples, tmp_path):
    """160 examples: ten micro-batches of 16 in groups of 4, 4 and 2 (the epoch's last, short one),
    against batches of 64, 64 and 32 without accumulation: the same examples in each step and the
    same mean loss, so the same weights (to float rounding). Dropout is off: it draws its masks per
    micro-batch. Dividing the last group by 4 instead of 2 halves its gradient, which shows."""
    tokenizer, train, val = tiny_examples
    examples = train.head(160)
    common = {"epochs": 3, "learning_rate": 3e-3, "seed": 3, "pad_id": tokenizer.pad_token_id}
    # one after the other: a new Accelerator resets the process-wide Accelerate state of the previous one
    accumulated = _trainer(tmp_path, "000001", tokenizer, examples, val, dropout=False,
                           settings=LoopSettings(batch_size=16, gradient_accumulation_steps=4, **common))
    first = accumulated.fit()
    a = _weights(accumulated)
    plain = _trainer(tmp_path, "000002", tokenizer, examples, val, dropout=False,
                     settings=LoopSettings(batch_size=64, gradient_accumulation_steps=1, **common))
    initial = _weights(plain)
    second = plain.fit()
    b = _weights(plain)
    assert first.optimizer_steps == second.optimizer_steps == 9  # 3 an epoch: the schedules match too

    moved = sum(float((b[k] - initial[k]).norm()) ** 2 for k in b) ** 0.5
    apart = sum(float((a[k] - b[k]).norm()) ** 2 for k in b) ** 0.5
    assert moved > 0.1, "training moved nothing: the comparison would prove nothing"
    assert apart < 1e-3 * moved, f"accumulated and plain training differ by {apart / moved:.2e} of the training"
    for one, other in zip(first.history, second.history):
        assert one["train_loss"] == pytest.approx(other["train_loss"], rel=1e-4)


class Killed(Exception):
    """Stands for the kill of the attempt right after its first checkpoint (on_epoch runs after the save)."""


def test_an_auto_precision_training_checkpointed_under_bf16_resumes_under_fp32(tiny_examples, tmp_path):
    """A retry of an `auto` training on a GPU without bf16 (or a CPU) resumes what a bf16 GPU wrote:
    both attempts' fingerprints hold the precision asked for, and the state they exchange is fp32."""
    import torch
    from safetensors.torch import load_file

    from include.training.checkpoints import PROGRESS_FILE

    tokenizer, train, val = tiny_examples
    args = cli.parse_args(["--dataset-uri", "x", "--output-root", "y", "--training-run-id",
                           "planner_acceptance-v20261123_000003", "--mixed-precision", "auto"])
    revision = {"dataset_digest": "d" * 64, "dataset_revision": "rev-dddddddddddddddd"}
    on_gpu = cli.training_fingerprint(args, cli.hyperparameters(args, "cuda", "bf16", 1), revision, len(train))
    on_cpu = cli.training_fingerprint(args, cli.hyperparameters(args, "cpu", "fp32", 1), revision, len(train))
    assert on_gpu == on_cpu and on_gpu["mixed_precision"] == "auto"
    asked_bf16 = cli.parse_args(["--dataset-uri", "x", "--output-root", "y", "--training-run-id",
                                 "planner_acceptance-v20261123_000003", "--mixed-precision", "bf16"])
    assert cli.training_fingerprint(asked_bf16, cli.hyperparameters(asked_bf16, "cuda", "bf16", 1), revision,
                                    len(train)) != on_gpu  # asking for another precision is another training

    settings = LoopSettings(epochs=2, learning_rate=1e-3, batch_size=32, seed=3, pad_id=tokenizer.pad_token_id)
    first = _trainer(tmp_path, "000003", tokenizer, train, val, settings, precision="bf16", fingerprint=on_gpu)
    assert first.accelerator.mixed_precision == "bf16"

    def kill(epoch, metrics):
        raise Killed

    with pytest.raises(Killed):
        first.fit(on_epoch=kill)
    name = first.store.newest()
    saved = first.store.download(name, tmp_path / "saved")
    assert {t.dtype for t in load_file(str(saved / "model.safetensors")).values()} == {torch.float32}
    optimizer = torch.load(saved / "optimizer.bin", weights_only=False)
    assert {t.dtype for s in optimizer["state"].values() for t in s.values() if t.dim()} == {torch.float32}
    assert (saved / PROGRESS_FILE).exists()

    retry = _trainer(tmp_path, "000003", tokenizer, train, val, settings, precision="fp32", fingerprint=on_cpu)
    assert retry.accelerator.mixed_precision == "no"
    retry.check_resumable()  # refused before: the checkpoint said bf16, the retry fp32
    assert retry.resume() == name and retry.progress.epoch == 1
    progress = retry.fit()
    assert progress.done and len(progress.history) == 2 and progress.resumed_from == [name]
    assert progress.history[0] == first.progress.history[0]  # the first epoch comes from the checkpoint
