"""The owner lease on a training run's checkpoint prefix (checkpoints.Lease), on a local root and
on the S3 server: a second trainer of the same run id refuses (exit 3) while the first one lives,
and a retry later proceeds; a dead trainer's lease is taken over; the owner refreshes it while it
trains, releases it at the end, and stops when it has been taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.core import names, storage
from include.training import cli
from include.training.checkpoints import COMPLETE_MARKER, LEASE_FILE, CheckpointStore, Lease

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "1", "--max-rows", "200", "--batch-size", "32"]
LONGER = ["--epochs", "2", "--max-rows", "400", "--batch-size", "16", "--seed", "3"]


def _argv(dataset: str, out: str, run_id: str, *extra: str) -> list[str]:
    return ["--dataset-uri", dataset, "--output-root", out, "--training-run-id", run_id, *extra]


def _runs_of(tracking_uri: str, training_run_id: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(names.EXPERIMENT_TRAINING)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.training_run_id = '{training_run_id}'")


def _other_pod(store: CheckpointStore) -> Lease:
    """The lease as another pod of this run id writes it (another host, so only its heartbeat tells)."""
    return Lease(store, owner={"token": "token-of-the-old-pod", "host": "planner-train-old-pod", "pid": 7})


class Trainer:
    """planner-train in a process of its own, its output in a file (a pipe nobody reads would block it)."""

    def __init__(self, argv: list[str], log: Path, **env: str):
        self.log = log
        with open(log, "w") as output:
            self.process = subprocess.Popen([sys.executable, "-m", "include.training.cli", *argv], cwd=PROJECT_ROOT,
                                            env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 900) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait()

    def wait_for(self, condition, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.running(), f"the trainer ended before {what}: {self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.02)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A storage root: a local directory, or a bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "storage")
    return request.getfixturevalue("s3_root")


def test_a_live_lease_of_another_trainer_is_refused_and_once_it_expires_a_retry_trains(
        root, published_dataset, fresh_mlflow, capsys):
    out = storage.models_root(root)
    run_id = "planner_acceptance-v20261123_000260"
    store = CheckpointStore(storage.checkpoints_root(root), run_id)
    other = _other_pod(store)
    other.write()  # its heartbeat is fresh: it is training

    assert cli.main(_argv(published_dataset, out, run_id, *SMALL)) == 3
    error = capsys.readouterr().err
    assert error.startswith("planner-train: busy: another trainer holds the lease")
    assert "planner-train-old-pod" in error and "retry later" in error
    assert other.read()["token"] == other.token  # its lease stands
    assert store.read_run() is None and store.complete() == [] and _runs_of(fresh_mlflow, run_id) == []

    other.write(heartbeat=time.time() - 3600)  # it died an hour ago (a lost node): no heartbeat since
    assert cli.main(_argv(published_dataset, out, run_id, *SMALL, "--keep-checkpoints")) == 0
    assert storage.is_complete(storage.join(out, run_id))
    assert store.read_run()["training_run_id"] == run_id and store.complete()
    assert not store.fs.exists(storage.join(store.path, LEASE_FILE))  # released at the end
    assert len(_runs_of(fresh_mlflow, run_id)) == 1


def test_a_second_trainer_of_a_running_training_is_refused_and_its_retry_finds_the_model(
        published_dataset, tmp_path, fresh_mlflow, capsys):
    """Two real trainers of one run id (a KPO retry while the lost node's pod still runs): the second
    exits 3 and writes nothing; retried after the first has published, it finds the model complete."""
    out = str(tmp_path / "models" / names.REGISTERED_MODEL_NAME)
    run_id = "planner_acceptance-v20261123_000261"
    store = CheckpointStore(str(tmp_path / "checkpoints"), run_id)
    first = Trainer(_argv(published_dataset, out, run_id, *LONGER), tmp_path / "first.log")
    try:
        first.wait_for(lambda: store.fs.exists(storage.join(store.path, LEASE_FILE)), "its lease")
        assert cli.main(_argv(published_dataset, out, run_id, *LONGER)) == 3
        assert first.running(), "the first trainer ended before the second one was refused: no overlap"
        assert "planner-train: busy:" in capsys.readouterr().err
        assert first.wait() == 0, first.output()[-3000:]
    finally:
        first.stop()
    manifest = json.loads((Path(out) / run_id / names.MODEL_MANIFEST_FILE).read_text())
    assert manifest["resumed_from"] == [] and len(manifest["epoch_metrics"]) == 2  # undisturbed
    assert len(_runs_of(fresh_mlflow, run_id)) == 1

    assert cli.main(_argv(published_dataset, out, run_id, *LONGER)) == 0  # the retry: nothing to do
    assert "already complete: nothing to train" in capsys.readouterr().out


def test_the_lease_is_refreshed_while_training_and_released_at_the_end(published_dataset, tmp_path, fresh_mlflow):
    out = str(tmp_path / "models" / names.REGISTERED_MODEL_NAME)
    run_id = "planner_acceptance-v20261123_000262"
    store = CheckpointStore(str(tmp_path / "checkpoints"), run_id)
    lease = Lease(store)
    trainer = Trainer(_argv(published_dataset, out, run_id, *LONGER, "--keep-checkpoints"), tmp_path / "train.log",
                      PLANNER_TRAINING_LEASE_EXPIRY_S="3")  # a heartbeat every 0.5 s
    try:
        heartbeats: set[float] = set()

        def refreshed() -> bool:
            record = lease.read()
            if record:
                heartbeats.add(record["heartbeat"])
            return len(heartbeats) >= 3

        trainer.wait_for(refreshed, "a refreshed lease")
        record = lease.read()
        assert record["host"] and record["pid"] == trainer.pid and record["expiry_s"] == 3
        assert trainer.wait() == 0, trainer.output()[-3000:]
    finally:
        trainer.stop()
    assert lease.read() is None and store.complete()  # released; the kept checkpoints stay


def test_a_trainer_whose_lease_was_taken_over_stops_without_touching_the_new_owners_lease(
        published_dataset, tmp_path, fresh_mlflow):
    """It was thought dead (no heartbeat reached the store for longer than the expiry) and another
    trainer took the run over: at its next heartbeat or checkpoint it stops, exit 3."""
    out = str(tmp_path / "models" / names.REGISTERED_MODEL_NAME)
    run_id = "planner_acceptance-v20261123_000263"
    store = CheckpointStore(str(tmp_path / "checkpoints"), run_id)
    trainer = Trainer(_argv(published_dataset, out, run_id, *LONGER, "--checkpoint-steps", "2"),
                      tmp_path / "train.log")
    try:
        trainer.wait_for(lambda: bool(list(Path(store.path).glob(f"step-*/{COMPLETE_MARKER}"))),
                         "its first checkpoint")
        new_owner = _other_pod(store)
        new_owner.write()
        code = trainer.wait()
    finally:
        trainer.stop()
    assert code == 3, trainer.output()[-3000:]
    assert "took this run over" in trainer.output()
    assert new_owner.read()["token"] == new_owner.token  # not released by the trainer it displaced
    assert not (Path(out) / run_id).exists()


def test_a_stalled_trainer_on_this_host_keeps_its_lease_but_a_gone_one_or_a_reused_pid_does_not(tmp_path):
    """On the lease's own host liveness is the process, not the heartbeat: a trainer stalled past the
    expiry (swapping, a hung store) still runs and must not be taken over (both would share one scratch);
    once it is gone, or its pid now belongs to another program, the lease is dead as its heartbeat says."""
    import socket

    store = CheckpointStore(str(tmp_path / "checkpoints"), "planner_acceptance-v20261123_000264")
    me = Lease(store, expiry_s=60)
    stalled = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "include.training.cli"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = time.time() - 3600
        trainer = {"token": "t1", "host": socket.gethostname(), "pid": stalled.pid, "heartbeat": old, "expiry_s": 60}
        assert me.live_reason(trainer) is not None
        assert me.live_reason({**trainer, "pid": other.pid}) is None  # a pid reused by another program
        assert me.live_reason({**trainer, "pid": other.pid, "heartbeat": time.time()}) is not None  # fresh: live
    finally:
        stalled.kill()
        other.kill()
        stalled.wait()
        other.wait()
    assert me.live_reason(trainer) is None  # gone
