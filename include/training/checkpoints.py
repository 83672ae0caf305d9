"""Training checkpoints: `<storage root>/checkpoints/<training run id>/` (docs/contracts.md).

Outside the model directory the trainer publishes, so publication stays atomic. One training
run's prefix holds:

- `run.json`: the MLflow run the training logs into, written as soon as the run starts, so a
  restarted attempt continues that run instead of leaving it RUNNING and opening another.
- `lease.json`: the owner lease of the trainer writing here now (`Lease`), so a second trainer
  of the same run id (a retry started while a lost node's pod still runs) refuses instead of
  pruning the first one's checkpoints.
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
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from include.core import storage

log = logging.getLogger("planner.train")

COMPLETE_MARKER = "_COMPLETE"
RUN_FILE = "run.json"
PROGRESS_FILE = "progress.json"
LEASE_FILE = "lease.json"
LEASE_EXPIRY_ENV = "PLANNER_TRAINING_LEASE_EXPIRY_S"
DEFAULT_LEASE_EXPIRY_S = 180.0  # below the DAG's 5 min retry delay: the retry after a dead pod takes over
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

    def lease(self, expiry_s: float | None = None) -> Lease:
        return Lease(self, expiry_s)


class LeaseHeld(RuntimeError):
    """Another live trainer owns this run's checkpoint prefix. planner-train exits 3 (busy, not bad
    input: the DAG retries it; by then the other one has published, and the retry finds the model
    complete, or it has died and its lease has expired)."""


class LeaseLost(LeaseHeld):
    """Another trainer took this trainer's lease over (it was thought dead): stop before writing."""


def lease_expiry_s() -> float:
    """How long a lease lives without a heartbeat (`PLANNER_TRAINING_LEASE_EXPIRY_S`, default 180 s)."""
    return float(os.environ.get(LEASE_EXPIRY_ENV) or DEFAULT_LEASE_EXPIRY_S)


