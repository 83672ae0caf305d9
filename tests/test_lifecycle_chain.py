"""The whole chain through running Airflow services, as `make lifecycle` drives it: one REST
trigger of `planner_dataset`, and the Assets start training (local backend), registration,
offline evaluation and promotion; a Params value outside its schema is refused with HTTP 400."""
from __future__ import annotations

import json
import urllib.error

import pytest

from include.core import names
from scripts.airflow_env import airflow_env
from scripts.airflow_services import AirflowServices
from scripts.lifecycle import CHAIN, ChainFailed, run_chain
from tests.conftest import FAST_MODEL_GATE, isolated_planner


@pytest.fixture(scope="module")
def chain_stack(training_events_dsn, tmp_path_factory):
    base = tmp_path_factory.mktemp("chain")
    with isolated_planner(base, training_events_dsn, PLANNER_DATASET_SCHEDULE="none", **FAST_MODEL_GATE):
        services = AirflowServices(base / "airflow", airflow_env()).start()
        try:
            for dag_id in CHAIN:
                services.unpause(dag_id)
            yield services, training_events_dsn
        finally:
            services.stop()


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_one_rest_trigger_runs_the_asset_chain_to_promotion(chain_stack):
    import time

    import mlflow

    from include.core.tracking import configure_mlflow
    from include.promotion import history

    services, dsn = chain_stack
    with pytest.raises(urllib.error.HTTPError) as refused:
        services.trigger(names.DAG_DATASET, {"end_date": "2026-11-23", "lookback_days": 0})
    assert refused.value.code == 400

    try:
        run_chain(services, "2026-11-23", time.perf_counter())
    except ChainFailed as failure:
        pytest.fail(str(failure))

    for dag_id in CHAIN:
        [run] = [r for r in services.request("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]]
        assert run["state"] == "success", dag_id
        expected = "manual" if dag_id == names.DAG_DATASET else "asset_triggered"
        assert run["run_type"] == expected, (dag_id, run["run_type"])
    configure_mlflow()
    client = mlflow.MlflowClient()
    [version] = client.search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'")
    tags = version.tags
    assert tags["dataset_version"] == "2026-11-23" and tags["evaluation_run_id"] and tags["eval_roc_auc"]
    with history.connect(dsn) as conn:
        [decision] = history.decisions(conn, names.REGISTERED_MODEL_NAME)
    assert decision["version"] == str(version.version)
    # A model trained on this data with no champion to beat passes the (seconds-trained) gate: a chain that
    # rejected it, or rejected everything, is broken.
    assert decision["outcome"] == "promoted", decision["reasons"]
    assert str(client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHAMPION_ALIAS).version) == \
        str(version.version)
    assert decision["evaluation_run_id"] == tags["evaluation_run_id"]

    # One call answers what the version is made of and which Airflow run of every phase touched it.
    from include.lineage import version_lineage, versions_trained_on

    runs = {dag_id: services.request("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"][0]["dag_run_id"]
            for dag_id in CHAIN}
    doc = version_lineage(str(version.version), dsn=dsn)
    assert doc["dataset"]["airflow"] == {"dag_id": names.DAG_DATASET, "run_id": runs[names.DAG_DATASET]}
    assert doc["training"]["airflow"] == {"dag_id": names.DAG_TRAINING, "run_id": runs[names.DAG_TRAINING]}
    assert doc["registration"]["airflow"] == {"dag_id": names.DAG_REGISTRATION, "run_id": runs[names.DAG_REGISTRATION]}
    assert [e["airflow_run_id"] for e in doc["evaluations"]] == [runs[names.DAG_OFFLINE_EVAL]]
    assert [d["airflow"] for d in doc["promotion"]] == [{"dag_id": names.DAG_PROMOTION,
                                                          "run_id": runs[names.DAG_PROMOTION]}]
    assert doc["dataset"]["digest"] == tags["dataset_digest"] and doc["evaluations"][0]["run_id"] == \
        tags["evaluation_run_id"]
    assert [v["version"] for v in versions_trained_on("2026-11-23", doc["dataset"]["revision"])] == \
        [str(version.version)]
    print(json.dumps({"outcome": decision["outcome"], "reasons": decision["reasons"]}))

    # The task instances link to what they recorded, as the UI asks the api-server for them (the plugin's links)
    links = services.request("GET", f"/api/v2/dags/{names.DAG_REGISTRATION}/dagRuns/{runs[names.DAG_REGISTRATION]}"
                                    "/taskInstances/register_model/links")["extra_links"]
    assert links["MLflow model version"].endswith(f"/#/models/{names.REGISTERED_MODEL_NAME}/versions/{version.version}")
    links = services.request("GET", f"/api/v2/dags/{names.DAG_OFFLINE_EVAL}/dagRuns/{runs[names.DAG_OFFLINE_EVAL]}"
                                    "/taskInstances/evaluate/links")["extra_links"]
    assert links["MLflow run"].endswith(f"/#/runs/{tags['evaluation_run_id']}")

    # The user's fix-and-rerun: clear only register_model of that registration run, through REST.
    [registration] = services.request("GET", f"/api/v2/dags/{names.DAG_REGISTRATION}/dagRuns")["dag_runs"]
    before = services.task_instances(names.DAG_REGISTRATION, registration["dag_run_id"])
    assert services.clear_tasks(names.DAG_REGISTRATION, registration["dag_run_id"], ["register_model"]) == \
        ["register_model"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        after = services.task_instances(names.DAG_REGISTRATION, registration["dag_run_id"])
        if after["register_model"]["try_number"] > before["register_model"]["try_number"] and \
                after["register_model"]["state"] == "success":
            break
        time.sleep(2)
    else:
        pytest.fail("register_model did not run again")
    for task_id in ("resolve_model_path", "wait_for_artifacts", "verify_artifacts"):
        assert after[task_id]["try_number"] == before[task_id]["try_number"], task_id
        assert after[task_id]["end_date"] == before[task_id]["end_date"], task_id
    assert len(client.search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'")) == 1
