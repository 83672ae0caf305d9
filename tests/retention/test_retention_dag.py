"""The `planner_retention` DAG parses cheaply with its Params and schedule, and its policy file is
complete; which runs are dry runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.retention import DAG_RETENTION
from include.retention.policy import KINDS, PolicyError, check_policy, effective_dry_run, load_policy
from tests.dags.test_dag_integrity import _parse

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "planner_retention.py"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags[DAG_RETENTION]


def test_the_dag_file_parses_without_a_database_or_heavy_imports():
    parsed = _parse(DAG_FILE)
    assert parsed["errors"] == {} and parsed["dags"] == [DAG_RETENTION] and parsed["heavy"] == []


def test_weekly_and_from_the_ui_with_a_dry_run_param(dag):
    from airflow.sdk.exceptions import ParamValidationError

    assert dag.timetable.expression == "0 3 * * 0" and str(dag.timetable.timezone) in ("UTC", "Timezone('UTC')")
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.task_ids) == {"plan", "apply"}
    assert dag.get_task("apply").upstream_task_ids == {"plan"}
    assert dag.get_task("plan").retries >= 1
    assert "planner" in dag.tags and len(dag.doc_md) > 200
    schema = dag.params.get_param("dry_run").schema
    assert schema["type"] == "boolean" and dag.params["dry_run"] is True
    with pytest.raises(ParamValidationError):
        dag.params.get_param("dry_run").resolve("yes")


def test_scheduled_runs_follow_the_policy_and_manual_runs_the_param():
    policy = load_policy()
    assert policy["scheduled_dry_run"] is False
    assert effective_dry_run("scheduled", True, policy) is False
    assert effective_dry_run("scheduled", True, {**policy, "scheduled_dry_run": True}) is True
    assert effective_dry_run("manual", None, policy) is True
    assert effective_dry_run("manual", False, policy) is False
    assert effective_dry_run("backfill", True, policy) is True


def test_the_policy_names_every_kind_with_an_age_and_a_description():
    policy = load_policy()
    assert set(policy["kinds"]) == set(KINDS)
    assert {k: v["max_age_days"] for k, v in policy["kinds"].items()} == {
        "staging": 2, "replaced": 2, "superseded_attempt": 7, "dataset_revision": 90, "model_dir": 30,
        "replay_set": 30, "checkpoint": 14}
    raw = json.loads((DAG_FILE.parents[1] / "include" / "retention" / "policy.json").read_text())
    for bad in ({"max_age_days": 0}, {"max_age_days": "30"}, {"max_age_days": True}, {"description": "no age"}):
        broken = json.loads(json.dumps(raw))
        broken["kinds"]["model_dir"] = {"description": "x", **bad}
        with pytest.raises(PolicyError, match="model_dir"):
            check_policy(broken)
    kept_forever = json.loads(json.dumps(raw))
    kept_forever["kinds"]["model_dir"]["max_age_days"] = None
    assert check_policy(kept_forever)["kinds"]["model_dir"]["max_age_days"] is None


@pytest.mark.e2e
def test_a_manual_run_lists_by_default_and_removes_when_asked(airflow_db, fresh_mlflow, storage_root, ml_dsn,
                                                              monkeypatch, capfd):
    """Real DAG runs (dag.test): the events connection and MLflow as in production, a small aged layout."""
    from airflow.dag_processing.dagbag import DagBag

    from include.core import names, storage
    from include.core.local_postgres import airflow_connection_json
    from tests.retention.conftest import age, snapshot

    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", airflow_connection_json(ml_dsn))
    old_model = storage.join(storage.models_root(), "planner_acceptance-v20260101_000000")
    staging = storage.new_staging_dir(old_model)
    (staging / "config.json").write_text("{}")
    storage.publish_dir(staging, old_model)
    stray = storage.new_staging_dir(storage.dataset_uri("2026-11-23"))
    (storage_root / "notes.txt").write_text("someone else's")
    for path in (Path(old_model), stray, storage_root / "notes.txt"):
        age(path, 45)
    before = snapshot(storage_root)
    retention = DagBag(dag_folder=str(DAG_FILE)).dags[DAG_RETENTION]

    listed = retention.test(run_conf={"dry_run": True})
    assert listed.state == "success", {ti.task_id: ti.state for ti in listed.get_task_instances()}
    output = capfd.readouterr().out
    assert "would remove: 2" in output and old_model in output and str(stray) in output
    assert snapshot(storage_root) == before

    applied = retention.test(run_conf={"dry_run": False})
    assert applied.state == "success", {ti.task_id: ti.state for ti in applied.get_task_instances()}
    assert not Path(old_model).exists() and not stray.exists()
    assert (storage_root / "notes.txt").read_text() == "someone else's"
    done = next(ti for ti in applied.get_task_instances() if ti.task_id == "apply").xcom_pull(task_ids="apply")
    assert sorted((d["kind"], d["action"]) for d in done) == [("model_dir", "removed"), ("staging", "removed")]
    assert names.REGISTERED_MODEL_NAME in old_model
