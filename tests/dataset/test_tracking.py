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
