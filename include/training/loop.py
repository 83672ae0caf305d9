"""The training loop: one process or several (torchrun), checkpointed and resumable.

Accelerate does the distributed parts: the process group (NCCL on GPUs, gloo on CPU), the DDP
wrapper, bf16 autocast, gradient clipping across processes, gathering validation predictions,
and saving/loading the state (weights, optimizer, scheduler, every process's RNG state). The
batches are ours: each epoch's order is `epoch_order(seed, epoch)` cut into batches, and
process `rank` takes every `world_size`-th one, so the order does not depend on the number of
processes and a resume skips exactly the batches already trained. (Accelerate's prepared
DataLoader shards the same way but cannot be told to skip into an epoch of a custom order.)

After each epoch: validation on all processes, then a checkpoint, then `on_epoch` on the main
process (which logs to MLflow). A kill between the checkpoint and the log is healed by the
resume, which logs what the checkpoint has and MLflow lacks; a kill before the checkpoint
redoes the epoch, whose metrics were never logged. So no epoch is logged twice.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from include.training import modeling
from include.training.checkpoints import PROGRESS_FILE, CheckpointStore, Lease, checkpoint_name

log = logging.getLogger("planner.train")

SELECTION_METRIC = "val_auc"


@dataclass
class LoopSettings:
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    pad_id: int
    gradient_accumulation_steps: int = 1
    checkpoint_steps: int = 0        # also checkpoint every N optimizer steps (0: at epoch ends only)
    early_stopping_patience: int = 0  # stop after N epochs without a better val_auc (0: never)


@dataclass
class Progress:
    """Where the training is: what a checkpoint records besides Accelerate's state."""

    epoch: int = 0              # the epoch in progress (epochs run, once done)
    batches_done: int = 0       # batches of `epoch` this process has trained
    optimizer_steps: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = -math.inf
    best_checkpoint: str = ""
    stopped_early: bool = False
    done: bool = False
    busy_seconds: float = 0.0
    examples_seen: int = 0
    resumed_from: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> Progress:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def rank_batches(count: int, settings: LoopSettings, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of one epoch. With several processes every process gets the same
    number (DDP needs it): the few batches that do not divide evenly are left out of that epoch."""
    order = modeling.epoch_order(count, settings.seed, epoch)
    batches = [order[start:start + settings.batch_size] for start in range(0, count, settings.batch_size)]
    if world > 1:
        batches = batches[:len(batches) - len(batches) % world]
    return batches[rank::world]


def accumulated_in_group(number: int, batches: int, settings: LoopSettings) -> int:
    """How many micro-batches the accumulation group of batch `number` holds: the full count but
    for the epoch's last group, which holds the rest. Each loss is divided by it, so an optimizer
    step follows the mean over the group's batches, a short last group included (dividing it by
    the full count would shrink its step). We accumulate ourselves (the Accelerator's
    `gradient_accumulation_steps` stays 1), so Accelerate does not rescale anything."""
    size = settings.gradient_accumulation_steps
    return min(size, batches - number // size * size)


def selection(progress: Progress, settings: LoopSettings) -> dict:
    """Which epoch's weights are published, and why (the manifest and the MLflow run record it)."""
    ran = len(progress.history)
    reason = (f"best {SELECTION_METRIC} of the {ran} epochs run"
              + (f"; stopped early: no better {SELECTION_METRIC} in the {settings.early_stopping_patience} epochs "
                 f"after epoch {progress.best_epoch}" if progress.stopped_early else ""))
    return {"metric": SELECTION_METRIC, "best_epoch": progress.best_epoch, "best_val_auc": progress.best_val_auc,
            "epochs_run": ran, "epochs_requested": settings.epochs, "stopped_early": progress.stopped_early,
            "reason": reason}


