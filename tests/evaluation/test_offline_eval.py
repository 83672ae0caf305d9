"""planner_offline_eval against a real MLflow registry, real replay rows built from PostgreSQL
and real DAG runs: a well-trained champion and a shuffled-label challenger on the same rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.core import names

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def registry(trained_model, shuffled_label_model, training_events_dsn, tmp_path_factory):
    """Version 1 (trained well) holds `champion`; version 2 (shuffled labels) holds `challenger`."""
    import mlflow

    from include.core.local_postgres import airflow_connection_json
    from include.registration.registry import register

    root = tmp_path_factory.mktemp("offline-eval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("PLANNER_MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
        patch.setenv("PLANNER_STORAGE_ROOT", str(root / "storage"))
        patch.setenv("AIRFLOW_CONN_EVENTS_DB", airflow_connection_json(training_events_dsn))
        good = register(trained_model)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(names.REGISTERED_MODEL_NAME, names.CHAMPION_ALIAS, good.version)
        bad = register(shuffled_label_model)
        assert (good.version, bad.version) == ("1", "2")
        yield {"client": client, "dsn": training_events_dsn, "root": root}


@pytest.fixture(scope="module")
def eval_dag(airflow_db, registry):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_offline_eval.py"))
    assert bag.import_errors == {}
    dag = bag.dags[names.DAG_OFFLINE_EVAL]
    for task in dag.tasks:  # a defect shows at once instead of after a retry delay
        task.retries = 0
    return dag


def run_eval(dag, **conf):
    """A DAG run with every Param given (dag.test() keeps earlier runs' conf values in the DAG's params)."""
    return dag.test(run_conf={"model_version": None, "baseline": names.CHAMPION_ALIAS, "replay_start": None,
                              "replay_end": None, "max_rows": None, **conf})


def _version_tags(client, version: str) -> dict:
    return dict(client.get_model_version(names.REGISTERED_MODEL_NAME, version).tags)


def _eval_tags(client, version: str) -> dict:
    return {k: v for k, v in _version_tags(client, version).items() if k.startswith("eval") or k == "evaluation_run_id"}


def _newest_event_extra(asset_name: str) -> dict:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        event = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                .where(AssetModel.name == asset_name).order_by(AssetEvent.id.desc())).first()
        return dict(event.extra) if event else {}


@pytest.mark.e2e
def test_the_shuffled_label_challenger_is_clearly_worse_on_identical_rows(eval_dag, registry, tmp_path):
    """The headline e2e: report, plots, tags and the Asset, from one real DAG run."""
    import mlflow

    from include.evaluation.pipeline import REPORT_JSON, REPORT_MD

    client = registry["client"]
    run = run_eval(eval_dag)  # defaults: the challenger, against the champion

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    tags = _version_tags(client, "2")
    run_id = tags["evaluation_run_id"]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path)))
    report = json.loads((local / REPORT_JSON).read_text())

    assert (report["model_version"], report["baseline_version"]) == ("2", "1")
    assert report["window"]["start"].startswith("2026-11-16") and report["window"]["end"].startswith("2026-11-23")
    shuffled, good = report["models"]["candidate"], report["models"]["champion"]
    assert shuffled["examples"] == good["examples"] == report["counts"]["examples"] > 500
    assert good["roc_auc"] > 0.7, good
    assert shuffled["roc_auc"] < good["roc_auc"] - 0.15, (shuffled, good)
    assert shuffled["log_loss"] > good["log_loss"] and shuffled["plan_ranking"] < good["plan_ranking"]
    assert report["comparison"]["roc_auc_delta"] < -0.15
    # the floor and the ceiling are on the same rows; the good model lies between them
    assert report["models"]["keep_rate"]["roc_auc"] < good["roc_auc"] <= report["models"]["oracle"]["roc_auc"] + 0.02
    assert 0 < report["comparison"]["auc_share_of_oracle"] < 1
    for role in ("candidate", "champion"):
        serving = report["models"][role]
        assert 0 < serving["latency_p50_ms"] <= serving["latency_p95_ms"] <= serving["latency_p99_ms"]
        assert serving["throughput_examples_per_s"] > 0
    # every slice dimension, each value with its counts, and the counts add up to the whole
    assert set(report["slices"]) == {"workflow_type", "mode", "household_size", "policy_version_id"}
    for dimension, entries in report["slices"].items():
        assert sum(e["examples"] for e in entries.values()) == report["counts"]["examples"], dimension
        assert sum(e["rows"] for e in entries.values()) == report["counts"]["rows"], dimension
    # plots a person looks at: real PNG files
    plots = sorted((local / "plots").iterdir())
    assert [p.name for p in plots] == ["reliability.png", "roc_curves.png", "slices_roc_auc.png"]
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 10_000
    assert "| roc_auc |" in (local / REPORT_MD).read_text()
    # the version carries the headline metrics of this run, and the Asset says which run
    assert float(tags["eval_roc_auc"]) == pytest.approx(shuffled["roc_auc"], abs=1e-6)
    assert float(tags["eval_accuracy"]) == pytest.approx(shuffled["accuracy"], abs=1e-6)
    assert tags["eval_baseline_version"] == "1"
    assert _newest_event_extra(names.ASSET_OFFLINE_EVAL) == {
        "model_name": names.REGISTERED_MODEL_NAME, "model_version": "2", "baseline_version": "1",
        "evaluation_run_id": run_id}
    # the run itself holds the metrics promotion reads
    logged = client.get_run(run_id).data.metrics
    assert logged["candidate.roc_auc"] == pytest.approx(shuffled["roc_auc"])
    assert logged["champion.roc_auc"] == pytest.approx(good["roc_auc"])


@pytest.mark.e2e
def test_a_rerun_gives_the_same_metrics_and_repoints_the_tags(registry):
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan, tag_version

    client = registry["client"]
    runs = []
    for _ in range(2):
        evaluation_plan = plan("1", "none")
        replay = build_and_check_replay(registry["dsn"], evaluation_plan)
        report = evaluate(registry["dsn"], evaluation_plan, replay, max_rows=120)
        tag_version(report)
        runs.append(report)
    first, second = runs
    assert first["evaluation_run_id"] != second["evaluation_run_id"]
    assert first["baseline_version"] is None and "champion" not in first["models"]
    assert first["counts"] == second["counts"] and first["counts"]["rows"] == 120
    quality = ("accuracy", "roc_auc", "log_loss", "brier", "ece", "plan_ranking", "f1")
    assert {k: first["models"]["candidate"][k] for k in quality} == {k: second["models"]["candidate"][k] for k in quality}
    assert first["slices"] == second["slices"]
    assert _version_tags(client, "1")["evaluation_run_id"] == second["evaluation_run_id"]


@pytest.mark.e2e
def test_the_leakage_check_trips_on_a_window_overlapping_training(eval_dag, registry, capfd):
    client = registry["client"]
    before = _eval_tags(client, "2")
    capfd.readouterr()

    run = run_eval(eval_dag, model_version="2", replay_start="2026-11-09", replay_end="2026-11-23")

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["build_replay_set"] == "failed", states
    assert states["evaluate"] != "success" and states["tag_version"] != "success"
    output = capfd.readouterr()
    text = output.out + output.err
    assert "leakage" in text and "overlaps the training window of version 2" in text
    assert "replayed plan_ids were training rows of version 2" in text
    assert _eval_tags(client, "2") == before


def test_the_leakage_rules_as_a_table():
    from datetime import UTC, datetime

    from include.dataset.window import Window
    from include.evaluation.replay import TrainingWindow, leakage_problems

    training = TrainingWindow("3", "2026-11-23", "/data/2026-11-23", datetime(2026, 11, 16, tzinfo=UTC))
    held_out = Window("a", datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))
    overlapping = Window("b", datetime(2026, 11, 15, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))
    assert leakage_problems(held_out, {"p1", "p2"}, [(training, {"p0"})]) == []
    [window_problem] = leakage_problems(overlapping, {"p1"}, [(training, {"p0"})])
    assert "overlaps the training window of version 3" in window_problem
    [id_problem] = leakage_problems(held_out, {"p1", "p2"}, [(training, {"p2", "p9"})])
    assert id_problem.startswith("1 replayed plan_ids were training rows of version 3")


@pytest.mark.e2e
@pytest.mark.parametrize("conf, reason", [
    ({"model_version": "99"}, "planner_acceptance has no version 99"),
    ({"model_version": "2", "replay_start": "2027-03-01", "replay_end": "2027-03-08"}, "has no accepted plans"),
    ({"model_version": "2", "replay_start": "2026-11-23", "replay_end": "2026-11-20"}, "is empty"),
])
def test_bad_input_ends_the_run_with_its_reason_and_no_tags(eval_dag, registry, capfd, conf, reason):
    client = registry["client"]
    before = _eval_tags(client, "2")
    capfd.readouterr()

    run = run_eval(eval_dag, **conf)

    assert run.state == "failed"
    output = capfd.readouterr()
    assert reason in output.out + output.err
    assert _eval_tags(client, "2") == before


def test_a_version_that_will_not_load_is_refused_before_anything_is_logged(registry):
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan
    from include.evaluation.replay import EvaluationError

    client = registry["client"]
    good = client.get_model_version(names.REGISTERED_MODEL_NAME, "1")
    broken = client.create_model_version(names.REGISTERED_MODEL_NAME, source=str(registry["root"] / "no-such-model"),
                                         tags={k: good.tags[k] for k in ("dataset_version", "dataset_uri",
                                                                         "training_cutoff")})
    experiment = client.get_experiment_by_name(names.EXPERIMENT_OFFLINE_EVAL)
    runs_before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    evaluation_plan = plan(str(broken.version), "none")
    replay = build_and_check_replay(registry["dsn"], evaluation_plan)

    with pytest.raises(EvaluationError, match=f"version {broken.version} .* will not load"):
        evaluate(registry["dsn"], evaluation_plan, replay, max_rows=50)

    experiment = client.get_experiment_by_name(names.EXPERIMENT_OFFLINE_EVAL)
    assert (len(client.search_runs([experiment.experiment_id])) if experiment else 0) == runs_before
    assert _eval_tags(client, str(broken.version)) == {}
    client.delete_model_version(names.REGISTERED_MODEL_NAME, str(broken.version))
