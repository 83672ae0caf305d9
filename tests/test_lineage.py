"""Lineage on a real small chain, without Airflow services: a dataset version logged to MLflow by the
dataset phase's function, a model trained by `planner-train` with the training DAG run's ids, registered
(with the registration DAG run's ids), evaluated and promoted by the phases' own functions. The lineage
document must hold exactly what the registry's tags, the MLflow runs and the `ml` schema hold, and null
where they hold nothing (a version registered without the Airflow ids)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from include.core import names
from tests.conftest import copy_as_new_training_run, isolated_planner

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = names.REGISTERED_MODEL_NAME
DATASET_RUN = {"dag_id": names.DAG_DATASET, "run_id": "manual__2026-11-23T06:00:00+00:00"}
TRAINING_RUN = {"dag_id": names.DAG_TRAINING, "run_id": "asset_triggered__2026-11-23T06:05:00+00:00"}
REGISTRATION_RUN = {"dag_id": names.DAG_REGISTRATION, "run_id": "asset_triggered__2026-11-23T06:20:00+00:00"}
EVALUATION_RUN_ID = "asset_triggered__2026-11-23T06:25:00+00:00"
PROMOTION_RUN = {"dag_id": names.DAG_PROMOTION, "run_id": "asset_triggered__2026-11-23T06:40:00+00:00"}
TRAINING_RUN_ID = "planner_acceptance-v20261123_060500"
OLD_TRAINING_RUN_ID = "planner_acceptance-v20261116_060500"
# The gate is not what this test is about: a one-epoch model on a loaded machine must still be promoted,
# so that the lineage has a change of champion to show.
ANY_MODEL_PASSES = {"DEPLOY_ACCURACY_THRESHOLD": "0", "DEPLOY_ROC_AUC_THRESHOLD": "0", "DEPLOY_LOSS_THRESHOLD": "100",
                    "DEPLOY_VAL_LOSS_THRESHOLD": "100", "DEPLOY_LATENCY_THRESHOLD": "600000",
                    "DEPLOY_FLOOR_MARGIN": "-1", "DEPLOY_MIN_REPLAY_EXAMPLES": "1"}
pytestmark = pytest.mark.timeout(1800)  # the module's chain trains, registers, evaluates: slow on 2 shared cores


def _evaluate(dsn: str, version: str, airflow_run_id: str) -> dict:
    """Offline evaluation as the DAG runs it (plan, replay + leakage check, evaluate, tag)."""
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan, tag_version

    evaluation_plan = plan(version, "champion")
    report = evaluate(dsn, evaluation_plan, build_and_check_replay(dsn, evaluation_plan), max_rows=300,
                      airflow_run_id=airflow_run_id)
    tag_version(report)
    return report


def _promote(dsn: str, version: str, airflow: dict) -> dict:
    """planner_promotion's decide -> apply or record_outcome, without approval."""
    from include.promotion.pipeline import apply, decide_promotion, record_outcome

    plan = decide_promotion(dsn, version, None, require_approval=False, dry_run=False)
    if plan["next"] == "apply":
        return apply(dsn, plan, None, airflow)
    return record_outcome(dsn, plan, plan["outcome"], plan["decision"]["reasons"], None, airflow)


@pytest.fixture(scope="module")
def chain(published_dataset, training_events_dsn, tmp_path_factory):
    """Version 1: the whole chain with Airflow ids. Version 2: the same weights as a model directory from
    before the trainer recorded its Airflow run (no ids in its manifest), registered without any either."""
    import mlflow

    from include.core import storage
    from include.dataset.tracking import log_dataset_version
    from include.lineage import version_lineage
    from include.registration.registry import register
    from include.training import cli

    root = tmp_path_factory.mktemp("lineage")
    dsn = training_events_dsn
    with isolated_planner(root, dsn, PLANNER_EVENTS_DSN=dsn, **ANY_MODEL_PASSES) as (env, _):
        counts = json.loads(Path(storage.resolve(published_dataset), names.DATASET_COUNTS_FILE).read_text())
        dataset_run = log_dataset_version(published_dataset, counts, airflow=DATASET_RUN)
        assert log_dataset_version(published_dataset, counts, airflow={"dag_id": "x", "run_id": "y"}) == dataset_run

        models = root / "models" / MODEL
        assert cli.main(["--dataset-uri", published_dataset, "--output-root", str(models), "--training-run-id",
                         TRAINING_RUN_ID, "--epochs", "1", "--max-rows", "500", "--batch-size", "32",
                         "--airflow-dag-id", TRAINING_RUN["dag_id"], "--airflow-run-id", TRAINING_RUN["run_id"]]) == 0
        model_dir = models / TRAINING_RUN_ID
        manifest = json.loads((model_dir / names.MODEL_MANIFEST_FILE).read_text())

        first = register(model_dir, airflow=REGISTRATION_RUN)
        again = register(model_dir, airflow={"dag_id": names.DAG_REGISTRATION, "run_id": "manual__later"})
        assert first.version == again.version == "1" and first.created and not again.created
        old_dir = copy_as_new_training_run(model_dir, root / "old" / OLD_TRAINING_RUN_ID)
        old_manifest = json.loads((old_dir / names.MODEL_MANIFEST_FILE).read_text())
        for key in ("airflow_dag_id", "airflow_run_id"):
            del old_manifest[key]
        (old_dir / names.MODEL_MANIFEST_FILE).write_text(json.dumps(old_manifest))
        assert register(old_dir).version == "2"

        before_promotion = version_lineage("1")  # isolated_planner dropped the ml schema: no decisions yet
        report = _evaluate(dsn, "1", EVALUATION_RUN_ID)
        promoted = _promote(dsn, "1", PROMOTION_RUN)
        rerun = _promote(dsn, "1", {**PROMOTION_RUN, "run_id": "manual__2026-11-23T07:00:00+00:00"})
        assert promoted["outcome"] == "promoted", promoted["reasons"]
        yield {"dsn": dsn, "env": env, "client": mlflow.MlflowClient(), "manifest": manifest,
               "dataset_run": dataset_run, "report": report, "promoted": promoted, "rerun": rerun,
               "before_promotion": before_promotion}