class Trainer:
    def __init__(self, accelerator, model, train: modeling.Encoded, val: modeling.Encoded, settings: LoopSettings,
                 store: CheckpointStore, scratch: Path, fingerprint: dict, started_at: float | None = None,
                 lease: Lease | None = None):
        import torch

        self.started_at = time.monotonic() if started_at is None else started_at  # the attempt's start

        self.accelerator, self.settings, self.store, self.scratch = accelerator, settings, store, scratch
        self.train, self.val, self.fingerprint = train, val, fingerprint
        self.lease = lease  # the main process's lease on the checkpoint prefix, checked before each save
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batches_per_epoch = len(rank_batches(len(train), settings, 0, self.rank, self.world))
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(train)} training examples make no batch for each of {self.world} processes")
        steps_per_epoch = math.ceil(self.batches_per_epoch / settings.gradient_accumulation_steps)
        steps = settings.epochs * steps_per_epoch
        warmup = max(1, steps // 20)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate,
                                      weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.progress = Progress()
        self.loss_sum, self.loss_count = 0.0, 0
        self.best_state = None  # the best epoch's weights, kept in memory on the main process

    # -- checkpoints ---------------------------------------------------------------------------
    def _check_fingerprint(self, progress: dict) -> None:
        if progress.get("fingerprint") != self.fingerprint:
            theirs = progress.get("fingerprint") or {}
            differ = sorted(k for k in {**theirs, **self.fingerprint} if theirs.get(k) != self.fingerprint.get(k))
            raise CheckpointMismatch(
                f"the checkpoints under {self.store.uri} were written by a training with other settings "
                f"({', '.join(f'{k}: {theirs.get(k)!r} there, {self.fingerprint.get(k)!r} now' for k in differ)}): "
                "remove them, or train under a new training run id")

    def check_resumable(self) -> None:
        """Refuse, before anything is logged, checkpoints of this run id written with other settings."""
        name = self.store.newest()
        if name is not None:
            self._check_fingerprint(self.store.read_progress(name))

    def resume(self) -> str | None:
        """Load the newest complete checkpoint, if there is one; its name."""
        accelerator = self.accelerator
        name = self.store.newest()
        if name is None:
            return None
        local = self.scratch / f"resume-{name}"
        if accelerator.is_main_process:
            shutil.rmtree(local, ignore_errors=True)
            self.store.download(name, local)
        accelerator.wait_for_everyone()
        progress = json.loads((local / PROGRESS_FILE).read_text())
        self._check_fingerprint(progress)
        accelerator.load_state(str(local))
        self.progress = Progress.from_dict(progress["progress"])
        mine = progress["processes"][str(self.rank)]
        self.progress.batches_done, self.loss_sum, self.loss_count = (
            mine["batches_done"], mine["loss_sum"], mine["loss_count"])
        self.progress.resumed_from.append(name)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(local, ignore_errors=True)
        log.info("resumed from checkpoint %s/%s: epoch %d, %d batches into it, %d optimizer steps",
                 self.store.uri, name, self.progress.epoch, self.progress.batches_done, self.progress.optimizer_steps)
        return name

    def save(self) -> str:
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        name = checkpoint_name(self.progress.optimizer_steps)
        local = self.scratch / name
        if accelerator.is_main_process:
            shutil.rmtree(local, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(local))
        mine = {"batches_done": self.progress.batches_done, "loss_sum": self.loss_sum, "loss_count": self.loss_count}
        processes = gather_object([(self.rank, mine)])
        if accelerator.is_main_process:
            if self.lease is not None:
                self.lease.check()  # taken over as dead: write and prune nothing of the new owner's
            (local / PROGRESS_FILE).write_text(json.dumps({
                "fingerprint": self.fingerprint, "world_size": self.world,
                "progress": asdict(self.progress), "processes": {str(r): m for r, m in processes}},
                indent=2, sort_keys=True) + "\n")
            self.store.save(local, name)
            self.store.prune({name, self.progress.best_checkpoint} - {""})
            shutil.rmtree(local, ignore_errors=True)
        accelerator.wait_for_everyone()
        return name

    # -- training ------------------------------------------------------------------------------
    def validate(self) -> dict:
        """Validation metrics of the whole validation set (each process scores its share)."""
        from accelerate.utils import gather_object

        mine = list(range(self.rank, len(self.val), self.world))
        probabilities = modeling.predict_proba(self.accelerator.unwrap_model(self.model), self.val,
                                               self.settings.batch_size * 4, self.settings.pad_id,
                                               self.accelerator.device, index=mine)
        scored = sorted(gather_object(list(zip(mine, probabilities))))
        return modeling.classification_metrics(self.val.labels.tolist(), [p for _, p in scored])

    def fit(self, on_epoch: Callable[[int, dict], None] | None = None) -> Progress:
        import torch

        accelerator, settings, progress = self.accelerator, self.settings, self.progress
        device = accelerator.device
        for epoch in range(progress.epoch, settings.epochs):
            if progress.done:
                break
            self.model.train()
            batches = rank_batches(len(self.train), settings, epoch, self.rank, self.world)
            started = time.perf_counter()
            for number in range(progress.batches_done, len(batches)):
                ids, mask, labels = modeling.collate(self.train, batches[number], settings.pad_id)
                sync = (number + 1) % settings.gradient_accumulation_steps == 0 or number + 1 == len(batches)
                with nullcontext() if sync else accelerator.no_sync(self.model):
                    loss = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      labels=labels.to(device)).loss
                    accelerator.backward(loss / accumulated_in_group(number, len(batches), settings))
                self.loss_sum += loss.item() * len(labels)
                self.loss_count += len(labels)
                progress.batches_done = number + 1
                if not sync:
                    continue
                accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
                progress.optimizer_steps += 1
                if self.started_at is not None and accelerator.is_main_process:
                    log.info("first optimizer step of this attempt: %.2f s after its start%s",
                             time.monotonic() - self.started_at,
                             f" (resumed from {progress.resumed_from[-1]})" if progress.resumed_from else "")
                    self.started_at = None
                if (settings.checkpoint_steps and progress.optimizer_steps % settings.checkpoint_steps == 0
                        and number + 1 < len(batches)):
                    progress.busy_seconds += time.perf_counter() - started
                    self.save()
                    started = time.perf_counter()
            progress.busy_seconds += time.perf_counter() - started
            totals = accelerator.reduce(torch.tensor([self.loss_sum, float(self.loss_count)], device=device,
                                                     dtype=torch.float64), "sum")
            val_metrics = self.validate()
            metrics = {"train_loss": float(totals[0] / totals[1]), "val_loss": val_metrics["loss"],
                       "val_accuracy": val_metrics["accuracy"], "val_auc": val_metrics["auc"]}
            progress.examples_seen += int(totals[1])
            progress.history.append(metrics)
            name = checkpoint_name(progress.optimizer_steps)
            if metrics["val_auc"] > progress.best_val_auc:
                progress.best_epoch, progress.best_val_auc, progress.best_checkpoint = epoch, metrics["val_auc"], name
                if accelerator.is_main_process:
                    self.best_state = {k: v.detach().to("cpu", copy=True)
                                       for k, v in accelerator.unwrap_model(self.model).state_dict().items()}
            progress.epoch, progress.batches_done, self.loss_sum, self.loss_count = epoch + 1, 0, 0.0, 0
            if settings.early_stopping_patience and epoch - progress.best_epoch >= settings.early_stopping_patience:
                progress.stopped_early = True
            progress.done = progress.stopped_early or epoch + 1 == settings.epochs
            self.save()
            if on_epoch and accelerator.is_main_process:
                on_epoch(epoch, metrics)
            if progress.stopped_early:
                log.info("stopping early after epoch %d: no better %s since epoch %d", epoch, SELECTION_METRIC,
                         progress.best_epoch)
        return progress

    def best_model(self):
        """The unwrapped model holding the best epoch's weights (main process)."""
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(self.model)
        state = self.best_state
        if state is None:  # resumed after the best epoch: its weights are in its checkpoint
            local = self.store.download(self.progress.best_checkpoint, self.scratch / "best",
                                        only="model.safetensors")
            state = load_file(str(local / "model.safetensors"))
        model.load_state_dict(state)
        return model

    @property
    def scheduler_steps(self) -> int:
        """How far the learning-rate schedule has gone: one step per optimizer step, whatever the processes."""
        return int(getattr(self.scheduler, "scheduler", self.scheduler).last_epoch)

    @property
    def examples_per_second(self) -> float:
        return self.progress.examples_seen / self.progress.busy_seconds if self.progress.busy_seconds else 0.0


class CheckpointMismatch(ValueError):
    """Checkpoints exist for this training run id but from other settings: resuming would mix two trainings."""