class Lease:
    """The owner lease of one training run's checkpoint prefix: `<prefix>/lease.json` holds the
    owner's token, host and pid and a heartbeat time, written at the start, refreshed every
    expiry/6 by a daemon thread and removed at the end.

    A trainer finding another owner's lease refuses (`LeaseHeld`) while that lease is live: its
    heartbeat is younger than the expiry and, when the owner ran on this host, its process still
    exists (so a SIGKILLed local attempt is taken over at once, a lost pod after the expiry).
    Before every checkpoint it writes, the owner checks that the lease still names it
    (`check`), so a trainer taken over as dead stops before it prunes the new owner's checkpoints.

    Limits, honestly: it is best effort. Object stores without conditional writes (and this code
    uses none, so local and s3:// behave alike) let two trainers that look at the same moment both
    write the lease; the read-back after writing and the check before each checkpoint make the
    loser stop at its next checkpoint at the latest, not before it has trained. Liveness is judged
    by wall-clock heartbeats, so hosts' clocks must agree to well within the expiry, and a trainer
    that cannot reach the store for longer than the expiry may be taken over while it still runs
    (it then stops at its next checkpoint).
    """

    def __init__(self, store: CheckpointStore, expiry_s: float | None = None, owner: dict | None = None):
        self.fs, self.dir, self.path = store.fs, store.path, storage.join(store.path, LEASE_FILE)
        self.uri, self.local = storage.join(store.uri, LEASE_FILE), storage.is_local(store.uri)
        self.expiry_s = expiry_s or lease_expiry_s()
        self.owner = owner or {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    @property
    def token(self) -> str:
        return self.owner["token"]

    def read(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:  # torn or foreign content: nobody's lease
            return None

    def write(self, heartbeat: float | None = None) -> None:
        """Write the lease with a heartbeat (now): one PUT on object storage, a rename locally."""
        now = time.time() if heartbeat is None else heartbeat
        body = json.dumps({**self.owner, "heartbeat": now, "expiry_s": self.expiry_s,
                           "heartbeat_at": datetime.fromtimestamp(now, UTC).isoformat()}, sort_keys=True)
        if self.local:
            os.makedirs(self.dir, exist_ok=True)
            partial = f"{self.path}.{self.token[:8]}.partial"
            with open(partial, "w") as out:
                out.write(body + "\n")
            os.replace(partial, self.path)
        else:
            self.fs.pipe_file(self.path, (body + "\n").encode())

    def live_reason(self, record: dict) -> str | None:
        """Why `record` (another owner's lease) is live, or None when it is expired or its process is gone."""
        age = time.time() - float(record.get("heartbeat") or 0)
        expiry = float(record.get("expiry_s") or self.expiry_s)
        if record.get("host") == self.owner["host"]:
            if not _process_exists(record.get("pid")):
                return None
            if _is_trainer(record.get("pid")):  # alive on this host: stalled, not dead, whatever its heartbeat
                return (f"host {record.get('host')}, pid {record.get('pid')} still runs a trainer "
                        f"(last heartbeat {max(age, 0):.0f} s ago)")
        if age > expiry:
            return None
        return (f"host {record.get('host')}, pid {record.get('pid')}, last heartbeat {max(age, 0):.0f} s ago, "
                f"expiring {expiry:.0f} s after its last heartbeat")

    def acquire(self) -> None:
        """Take the lease (a dead owner's is taken over) and start refreshing it; LeaseHeld when another
        live owner holds it."""
        record = self.read()
        if record and record.get("token") != self.token:
            reason = self.live_reason(record)
            if reason:
                raise LeaseHeld(f"another trainer holds the lease {self.uri} ({reason}): not starting a second "
                                "trainer on the same checkpoints; retry later (once it has published, the retry "
                                "finds the model complete; if it died, its lease expires)")
            log.warning("taking over the lease %s of a trainer that is gone (host %s, pid %s, last heartbeat %s)",
                        self.uri, record.get("host"), record.get("pid"), record.get("heartbeat_at"))
        self.write()
        confirmed = self.read()
        if not confirmed or confirmed.get("token") != self.token:
            raise LeaseHeld(f"another trainer wrote the lease {self.uri} at the same moment: leaving it the run")
        self._thread = threading.Thread(target=self._beat, name="planner-train-lease", daemon=True)
        self._thread.start()
        log.info("lease %s taken (refreshed every %.0f s, expires %.0f s after the last refresh)", self.uri,
                 self.expiry_s / 6, self.expiry_s)

    def check(self) -> None:
        """LeaseLost unless the lease still names this trainer (called before writing a checkpoint)."""
        if self.lost is None:
            record = self.read()
            if not record or record.get("token") != self.token:
                holder = f"host {record.get('host')}, pid {record.get('pid')}" if record else "nobody"
                self.lost = f"the lease {self.uri} now names {holder}"
        if self.lost:
            raise LeaseLost(f"{self.lost}: another trainer took this run over (it thought this one dead); "
                            "stopping without writing")

    def _beat(self) -> None:
        while not self._stop.wait(self.expiry_s / 6):
            try:
                record = self.read()
                if not record or record.get("token") != self.token:
                    self.check()
                self.write()
            except LeaseLost:
                log.error("%s", self.lost)
                return
            except Exception as exc:  # noqa: BLE001 - a store hiccup: the next beat tries again
                log.warning("could not refresh the lease %s: %s", self.uri, exc)

    def stop_refreshing(self) -> None:
        """Stop the heartbeat (before the owner removes the whole prefix, lease included)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        """Stop refreshing and remove the lease if it is still this trainer's."""
        self.stop_refreshing()
        try:
            record = self.read()
            if record and record.get("token") == self.token:
                self.fs.rm(self.path)
            if self.local and os.path.isdir(self.dir) and not os.listdir(self.dir):
                os.rmdir(self.dir)  # nothing else was written: leave no empty prefix behind
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            log.warning("could not release the lease %s: %s", self.uri, exc)


def _is_trainer(pid) -> bool:
    """Whether process `pid` of this host runs planner-train (its command line says so), not a process that
    got the pid of a dead trainer."""
    try:
        command = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, TypeError, ValueError):
        return False
    return b"planner-train" in command or b"include.training" in command


def _process_exists(pid) -> bool:
    """Whether process `pid` of this host still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # another user's process, or no pid recorded: assume it lives
    try:
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal test is all there is
    return state not in ("Z", "X")
