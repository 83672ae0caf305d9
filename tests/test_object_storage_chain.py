"""Every phase on an s3:// storage root, against a real S3-protocol server: the dataset is
built, validated and published to the bucket and logged to MLflow; the trainer reads it from
there and publishes its model there; registration verifies and registers it from the bucket;
offline evaluation publishes its replay set there and scores the version. Nothing of it lands
under the local disk but removed scratch."""
from __future__ import annotations

import json

import pytest

from include.core import names, storage
from tests.conftest import isolated_planner


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_the_phases_run_on_an_s3_storage_root(s3_server, training_events_dsn, tmp_path):
    from include.dataset.pipeline import build_validate_publish
    from include.dataset.tracking import log_dataset_version
    from include.dataset.window import resolve_window
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan
    from include.registration.registry import register_uri
    from include.training import cli

    bucket = s3_server.create_bucket("planner-chain")
    with isolated_planner(tmp_path, training_events_dsn, PLANNER_STORAGE_ROOT=f"{bucket}/planner"):
        published = build_validate_publish(training_events_dsn, resolve_window("2026-11-23", 28), max_bad_share=0.05)
        assert published["uri"] == f"{bucket}/planner/datasets/planner/2026-11-23"
        assert storage.resolve(published["uri"]) == published["revision_uri"] == f"{published['uri']}/{published['revision']}"
        assert log_dataset_version(published["uri"], published["counts"])

        run_id = "planner_acceptance-v20261123_040506"
        assert cli.main(["--dataset-uri", published["uri"], "--output-root", storage.models_root(),
                         "--training-run-id", run_id, "--epochs", "1", "--max-rows", "400",
                         "--batch-size", "32"]) == 0
        model_uri = storage.join(storage.models_root(), run_id)
        manifest = json.loads(storage.read_text(model_uri, names.MODEL_MANIFEST_FILE))
        assert manifest["dataset_uri"] == published["uri"] and storage.is_complete(model_uri)

        registration = register_uri(model_uri)
        report = evaluate(training_events_dsn, (evaluation := plan(registration.version, "none")),
                          build_and_check_replay(training_events_dsn, evaluation), max_rows=200)
        assert report["counts"]["examples"] > 0
        assert report["replay"]["uri"].startswith(f"{bucket}/planner/replays/") and storage.is_complete(
            report["replay"]["uri"])
    assert not (tmp_path / "storage").exists()  # the local default root was never written


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_model_on_the_bucket_registers_into_an_mlflow_server_whose_artifacts_are_in_the_bucket(
        s3_server, trained_model, published_dataset, tmp_path, monkeypatch):
    """The team's registry: a tracking server on loopback with its artifact store in the bucket;
    the version loads back from there by its models:/ URI."""
    import shutil

    import mlflow
    import pyarrow.parquet as pq

    from include.registration.registry import register_uri
    from scripts.airflow_services import MlflowServer

    bucket = s3_server.create_bucket("planner-registry")
    server = MlflowServer(tmp_path / "mlflow", artifact_root=f"{bucket}/mlflow", env=s3_server.client_env()).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("PLANNER_STORAGE_ROOT", f"{bucket}/planner")
        uri = storage.join(storage.models_root(), trained_model.name)
        staging = storage.new_staging_dir(uri)
        shutil.copytree(trained_model, staging, dirs_exist_ok=True)
        storage.publish_dir(staging, uri)

        registration = register_uri(uri)
        assert registration.created and register_uri(uri).version == registration.version  # a rerun finds it

        logged = mlflow.MlflowClient().get_logged_model(registration.model_id)
        assert logged.artifact_location.startswith(f"{bucket}/mlflow/")
        rows = pq.read_table(f"{storage.resolve(published_dataset)}/{names.DATASET_TRAINING_FILE}").slice(0, 5).to_pandas()
        assert len(mlflow.pyfunc.load_model(f"models:/{names.REGISTERED_MODEL_NAME}/{registration.version}")
                   .predict(rows)) > 0
    finally:
        server.stop()
