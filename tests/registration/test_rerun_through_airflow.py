"""What our users do, through running Airflow services (api-server, scheduler, dag-processor,
triggerer; LocalExecutor) and an MLflow tracking server: the registry is down when
`register_model` first runs, Airflow retries it, the run recovers with one version; then only
`register_model` is cleared and rerun, once with the Airflow CLI and once through the REST
API, and nothing else runs again, and the version count stays one."""
from __future__ import annotations

import shutil
import time

import pytest

from include.core import names
from scripts.airflow_env import airflow_env
from scripts.airflow_services import AirflowServices, MlflowServer, free_port

UPSTREAM = ("resolve_model_path", "wait_for_artifacts", "verify_artifacts")


@pytest.fixture(scope="module")
def stack(trained_model, tmp_path_factory):
    """Airflow services over a storage root holding the trained model; the MLflow server's port
    is reserved but the server is not started (the test starts it)."""

    base = tmp_path_factory.mktemp("stack")
    storage = base / "storage"
    model_dir = storage / "models" / names.REGISTERED_MODEL_NAME / trained_model.name
    shutil.copytree(trained_model, model_dir)
    mlflow_server = MlflowServer(base / "mlflow", port=free_port())
    env = {**airflow_env(),
           "PLANNER_STORAGE_ROOT": str(storage),
           "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
           "PLANNER_ARTIFACT_POKE_INTERVAL_S": "2",
           "PLANNER_REGISTER_RETRIES": "4",
           "PLANNER_REGISTER_RETRY_DELAY_S": "5"}
    services = AirflowServices(base / "airflow", env).start()
    try:
        yield services, mlflow_server, model_dir
    finally:
        services.stop()
        mlflow_server.stop()


def _wait_for_task_state(services, run_id: str, task_id: str, states: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = services.task_instances(names.DAG_REGISTRATION, run_id).get(task_id, {})
        if ti.get("state") in states:
            return ti
        time.sleep(1)
    raise TimeoutError(f"{task_id} never reached {states}")


def _wait_for_rerun(services, run_id: str, previous_try: int, timeout: float = 300) -> dict:
    """The run's task instances once register_model has run again and the run has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = services.task_instances(names.DAG_REGISTRATION, run_id)
        rerun = tis["register_model"]["try_number"] > previous_try and tis["register_model"]["state"] == "success"
        if rerun and services.run_state(names.DAG_REGISTRATION, run_id) == "success":
            return tis
        time.sleep(1)
    raise TimeoutError("register_model did not run again")


def _versions(mlflow_url: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'"))


def _challenger(mlflow_url: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    return str(client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS).version)


def _assert_only_register_model_ran_again(before: dict, after: dict) -> None:
    for task_id in UPSTREAM:
        assert after[task_id]["try_number"] == before[task_id]["try_number"], task_id
        assert after[task_id]["end_date"] == before[task_id]["end_date"], task_id
        assert after[task_id]["state"] == "success"
    assert after["register_model"]["state"] == "success"
    assert after["register_model"]["try_number"] > before["register_model"]["try_number"]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_registry_outage_is_retried_then_only_register_model_reruns_via_cli_and_rest(stack):
    services, mlflow_server, model_dir = stack
    services.unpause(names.DAG_REGISTRATION)
    run_id = services.trigger(names.DAG_REGISTRATION, {"model_path": str(model_dir)})

    # The registry is down: register_model fails and waits for its retry; nothing is registered.
    failed = _wait_for_task_state(services, run_id, "register_model", {"up_for_retry"})
    assert failed["try_number"] == 1
    mlflow_server.start()
    assert services.wait_for_run(names.DAG_REGISTRATION, run_id, timeout=300) == "success"
    first = services.task_instances(names.DAG_REGISTRATION, run_id)
    assert first["register_model"]["try_number"] >= 2
    assert _versions(mlflow_server.url) == ["1"] and _challenger(mlflow_server.url) == "1"
    log = services.request("GET", f"/api/v2/dags/{names.DAG_REGISTRATION}/dagRuns/{run_id}/taskInstances/"
                                  f"register_model/logs/1?full_content=true")
    assert f"MLflow registry at {mlflow_server.url} failed" in str(log)

    # Clear only register_model with the CLI (-t matches by substring); the scheduler reruns it.
    services.airflow("tasks", "clear", names.DAG_REGISTRATION, "-t", "register_model", "-y")
    after_cli = _wait_for_rerun(services, run_id, first["register_model"]["try_number"])
    _assert_only_register_model_ran_again(first, after_cli)
    assert _versions(mlflow_server.url) == ["1"] and _challenger(mlflow_server.url) == "1"

    # The same through the REST API's clearTaskInstances.
    assert services.clear_tasks(names.DAG_REGISTRATION, run_id, ["register_model"]) == ["register_model"]
    after_rest = _wait_for_rerun(services, run_id, after_cli["register_model"]["try_number"])
    _assert_only_register_model_ran_again(after_cli, after_rest)
    assert _versions(mlflow_server.url) == ["1"] and _challenger(mlflow_server.url) == "1"
