"""Training checkpoints: `<storage root>/checkpoints/<training run id>/` (docs/contracts.md).

Outside the model directory the trainer publishes, so publication stays atomic. One training
run's prefix holds:

- `run.json`: the MLflow run the training logs into, written as soon as the run starts, so a
  restarted attempt continues that run instead of leaving it RUNNING and opening another.
- `step-<optimizer steps, 9 digits>/`: one checkpoint each (Accelerate's state: weights,
  optimizer, scheduler, every process's RNG state; `progress.json`: epoch, position, metric
  history, best epoch), with `_COMPLETE` written last. A checkpoint without it (the pod died
  while it was written) is never resumed from and is removed by the next save.

Any fsspec root works (a local path, s3://...): checkpoints are written to a local scratch
directory and uploaded file by file, the marker last.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from include.core import storage

log = logging.getLogger("planner.train")

COMPLETE_MARKER = "_COMPLETE"
RUN_FILE = "run.json"
PROGRESS_FILE = "progress.json"
CHECKPOINT_NAME = re.compile(r"^step-\d{9}$")


def checkpoint_name(optimizer_steps: int) -> str:
    return f"step-{optimizer_steps:09d}"


def default_checkpoint_root(output_root: str) -> str:
    """`<storage root>/checkpoints` for the usual `<storage root>/models/<model>` output root, else
    `<output root>/_checkpoints` (never inside a model directory)."""
    parts = output_root.rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == "models":
        return storage.join(parts[0], "checkpoints")
    return storage.join(output_root, "_checkpoints")


class CheckpointStore:
    def __init__(self, root: str, training_run_id: str):
        if storage.is_local(root):  # fsspec lists local files by absolute path
            root = os.path.abspath(storage.local_path(root))
        self.uri = storage.join(root, training_run_id)
        self.fs, self.path = storage.filesystem(self.uri)

    def _names(self) -> list[str]:
        if not self.fs.isdir(self.path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)
                      if CHECKPOINT_NAME.match(p.rstrip("/").rsplit("/", 1)[-1]))

    def complete(self) -> list[str]:
        """Names of the complete checkpoints, oldest first."""
        return [name for name in self._names()
                if self.fs.isfile(storage.join(self.path, name, COMPLETE_MARKER))]

    def newest(self) -> str | None:
        names = self.complete()
        return names[-1] if names else None

    def read_run(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(storage.join(self.path, RUN_FILE)))
        except FileNotFoundError:
            return None

    def write_run(self, record: dict) -> None:
        self.fs.makedirs(self.path, exist_ok=True)
        with self.fs.open(storage.join(self.path, RUN_FILE), "w") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")

    def read_progress(self, name: str) -> dict:
        return json.loads(self.fs.cat_file(storage.join(self.path, name, PROGRESS_FILE)))

    def save(self, local_dir: Path, name: str) -> str:
        """Upload a checkpoint written locally, `_COMPLETE` last; returns its URI."""
        target = storage.join(self.path, name)
        if self.fs.exists(target):  # a half-written one from a killed attempt: never mixed with this one
            self.fs.rm(target, recursive=True)
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            remote = storage.join(target, file.relative_to(local_dir).as_posix())
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(file), remote)
        with self.fs.open(storage.join(target, COMPLETE_MARKER), "w") as out:
            out.write("")
        uri = storage.join(self.uri, name)
        log.info("checkpoint saved: %s", uri)
        return uri

    def download(self, name: str, target: Path, only: str | None = None) -> Path:
        """A local copy of checkpoint `name` (or of its one file `only`)."""
        source = storage.join(self.path, name)
        target.mkdir(parents=True, exist_ok=True)
        for remote in sorted(self.fs.find(source)):
            relative = remote[len(source.rstrip("/")) + 1:]
            if only is not None and relative != only:
                continue
            local = target / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))
        return target

    def prune(self, keep: set[str]) -> None:
        """Remove every checkpoint of this run but `keep` (complete or not)."""
        for name in self._names():
            if name not in keep:
                self.fs.rm(storage.join(self.path, name), recursive=True)

    def remove_all(self) -> None:
        """The run's whole prefix (its model is published): only what this trainer wrote there."""
        if self.fs.isdir(self.path):
            self.fs.rm(self.path, recursive=True)
            log.info("checkpoints removed: %s", self.uri)
