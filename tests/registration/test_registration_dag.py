"""planner_registration as real DAG runs (dag.test) against a real MLflow registry: a good
model directory is registered once and the Asset says which version; every bad input is
rejected with its reason and registers nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from include.core import names, storage

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def parse_registration_dag(monkeypatch, **env: str):
    """The DAG parsed with a short sensor timeout, so a directory that never completes fails fast.
    The sensor follows the storage root (and wait mode) in the environment at parse time, as the
    dag-processor's does: set them first."""
    from airflow.dag_processing.dagbag import DagBag

    for key, value in {"PLANNER_ARTIFACT_POKE_INTERVAL_S": "1", "PLANNER_ARTIFACT_WAIT_TIMEOUT_S": "4",
                       **env}.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_registration.py"))
    assert bag.import_errors == {}
    return bag.dags[names.DAG_REGISTRATION]


@pytest.fixture()
def registration_dag(airflow_db, monkeypatch):
    """The DAG over the session's local storage root (a test's own `storage_root` does not change its sensor)."""
    return parse_registration_dag(monkeypatch)


@pytest.fixture()
def s3_registration_dag(airflow_db, s3_root, monkeypatch):
    """The DAG parsed over this test's s3:// root: its sensor is the Amazon provider's S3KeySensor."""
    return parse_registration_dag(monkeypatch)


def run_output(capfd) -> str:
    """What the run's tasks printed and logged (dag.test runs them in this process)."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def _registered_versions() -> list:
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient().search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'")


@pytest.mark.e2e
def test_a_model_directory_is_registered_once_and_the_asset_names_the_version(
        registration_dag, fresh_mlflow, model_in_storage, capfd):
    import mlflow
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run = registration_dag.test(run_conf={"model_path": model_in_storage.name})  # relative to the models root

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert [str(v.version) for v in _registered_versions()] == ["1"]
    with create_session() as session:
        event = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                .where(AssetModel.name == names.ASSET_REGISTERED_MODEL)
                                .order_by(AssetEvent.id.desc())).first()
        extra = dict(event.extra)
    manifest = json.loads((model_in_storage / names.MODEL_MANIFEST_FILE).read_text())
    assert extra == {"model_name": names.REGISTERED_MODEL_NAME, "model_version": "1",
                     "training_run_id": manifest["training_run_id"], "dataset_version": manifest["dataset_version"]}

    capfd.readouterr()
    again = registration_dag.test(run_conf={"model_path": str(model_in_storage)})

    assert again.state == "success"
    assert [str(v.version) for v in _registered_versions()] == ["1"]
    assert "already registered" in run_output(capfd)
    alias = mlflow.MlflowClient().get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS)
    assert str(alias.version) == "1"


def _tamper(directory: Path) -> None:
    (directory / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)


BAD_INPUTS = {
    "traversal": ("{root}/planner_acceptance-v20261123_010203/../../../etc", "resolve_model_path", "contains '..'"),
    "foreign_path": ("/etc", "resolve_model_path", "not inside the models root"),
    "other_scheme": ("s3://bucket/models/planner_acceptance/x", "resolve_model_path", "not other schemes"),
    "symlink_escape": ("escape", "resolve_model_path", "not inside the models root"),
    "missing_success": ("{model}", "wait_for_artifacts", "Sensor has timed out"),
    "empty_directory": ("{root}/planner_acceptance-v20261124_000000", "wait_for_artifacts", "Sensor has timed out"),
    "hash_differs": ("{model}", "verify_artifacts", "model.safetensors does not match its sha256"),
    "missing_tokenizer": ("{model}", "verify_artifacts", "tokenizer.json is missing"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_with_its_reason_and_nothing_is_registered(
        registration_dag, fresh_mlflow, model_in_storage, tmp_path, case, capfd):
    model_path, failing_task, reason = BAD_INPUTS[case]
    root = model_in_storage.parent
    if case == "missing_success":
        (model_in_storage / names.SUCCESS_MARKER).unlink()
    elif case == "empty_directory":
        (root / "planner_acceptance-v20261124_000000").mkdir()
    elif case == "hash_differs":
        _tamper(model_in_storage)
    elif case == "missing_tokenizer":
        (model_in_storage / "tokenizer.json").unlink()
    elif case == "symlink_escape":
        outside = tmp_path / "outside"
        shutil.copytree(model_in_storage, outside)
        (root / "escape").symlink_to(outside)

    run = registration_dag.test(run_conf={"model_path": model_path.format(root=root, model=model_in_storage)})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states[failing_task] == "failed", states
    assert states["register_model"] == "upstream_failed"
    assert reason in run_output(capfd)
    assert _registered_versions() == []


@pytest.mark.e2e
def test_without_a_path_or_an_asset_event_the_run_says_what_is_missing(registration_dag, fresh_mlflow, storage_root,
                                                                       capfd):
    run = registration_dag.test()

    assert run.state == "failed"
    assert "no model_path" in run_output(capfd)


def _publish_to_object_storage(model_dir: Path) -> str:
    """The trained directory published under the (s3://) models root, as a GPU pod's trainer does."""
    from include.core import storage

    uri = storage.join(storage.models_root(), model_dir.name)
    staging = storage.new_staging_dir(uri)
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    (staging / names.SUCCESS_MARKER).unlink(missing_ok=True)
    storage.publish_dir(staging, uri)
    return uri


@pytest.mark.e2e
def test_a_model_on_object_storage_is_verified_there_and_registered_from_a_removed_scratch_copy(
        s3_registration_dag, fresh_mlflow, s3_root, trained_model, published_dataset, capfd):
    import glob
    import tempfile

    import mlflow
    import pyarrow.parquet as pq
    from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor

    uri = _publish_to_object_storage(trained_model)
    assert uri.startswith("s3://")
    assert isinstance(s3_registration_dag.get_task("wait_for_artifacts"), S3KeySensor)

    run = s3_registration_dag.test(run_conf={"model_path": uri})

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    [version] = _registered_versions()
    assert version.tags["model_path"] == uri
    rows = pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).slice(0, 5).to_pandas()
    assert len(mlflow.pyfunc.load_model(f"models:/{names.REGISTERED_MODEL_NAME}/{version.version}").predict(rows))
    assert glob.glob(f"{tempfile.gettempdir()}/planner-verify-*") == []
    assert glob.glob(f"{tempfile.gettempdir()}/planner-register-*") == []


