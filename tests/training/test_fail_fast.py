"""A remote training backend is refused, with every reason and before anything is submitted,
while the storage root or the MLflow tracking URI exists only on this machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from include.training.backends import remote_backend_problems

S3 = "s3://ml-planner/storage"
SERVER = "https://mlflow.internal.example.com"


@pytest.mark.parametrize("root", ["/data/planner", "var/storage", "file:///data/planner", "memory://planner"])
def test_a_local_storage_root_is_refused(root):
    for backend in ("kubernetes", "databricks"):
        (problem,) = remote_backend_problems(backend, root, SERVER)
        assert repr(root) in problem and "PLANNER_STORAGE_ROOT" in problem and backend in problem


@pytest.mark.parametrize("uri", ["sqlite:///var/mlflow/mlflow.db", "file:///var/mlflow/mlruns", "/var/mlflow/mlruns",
                                 "mlruns", "http://127.0.0.1:5000", "http://localhost:5000"])
def test_a_local_tracking_uri_is_refused(uri):
    (problem,) = remote_backend_problems("kubernetes", S3, uri)
    assert repr(uri) in problem and "MLFLOW_TRACKING_URI" in problem


def test_every_reason_is_given_at_once():
    problems = remote_backend_problems("databricks", "/data/planner", "sqlite:///mlflow.db")
    assert len(problems) == 2
    assert "is a local path" in problems[0] and "is a sqlite: URI on this machine" in problems[1]


@pytest.mark.parametrize(("root", "uri"), [(S3, SERVER), (S3, "http://mlflow.ml-platform.svc:5000"),
                                           ("gs://bucket/planner", "databricks"), (S3, "databricks://prod")])
def test_shared_storage_and_a_tracking_server_are_fine(root, uri):
    assert remote_backend_problems("kubernetes", root, uri) == []
    assert remote_backend_problems("databricks", root, uri) == []


def test_the_local_backend_is_never_refused():
    assert remote_backend_problems("local", "var/storage", "sqlite:///mlflow.db") == []


def test_the_dag_refuses_kubernetes_with_local_settings_before_any_pod(training_dag, storage_root, capfd):
    """The test session's settings are the local defaults (a path and sqlite:): the run fails in
    resolve_inputs with both reasons, and the pod task never runs, though a complete dataset is there."""
    from include.core import names, storage

    dataset = Path(storage.dataset_uri("2026-11-23"))
    dataset.mkdir(parents=True)
    (dataset / names.SUCCESS_MARKER).write_text("")
    run = training_dag.test(run_conf={"backend": "kubernetes"})
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["resolve_inputs"] == "failed"
    assert states["train_kubernetes"] == "upstream_failed"  # never started: no pod was asked for
    assert {states["train_databricks"], states["train_local"], states["publish_model_artifacts"]} == {
        "upstream_failed"}
    log = capfd.readouterr()
    output = log.out + log.err
    assert "backend kubernetes refused, nothing submitted" in output
    assert "PLANNER_STORAGE_ROOT" in output and "MLFLOW_TRACKING_URI" in output
