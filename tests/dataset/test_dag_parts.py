"""`planner_dataset` with its extraction mapped over plan_id ranges, in real runs (dag.test): the
mapped parts publish the in-process build's revision, on a local and on an s3:// storage root,
remove only their own staged parts; a failing part publishes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.core import names, storage

pytestmark = pytest.mark.e2e

VERSION = "2026-11-23"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_dataset.py"))
    assert bag.import_errors == {}
    return bag.dags[names.DAG_DATASET]


@pytest.fixture()
def in_process_digest(published_dataset) -> str:
    """The revision the in-process build (2 ranges on one worker) published from the same database."""
    return storage.published_content(published_dataset)["digest"]


@pytest.fixture()
def training_events(training_events_dsn, monkeypatch, fresh_mlflow) -> str:
    """The DAG's `events_db` connection on the generated training events (300 households, 6 weeks)."""
    from include.core.local_postgres import airflow_connection_json

    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", airflow_connection_json(training_events_dsn))
    return training_events_dsn


def _task_states(run) -> dict:
    return {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}


def _planned_parts(run) -> list[dict]:
    return next(ti for ti in run.get_task_instances() if ti.task_id == "plan_ranges").xcom_pull(task_ids="plan_ranges")


def test_the_mapped_ranges_publish_the_in_process_revision_and_remove_only_their_parts(
        in_process_digest, storage_root, training_events, dataset_dag):
    decoy = storage_root / "datasets" / "planner" / storage.STAGING_DIR / f"{VERSION}-0123456789ab"
    (decoy / "range-0000-of-0001").mkdir(parents=True)  # another run's parts: not this run's to remove
    (decoy / "range-0000-of-0001" / "_PART.json").write_text("{}")

    run = dataset_dag.test(run_conf={"end_date": VERSION, "lookback_days": 28, "extract_ranges": 3})

    assert run.state == "success"
    states = _task_states(run)
    assert {key: state for key, state in states.items() if key[0] == "extract_range"} == \
        {("extract_range", i): "success" for i in range(3)}
    labels = {ti.map_index: ti.rendered_map_index for ti in run.get_task_instances() if ti.task_id == "extract_range"}
    assert labels == {0: "1/3 [start, 55)", 1: "2/3 [55, aa)", 2: "3/3 [aa, end)"}
    content = storage.published_content(storage.dataset_uri(VERSION))
    assert content["digest"] == in_process_digest  # the same bytes as 2 ranges in one process
    counts = json.loads((storage.local_path(content["uri"]) / names.DATASET_COUNTS_FILE).read_text())
    assert counts["rows"] > 500
    assert storage.local_path(_planned_parts(run)[0]["parts_uri"]).parent == decoy.parent
    assert sorted(p.name for p in (decoy.parent).iterdir()) == [decoy.name]  # ours removed, theirs kept


def test_the_mapped_ranges_run_on_an_s3_storage_root(in_process_digest, s3_root, training_events, dataset_dag):
    run = dataset_dag.test(run_conf={"end_date": VERSION, "lookback_days": 28, "extract_ranges": 2})

    assert run.state == "success"
    uri = storage.dataset_uri(VERSION)
    assert uri.startswith("s3://")
    staged = _planned_parts(run)[0]["parts_uri"]  # the parts travelled through the bucket, not a local disk
    assert staged.startswith(f"{s3_root}/datasets/planner/{storage.STAGING_DIR}/{VERSION}-")
    content = storage.published_content(uri)
    assert content["digest"] == in_process_digest and content["uri"] == f"{uri}/{content['revision']}"
    fs, path = storage.filesystem(storage.join(storage.datasets_root(), storage.STAGING_DIR))
    assert not fs.exists(path) or fs.ls(path, detail=False) == []  # the staged parts were removed


def test_a_failing_part_publishes_nothing(storage_root, training_events, dataset_dag, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from include.dataset import build
    from include.dataset.window import partition_bounds

    real = build.extract_partition
    broken_low = partition_bounds(2)[1][0]

    def extract_partition(dsn, window, low, high, *args, **kwargs):
        if low == broken_low:  # the second range's worker fails for good (retries spent)
            raise AirflowFailException("injected: the database connection of this part broke")
        return real(dsn, window, low, high, *args, **kwargs)

    monkeypatch.setattr(build, "extract_partition", extract_partition)

    run = dataset_dag.test(run_conf={"end_date": VERSION, "lookback_days": 28, "extract_ranges": 2})

    assert run.state == "failed"
    states = _task_states(run)
    assert states[("extract_range", 0)] == "success" and states[("extract_range", 1)] == "failed"
    assert states[("assemble_validate_publish", -1)] == "upstream_failed"
    assert states[("log_dataset", -1)] == "upstream_failed"
    uri = storage.dataset_uri(VERSION)
    assert not storage.is_complete(uri)
    assert not storage.local_path(uri).exists()  # no revision, no pointer