def _tags(client, version: str) -> dict:
    return dict(client.get_model_version(MODEL, version).tags)


def test_the_trainer_takes_the_airflow_ids_in_the_pod_and_the_databricks_argv():
    from include.training import cli
    from include.training.backends import databricks_argv, trainer_argv, trainer_options

    params = {"base_model": "tiny", "epochs": 1, "learning_rate": 0.001, "batch_size": 32, "seed": 7,
              "max_rows": 0, "holdout_days": 7, "lora": False}
    plain = trainer_options("/d/2026-11-23", "/m", TRAINING_RUN_ID, params)
    options = trainer_options("/d/2026-11-23", "/m", TRAINING_RUN_ID, params, airflow=TRAINING_RUN)
    assert options == {**plain, "airflow-dag-id": TRAINING_RUN["dag_id"], "airflow-run-id": TRAINING_RUN["run_id"]}
    for argv in (trainer_argv(options), databricks_argv(options)):
        args = cli.parse_args(argv)
        assert (args.airflow_dag_id, args.airflow_run_id) == (TRAINING_RUN["dag_id"], TRAINING_RUN["run_id"])
    assert cli.parse_args(trainer_argv(plain)).airflow_run_id == ""


@pytest.mark.e2e
def test_the_version_lineage_is_what_the_registry_the_runs_and_the_ml_schema_hold(chain):
    from include.lineage import version_lineage
    from include.promotion import history

    client, manifest = chain["client"], chain["manifest"]
    tags = _tags(client, "1")
    doc = version_lineage("1")

    assert (doc["model"], doc["version"], doc["aliases"]) == (MODEL, "1", ["champion"])
    assert doc["training"] == {"training_run_id": TRAINING_RUN_ID, "mlflow_run_id": manifest["mlflow_run_id"],
                               "airflow": TRAINING_RUN, "model_path": tags["model_path"],
                               "training_cutoff": tags["training_cutoff"], "val_auc": float(tags["val_auc"])}
    assert tags["mlflow_training_run_id"] == manifest["mlflow_run_id"]
    assert (manifest["airflow_dag_id"], manifest["airflow_run_id"]) == (TRAINING_RUN["dag_id"], TRAINING_RUN["run_id"])
    training_tags = client.get_run(manifest["mlflow_run_id"]).data.tags
    assert training_tags["airflow_run_id"] == TRAINING_RUN["run_id"]

    dataset = doc["dataset"]
    assert dataset == {"version": tags["dataset_version"], "uri": tags["dataset_uri"],
                       "revision": tags["dataset_revision"], "revision_uri": tags["dataset_revision_uri"],
                       "digest": tags["dataset_digest"], "mlflow_run_id": chain["dataset_run"], "airflow": DATASET_RUN}
    assert dataset["version"] == "2026-11-23" and dataset["revision"].startswith("rev-")
    assert dataset["digest"] == manifest["dataset_digest"] == client.get_run(chain["dataset_run"]).data.tags["dataset_digest"]

    assert doc["registration"]["airflow"] == REGISTRATION_RUN  # the run that created it, not the later rerun

    [evaluation] = doc["evaluations"]
    run = client.get_run(tags["evaluation_run_id"])
    assert evaluation["run_id"] == tags["evaluation_run_id"] == chain["report"]["evaluation_run_id"]
    assert evaluation["roc_auc"] == run.data.metrics["candidate.roc_auc"]
    assert round(evaluation["roc_auc"], 6) == float(tags["eval_roc_auc"])
    assert evaluation["replay_window"] == run.data.tags["replay_window"] == tags["eval_replay_window"]
    assert evaluation["replay_uri"] == run.data.tags["replay_uri"]
    assert evaluation["baseline_version"] is None and evaluation["current"] is True
    assert evaluation["airflow_run_id"] == EVALUATION_RUN_ID
    assert evaluation["airflow"] == {"dag_id": names.DAG_OFFLINE_EVAL, "run_id": EVALUATION_RUN_ID}

    with history.connect(chain["dsn"]) as conn:
        rows = [d for d in history.decisions(conn, MODEL) if d["version"] == "1"]
        airflow = {r[0]: {"dag_id": r[1], "run_id": r[2]} for r in conn.execute(
            "SELECT decision_id, airflow_dag_id, airflow_run_id FROM ml.promotion_decisions").fetchall()}
        champions = history.champions(conn, MODEL)
    assert [d["outcome"] for d in doc["promotion"]] == ["promoted", "no_op"]
    assert [d["decision_id"] for d in doc["promotion"]] == [chain["promoted"]["decision_id"],
                                                            chain["rerun"]["decision_id"]]
    for mine, row in zip(doc["promotion"], rows, strict=True):
        assert {k: mine[k] for k in ("decision_id", "action", "outcome", "state", "reasons", "approver",
                                     "evaluation_run_id", "previous_champion")} == {
            k: row[k] for k in ("decision_id", "action", "outcome", "state", "reasons", "approver",
                                "evaluation_run_id", "previous_champion")}
        assert mine["airflow"] == airflow[row["decision_id"]] and mine["decided_at"]
    assert doc["promotion"][0]["airflow"] == PROMOTION_RUN and doc["promotion"][0]["state"] == "complete"
    assert doc["promotion"][0]["evaluation_run_id"] == evaluation["run_id"]
    assert [{k: h[k] for k in ("version", "previous_version", "change", "decision_id", "changed_at")}
            for h in doc["champion_history"]] == champions
    assert doc["promotion_status"] == tags["promotion_status"] == "champion" and doc["warnings"] == []

    assert version_lineage("champion") == doc  # an alias names the same version


