"""The dataset version in MLflow, from a local or an object-storage root (fsspec's memory
filesystem standing in for S3): one run per version, reused when the content is the same."""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import mlflow

from include.core import names, storage
from include.core.tracking import configure_mlflow
from include.dataset.tracking import log_dataset_version


def test_logging_a_version_on_object_storage_and_again_reuses_the_run(published_dataset):
    fs = fsspec.filesystem("memory")
    source = Path(storage.resolve(published_dataset))  # a copy in the layout from before revisions
    for file in source.iterdir():
        fs.put_file(str(file), f"/lake/datasets/planner/{Path(published_dataset).name}/{file.name}")
    uri = f"memory://lake/datasets/planner/{Path(published_dataset).name}"
    counts = json.loads((source / names.DATASET_COUNTS_FILE).read_text())
    counts["window"] = {**counts["window"], "version": "2031-01-06"}  # a version of its own in this store
    try:
        first = log_dataset_version(uri, counts)
        again = log_dataset_version(uri, counts)
    finally:
        fs.rm("/lake", recursive=True)

    assert first == again
    configure_mlflow()
    client = mlflow.MlflowClient()
    run = client.get_run(first)
    assert run.data.tags["dataset_uri"] == uri and run.data.metrics["rows"] == counts["rows"]
    assert {a.path for a in client.list_artifacts(first)} >= {names.DATASET_SCHEMA_FILE, names.DATASET_SUMMARY_FILE}


def test_a_cleared_log_step_logs_the_revision_its_run_published_not_the_newer_one(published_dataset, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    # given two revisions of one version, the newer one published last (the pointer names it)
    content = Path(storage.resolve(published_dataset))
    final = str(tmp_path / "datasets" / "planner" / "2031-02-03")
    first_staging, second_staging = tmp_path / "a", tmp_path / "b"
    shutil.copytree(content, first_staging, ignore=shutil.ignore_patterns(names.SUCCESS_MARKER))
    shutil.copytree(content, second_staging, ignore=shutil.ignore_patterns(names.SUCCESS_MARKER))
    rows = pq.read_table(second_staging / names.DATASET_TRAINING_FILE)
    pq.write_table(rows.slice(1), second_staging / names.DATASET_TRAINING_FILE)  # late events: other content
    older = storage.publish_revision(first_staging, final)
    newer = storage.publish_revision(second_staging, final)
    assert storage.published_content(final)["revision"] == newer["revision"] != older["revision"]
    counts = json.loads((content / names.DATASET_COUNTS_FILE).read_text())
    counts["window"] = {**counts["window"], "version": "2031-02-03"}

    # when the older run's log step is cleared and runs again with its own publish result
    older_run = log_dataset_version(final, counts, revision=older["revision"], digest=older["digest"])
    current_run = log_dataset_version(final, counts)  # no publish result: the pointer's revision

    # then each run records the revision it was given, and the older one is not logged as the newer
    configure_mlflow()
    client = mlflow.MlflowClient()
    assert client.get_run(older_run).data.tags["dataset_revision"] == older["revision"]
    assert client.get_run(older_run).data.tags["dataset_digest"] == older["digest"]
    assert client.get_run(current_run).data.tags["dataset_revision"] == newer["revision"]
    assert older_run != current_run