@pytest.mark.e2e
@pytest.mark.parametrize(("model_path", "reason"), [
    ("{root}/../../datasets/planner/2026-11-23", "contains '..'"),
    ("s3://another-bucket/planner/models/planner_acceptance/run", "not in the models root's bucket"),
    ("{root}-evil/planner_acceptance-v20261123_010203", "is not inside the models root"),
    ("gs://{bucket}/planner/models/planner_acceptance/run", "not other schemes"),
    ("/tmp/planner_acceptance-v20261123_010203", "is a local path"),
])
def test_on_object_storage_paths_outside_the_models_root_are_refused(
        s3_registration_dag, fresh_mlflow, s3_root, trained_model, model_path, reason, capfd):
    from include.core import storage

    _publish_to_object_storage(trained_model)
    bucket = s3_root.removeprefix("s3://").split("/")[0]
    given = model_path.format(root=storage.models_root(), bucket=bucket)

    run = s3_registration_dag.test(run_conf={"model_path": given})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["resolve_model_path"] == "failed", states
    assert reason in run_output(capfd)
    assert _registered_versions() == []


@pytest.mark.e2e
def test_a_model_whose_dataset_revision_changed_since_training_is_refused(
        registration_dag, fresh_mlflow, model_in_storage, published_dataset, tmp_path, capfd):
    from include.core import storage

    manifest_path = model_in_storage / names.MODEL_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    assert manifest["dataset_revision_uri"] == storage.resolve(published_dataset) and manifest["dataset_digest"]
    revision = Path(storage.resolve(published_dataset))
    copy = Path(storage.dataset_uri(revision.parent.name)) / revision.name  # under this test's datasets root
    shutil.copytree(revision, copy)
    with open(copy / names.DATASET_TRAINING_FILE, "ab") as rows:  # changed after the model was trained on it
        rows.write(b"\0")
    manifest_path.write_text(json.dumps({**manifest, "dataset_revision_uri": str(copy)}))

    run = registration_dag.test(run_conf={"model_path": model_in_storage.name})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["verify_artifacts"] == "failed", states
    output = run_output(capfd)
    assert "not the" in output and "it was trained on" in output
    assert _registered_versions() == []


@pytest.mark.e2e
def test_a_model_trained_on_other_feature_code_is_refused(registration_dag, fresh_mlflow, model_in_storage, capfd):
    """A training image or wheel behind (or ahead of) the deployment turned rows into other texts than the
    feature code registration packages: registering it would score wrongly without an error."""
    from include.core import features
    from include.core.hashing import file_sha256

    manifest_path = model_in_storage / names.MODEL_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    assert manifest["feature_code_sha256"] == file_sha256(Path(features.__file__))  # the trainer records its own
    for changed, reason in (({**manifest, "feature_code_sha256": "0" * 64}, "other feature code"),
                            ({k: v for k, v in manifest.items() if k != "feature_code_sha256"},
                             "does not say which feature code")):
        manifest_path.write_text(json.dumps(changed))

        run = registration_dag.test(run_conf={"model_path": model_in_storage.name})

        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "failed" and states["verify_artifacts"] == "failed", states
        assert reason in run_output(capfd)
        assert _registered_versions() == []


@pytest.mark.e2e
def test_two_queued_model_events_register_the_newest_and_record_the_other(
        registration_dag, fresh_mlflow, model_in_storage, queue_asset_events, capfd):
    from tests.conftest import copy_as_new_training_run

    older = copy_as_new_training_run(model_in_storage, model_in_storage.parent / "planner_acceptance-v20261116_010203")
    queue_asset_events(names.ASSET_MODEL_ARTIFACTS,
                       {"model_path": str(model_in_storage), "training_run_id": model_in_storage.name},
                       {"model_path": str(older), "training_run_id": older.name})  # the older one queued last

    run = registration_dag.test()

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    [version] = _registered_versions()
    assert version.tags["training_run_id"] == model_in_storage.name
    ti = next(ti for ti in run.get_task_instances() if ti.task_id == "resolve_model_path")
    assert ti.xcom_pull(task_ids="resolve_model_path", key="skipped_events") == [
        f"training run {older.name} superseded by {model_in_storage.name} (queued in the same run)"]