@pytest.mark.e2e
def test_before_any_promotion_and_without_the_ids_the_fields_are_null_not_invented(chain):
    from include.lineage import version_lineage

    before = chain["before_promotion"]
    assert before["promotion"] == [] and before["champion_history"] == [] and before["evaluations"] == []

    tags = _tags(chain["client"], "2")
    old = version_lineage("2")
    assert old["training"]["training_run_id"] == tags["training_run_id"] == OLD_TRAINING_RUN_ID
    assert old["training"]["mlflow_run_id"] == tags["mlflow_training_run_id"]
    assert "airflow_training_run_id" not in tags and "airflow_registration_run_id" not in tags
    # its manifest names no Airflow run; the MLflow run it names does (it is version 1's): not taken for it
    assert old["training"]["airflow"] is None and old["registration"]["airflow"] is None
    assert old["dataset"]["revision"] == tags["dataset_revision"]
    assert old["dataset"]["mlflow_run_id"] == chain["dataset_run"]  # the same revision's run
    assert old["evaluations"] == [] and old["promotion"] == [] and old["champion_history"] == []

    unreachable = version_lineage("2", dsn="postgresql://postgres@127.0.0.1:1/nothing")
    assert unreachable["promotion"] is None and unreachable["champion_history"] is None
    assert "unreachable" in unreachable["warnings"][0]


@pytest.mark.e2e
def test_the_versions_trained_on_a_dataset_revision(chain):
    from include.lineage import versions_trained_on

    tags = _tags(chain["client"], "1")
    assert [v["version"] for v in versions_trained_on("2026-11-23")] == ["1", "2"]
    for revision in (tags["dataset_revision"], tags["dataset_revision_uri"], tags["dataset_digest"]):
        found = versions_trained_on("2026-11-23", revision)
        assert [v["version"] for v in found] == ["1", "2"]
    assert found[0]["training_run_id"] == TRAINING_RUN_ID and found[0]["dataset_digest"] == tags["dataset_digest"]
    assert versions_trained_on("2026-11-23", "rev-0000000000000000") == []
    assert versions_trained_on("2026-11-16") == []
    with pytest.raises(ValueError):
        versions_trained_on("last week")


@pytest.mark.e2e
def test_the_cli_prints_the_lineage_as_text_and_json(chain, capsys):
    from include.lineage import main, version_lineage

    assert main(["version", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{MODEL} version 1 (aliases: champion): champion")
    for expected in (TRAINING_RUN_ID, f"{names.DAG_DATASET} / {DATASET_RUN['run_id']}",
                     f"{names.DAG_TRAINING} / {TRAINING_RUN['run_id']}", REGISTRATION_RUN["run_id"],
                     EVALUATION_RUN_ID, PROMOTION_RUN["run_id"], "promoted", "no_op", chain["dataset_run"]):
        assert expected in text, expected

    assert main(["version", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == version_lineage("1")

    assert main(["version", "99"]) == 2
    assert "has no version 99" in capsys.readouterr().err

    revision = _tags(chain["client"], "1")["dataset_revision"]
    assert main(["dataset", "2026-11-23", "--revision", revision]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{MODEL} versions trained on dataset 2026-11-23 revision {revision}:"
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert main(["dataset", "2026-11-23", "--revision", "rev-0000000000000000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    result = subprocess.run([sys.executable, "-m", "include.lineage", "version", "1", "--json"], cwd=PROJECT_ROOT,
                            env={**os.environ, **chain["env"]}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == version_lineage("1")
