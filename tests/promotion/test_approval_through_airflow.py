"""Promotion with `require_approval` through running Airflow services: the run parks in
`await_approval` (Airflow's human-in-the-loop, 'Required actions' in the UI) until a person
answers through the REST API; on Approve the champion moves and the approver is recorded, on
Reject nothing moves and the rejection is recorded with who said no."""
from __future__ import annotations

import time

import pytest

from include.core import names
from scripts.airflow_env import airflow_env
from scripts.airflow_services import AirflowServices
from tests.conftest import FAST_MODEL_GATE, copy_as_new_training_run, isolated_planner

MODEL = names.REGISTERED_MODEL_NAME


@pytest.fixture(scope="module")
def stack(trained_model, training_events_dsn, tmp_path_factory):
    """A registry (SQLite, shared with the services) holding two evaluated versions; Airflow services."""
    import mlflow

    from include.registration.registry import register

    base = tmp_path_factory.mktemp("approval")
    retrain = copy_as_new_training_run(trained_model, base / "models" / "planner_acceptance-v20261123_040506")
    with isolated_planner(base, training_events_dsn, **FAST_MODEL_GATE) as (env, _):
        client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        assert [register(trained_model).version, register(retrain).version] == ["1", "2"]
        _evaluate(training_events_dsn, "1")
        services = AirflowServices(base / "airflow", airflow_env()).start()
        try:
            services.unpause(names.DAG_PROMOTION)
            yield services, client, training_events_dsn
        finally:
            services.stop()


def _evaluate(dsn: str, version: str) -> None:
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan, tag_version

    evaluation_plan = plan(version, names.CHAMPION_ALIAS)
    tag_version(evaluate(dsn, evaluation_plan, build_and_check_replay(dsn, evaluation_plan), max_rows=150))


def _await_input(services, run_id: str, timeout: float = 180) -> None:
    """Until the approval task waits for a person and the scheduler has taken in the end of that
    first execution. An answer before then raced it: Airflow 3.3.2 re-queued the task for the
    answer, then read the parked execution's exit as the new one's and failed it. Seen with the
    parked worker taking 5 s to exit on a busy machine; a person at the UI never answers that fast."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = services.task_instances(names.DAG_PROMOTION, run_id).get("await_approval", {}).get("state")
        if state == "awaiting_input":
            break
        assert services.run_state(names.DAG_PROMOTION, run_id) in ("queued", "running"), "the run ended before asking"
        time.sleep(1)
    else:
        raise TimeoutError("await_approval never asked for input")
    scheduler_log = services.home / "service-logs" / "scheduler.log"
    parked = (f"TaskInstance Finished: dag_id={names.DAG_PROMOTION}, task_id=await_approval, run_id={run_id},")
    while time.monotonic() < deadline:
        if any(parked in line and "state=awaiting_input" in line for line in scheduler_log.read_text().splitlines()):
            time.sleep(1)
            return
        time.sleep(1)
    raise TimeoutError("the scheduler never took in the parked execution of await_approval")


def _answer(services, run_id: str, option: str) -> dict:
    return services.request("PATCH", f"/api/v2/dags/{names.DAG_PROMOTION}/dagRuns/{run_id}/taskInstances/"
                                     f"await_approval/-1/hitlDetails", {"chosen_options": [option]})


def _champion(client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL, names.CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def _decisions(dsn: str) -> list[dict]:
    from include.promotion import history

    with history.connect(dsn) as conn:
        return history.decisions(conn, MODEL)


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_the_run_waits_for_a_person_and_acts_on_approve_and_on_reject(stack):
    services, client, dsn = stack

    approved = services.trigger(names.DAG_PROMOTION, {"model_version": "1", "require_approval": True})
    _await_input(services, approved)
    assert _champion(client) is None  # nothing moves while it waits
    detail = services.request("GET", f"/api/v2/dags/{names.DAG_PROMOTION}/dagRuns/{approved}/taskInstances/"
                                     "await_approval/-1/hitlDetails")
    assert "Promote planner_acceptance version 1" in detail["body"] and "Gate: **passed**" in detail["body"]
    _answer(services, approved, "Approve")
    assert services.wait_for_run(names.DAG_PROMOTION, approved, timeout=300) == "success"
    tis = services.task_instances(names.DAG_PROMOTION, approved)
    assert tis["apply"]["state"] == "success", {k: v["state"] for k, v in tis.items()}
    assert _champion(client) == "1"
    decision = _decisions(dsn)[-1]
    assert (decision["version"], decision["outcome"], decision["approver"]) == ("1", "promoted", "admin")

    _evaluate(dsn, "2")  # against the new champion
    rejected = services.trigger(names.DAG_PROMOTION, {"model_version": "2", "require_approval": True})
    _await_input(services, rejected)
    _answer(services, rejected, "Reject")
    state = services.wait_for_run(names.DAG_PROMOTION, rejected, timeout=300)
    tis = services.task_instances(names.DAG_PROMOTION, rejected)
    assert state == "success", {k: v["state"] for k, v in tis.items()}
    assert tis["apply"]["state"] == "skipped" and tis["record_outcome"]["state"] == "success"
    assert _champion(client) == "1"
    decision = _decisions(dsn)[-1]
    assert (decision["version"], decision["outcome"], decision["approver"]) == ("2", "not_approved", "admin")
    assert decision["reasons"] == ["rejected by admin"]
