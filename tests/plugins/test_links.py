"""The tasks' extra links (include/models_page/links.py): resolved from a real DAG run's XCom in Airflow's
metadata database, to the MLflow UI configured by PLANNER_MLFLOW_UI_URL; nothing for other tasks; every
(DAG, task) they name exists in the project's DAGs."""
from __future__ import annotations

import pytest

from include.core import names
from include.models_page import links

PROBE = "planner_links_probe"
UI = "http://mlflow.example.test:5000"


PROBE_DAG = f"""
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="{PROBE}", start_date=datetime(2026, 1, 5), schedule=None, catchup=False)
def probe():
    @task
    def publish_model_artifacts() -> dict:
        return {{"model_path": "/m", "training_run_id": "planner_acceptance-v20261123_010203",
                "mlflow_run_id": "0123abcd4567ef", "dataset_version": "2026-11-23"}}

    @task
    def train_local() -> None:
        return None

    @task
    def register_model() -> dict:
        return {{"model_name": "planner_acceptance", "version": "7", "training_run_id": "t",
                "dataset_version": "2026-11-23", "model_id": "m-1", "created": True}}

    @task
    def unrelated() -> dict:
        return {{"mlflow_run_id": "should-not-be-linked", "version": "9"}}

    train_local() >> publish_model_artifacts()
    register_model()
    unrelated()


probe()
"""


def run_probe(path, dag_id: str):
    """dag.test() of a DAG file outside dags/: serialized first (dag.test() looks for it in the bundles)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(path))
    assert bag.import_errors == {}, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    return bag.dags[dag_id].test()


@pytest.fixture(scope="module")
def probe_run(airflow_db, tmp_path_factory):
    """A tiny DAG whose tasks return what the lifecycle's tasks return, run with dag.test()."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    path = tmp_path_factory.mktemp("links") / "links_probe.py"
    path.write_text(PROBE_DAG)
    run = run_probe(path, PROBE)
    assert run.state == "success"
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == PROBE, TaskInstance.run_id == run.run_id).all()
        return {ti.task_id: ti.key for ti in tis}


def test_links_resolve_from_the_runs_xcom(probe_run, monkeypatch):
    monkeypatch.setenv("PLANNER_MLFLOW_UI_URL", UI + "/")
    run_link = links.MlflowRunLink(targets={
        (PROBE, "publish_model_artifacts"): links.Target(("mlflow_run_id",)),
        (PROBE, "train_local"): links.Target(("mlflow_run_id",), "publish_model_artifacts")})
    version_link = links.MlflowModelVersionLink(targets={(PROBE, "register_model"): links.Target(("version",))})

    assert run_link.get_link(None, ti_key=probe_run["publish_model_artifacts"]) == f"{UI}/#/runs/0123abcd4567ef"
    # the training task links to the run its DAG run's publish step recorded
    assert run_link.get_link(None, ti_key=probe_run["train_local"]) == f"{UI}/#/runs/0123abcd4567ef"
    assert (version_link.get_link(None, ti_key=probe_run["register_model"])
            == f"{UI}/#/models/{names.REGISTERED_MODEL_NAME}/versions/7")
    # an unrelated task, whatever its XCom holds: no link
    assert run_link.get_link(None, ti_key=probe_run["unrelated"]) == ""
    assert version_link.get_link(None, ti_key=probe_run["unrelated"]) == ""
    # the project's links (their real targets) answer nothing for a task of another DAG
    for link in (links.MlflowRunLink(), links.MlflowModelVersionLink()):
        assert all(link.get_link(None, ti_key=key) == "" for key in probe_run.values())


def test_without_a_configured_ui_the_tracking_server_or_the_local_default(monkeypatch):
    monkeypatch.delenv("PLANNER_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.internal.test/")
    assert links.mlflow_ui_base() == "https://mlflow.internal.test"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    assert links.mlflow_ui_base() == "http://127.0.0.1:5000"


def test_every_linked_task_exists_in_the_dags():
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_dag_integrity import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    for targets in (links.RUN_TARGETS, links.VERSION_TARGETS):
        for (dag_id, task_id), target in targets.items():
            assert task_id in bag.dags[dag_id].task_ids, (dag_id, task_id)
            assert (target.source_task or task_id) in bag.dags[dag_id].task_ids, (dag_id, target)
    # the plugin registers both, by name
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    import planner_models_page

    assert [link.name for link in planner_models_page.PlannerModelsPagePlugin.global_operator_extra_links] == [
        "MLflow run", "MLflow model version"]
