"""End to end: generator -> PostgreSQL -> a real run of `planner_dataset` (dag.test) -> the
published files, an MLflow run in a real backend store, and the Asset event for training."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from include.core import names, storage
from include.events import generate

pytestmark = pytest.mark.e2e

VERSION = "2026-11-23"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated(events_dsn):
    generate.generate_and_load(events_dsn, households=400, weeks=6, seed=11,
                               end=datetime(2026, 11, 23, tzinfo=UTC), dirty_share=0.02, reset=True)
    return events_dsn


@pytest.fixture(scope="module")
def dataset_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_dataset.py"))
    assert bag.import_errors == {}
    return bag.dags[names.DAG_DATASET]


def _asset_events() -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                 .where(AssetModel.name == names.ASSET_DATASET).order_by(AssetEvent.id))
        return [{"extra": e.extra, "source_dag_id": e.source_dag_id} for e in session.scalars(query)]


def _dataset_runs():
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(names.EXPERIMENT_DATASET)
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.dataset_version = '{VERSION}'")


def test_dataset_dag_publishes_logs_and_emits_the_asset(generated, dataset_dag):
    run = dataset_dag.test(run_conf={"end_date": VERSION, "lookback_days": 28})
    assert run.state == "success"

    uri = storage.dataset_uri(VERSION)
    content = storage.published_content(uri)
    path = storage.local_path(content["uri"])
    assert content["revision"] == storage.REVISION_PREFIX + content["digest"][:16]
    rows = pq.read_table(path / names.DATASET_TRAINING_FILE)
    counts = json.loads((path / names.DATASET_COUNTS_FILE).read_text())
    assert rows.num_rows == counts["rows"] > 1000
    assert rows["plan_id"].to_pylist() == sorted(rows["plan_id"].to_pylist())
    assert counts["quarantined"] > 0 and counts["bad_share"] < 0.05  # the generator's 2% dirt, caught
    summary = (path / names.DATASET_SUMMARY_FILE).read_text()
    assert summary.startswith(f"# Dataset: planner/{VERSION}") and f"**Rows**: {counts['rows']:,}" in summary

    client, runs = _dataset_runs()
    runs = [r for r in runs if r.data.tags["dataset_digest"] == content["digest"]]  # this database's revision
    assert len(runs) == 1
    mlflow_run = runs[0]
    assert mlflow_run.data.metrics["rows"] == counts["rows"]
    assert mlflow_run.data.params["lookback_days"] == "28"
    assert mlflow_run.data.tags["dataset_uri"] == uri
    assert mlflow_run.data.tags["dataset_digest"] == content["digest"]
    assert mlflow_run.data.tags["dataset_revision"] == content["revision"]
    # the log step compared it with the previous version (none here, or an earlier test's): drift is recorded
    assert mlflow_run.data.tags["drift_status"] in ("no_previous", "ok", "warn", "alert")
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {names.DATASET_SCHEMA_FILE, names.DATASET_SUMMARY_FILE, names.DATASET_VALIDATION_FILE} <= artifacts
    assert mlflow_run.inputs.dataset_inputs[0].dataset.name == f"planner/{VERSION}"

    events = _asset_events()
    assert events[-1]["source_dag_id"] == names.DAG_DATASET
    assert events[-1]["extra"] == {"dataset_version": VERSION, "dataset_uri": uri, "rows": counts["rows"],
                                   "mlflow_run_id": mlflow_run.info.run_id, "dataset_revision": content["revision"],
                                   "dataset_digest": content["digest"]}


def _tree(directory) -> dict:
    return {p.relative_to(directory).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.rglob("*")
            if p.is_file()}


def test_rerunning_the_version_with_the_same_content_is_a_no_op_with_one_mlflow_run(generated, dataset_dag):
    uri = storage.dataset_uri(VERSION)
    revision = storage.resolve(uri)
    before = _tree(storage.local_path(revision))
    _, runs_before = _dataset_runs()

    assert dataset_dag.test(run_conf={"end_date": VERSION}).state == "success"

    assert storage.resolve(uri) == revision and _tree(storage.local_path(revision)) == before  # not even rewritten
    assert [p.name for p in storage.local_path(uri).iterdir() if p.name.startswith(storage.REVISION_PREFIX)] == \
        [Path(revision).name]
    _, runs_after = _dataset_runs()
    assert [r.info.run_id for r in runs_after] == [r.info.run_id for r in runs_before]


def test_a_rebuild_with_other_content_is_a_new_revision_and_the_old_one_never_changes(generated, dataset_dag):
    uri = storage.dataset_uri(VERSION)
    old = storage.resolve(uri)
    old_files = _tree(storage.local_path(old))
    _, runs_before = _dataset_runs()

    assert dataset_dag.test(run_conf={"end_date": VERSION, "lookback_days": 21}).state == "success"

    new = storage.resolve(uri)
    assert new != old and _tree(storage.local_path(old)) == old_files  # trained models keep their exact rows
    assert json.loads((storage.local_path(new) / names.DATASET_COUNTS_FILE).read_text())["window"]["lookback_days"] == 21
    _, runs_after = _dataset_runs()
    assert {r.info.run_id for r in runs_before} < {r.info.run_id for r in runs_after}  # the older run stays
    assert _asset_events()[-1]["extra"]["dataset_revision"] == Path(new).name

    assert dataset_dag.test(run_conf={"end_date": VERSION, "lookback_days": 28}).state == "success"
    assert storage.resolve(uri) == old and _tree(storage.local_path(old)) == old_files  # back, nothing rewritten


def test_failed_validation_fails_the_run_and_publishes_nothing(generated, dataset_dag):
    assert dataset_dag.test(run_conf={"end_date": "2026-11-16", "max_bad_share": 0.0}).state == "failed"
    assert not storage.is_complete(storage.dataset_uri("2026-11-16"))
    staging = storage.local_path(storage.datasets_root()) / storage.STAGING_DIR
    kept = [p for p in staging.iterdir() if p.name.startswith("2026-11-16-")]
    assert kept and all((p / names.DATASET_VALIDATION_FILE).is_file() for p in kept)  # the build, for inspection
    assert not list(staging.glob("2026-11-16-*/range-*"))  # a failed validation is final: the parts are removed


def test_the_published_rows_carry_a_learnable_signal(generated):
    """The generator's true keep probability separates kept from replaced meals on the rows
    the dataset built (the ceiling a model could reach; far above chance)."""
    from sklearn.metrics import roc_auc_score

    from include.events.db import connect

    rows = pq.read_table(storage.local_path(storage.resolve(storage.dataset_uri(VERSION))) / names.DATASET_TRAINING_FILE,
                         columns=["plan_id", "proposed_plan", "target"]).to_pylist()
    with connect(generated) as conn:
        truth = {(str(p), str(r)): k for p, r, k in conn.execute("SELECT plan_id, recipe_id, p_keep FROM sim.keep_truth")}
    labels, scores = [], []
    for row in rows:
        accepted = {(m["day"], m["recipe_id"]) for m in json.loads(row["target"])["accepted_plan"]["meals"]}
        for meal in json.loads(row["proposed_plan"])["meals"]:
            labels.append((meal["day"], meal["recipe_id"]) in accepted)
            scores.append(truth[(row["plan_id"], meal["recipe_id"])])
    assert 0.2 < sum(labels) / len(labels) < 0.8
    assert roc_auc_score(labels, scores) > 0.75
