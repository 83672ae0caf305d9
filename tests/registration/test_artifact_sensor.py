"""registration's wait for a published model directory: which provider sensor the models root and
the wait mode choose (a plain function), and those sensors against real storage: the Amazon
provider's S3KeySensor (poke, and its deferral to S3KeyTrigger, whose async poke runs against the
real S3 server) on the `_PUBLISHED` pointer, the standard provider's FileSensor on a local
`_SUCCESS` in reschedule mode, and whole DAG runs whose model is published while they wait."""
from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from include.core import names, storage
from include.core.config import registration_settings
from include.registration import waiting
from tests.registration.test_registration_dag import _registered_versions, parse_registration_dag


def _settings(monkeypatch, **env: str):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return registration_settings()


def test_the_models_root_and_the_wait_mode_choose_the_sensor(monkeypatch):
    settings = _settings(monkeypatch, PLANNER_ARTIFACT_POKE_INTERVAL_S="7", PLANNER_ARTIFACT_WAIT_TIMEOUT_S="70")
    assert settings.wait_mode == "reschedule" and settings.aws_conn_id == "aws_default"  # the defaults

    s3 = waiting.artifact_wait_spec("s3://bucket/planner/models/planner_acceptance", settings, marker="M/_PUBLISHED")
    assert s3 == waiting.SensorSpec(waiting.S3_SENSOR, {
        "task_id": "wait_for_artifacts", "poke_interval": 7, "timeout": 70, "mode": "reschedule",
        "deferrable": False, "bucket_key": "M/_PUBLISHED", "bucket_name": None, "wildcard_match": False,
        "aws_conn_id": "aws_default"})
    local = waiting.artifact_wait_spec("/data/planner/models/planner_acceptance", settings, marker="/m/_SUCCESS")
    assert local.sensor == waiting.FILE_SENSOR
    assert local.kwargs["filepath"] == "/m/_SUCCESS" and local.kwargs["mode"] == "reschedule"
    assert not local.kwargs["deferrable"]
    # By default the sensor reads the marker resolve_model_path found.
    assert waiting.artifact_wait_spec("s3://b/p", settings).kwargs["bucket_key"] == (
        "{{ ti.xcom_pull(task_ids='resolve_model_path', key='published_marker') }}")

    deferring = _settings(monkeypatch, PLANNER_ARTIFACT_WAIT_MODE="deferrable", PLANNER_AWS_CONN_ID="team_s3")
    s3 = waiting.artifact_wait_spec("s3://bucket/p", deferring, marker="M").kwargs
    assert (s3["mode"], s3["deferrable"], s3["aws_conn_id"]) == ("poke", True, "team_s3")
    assert waiting.artifact_wait_spec("/data", deferring, marker="/m").kwargs["deferrable"] is True
    with pytest.raises(ValueError, match="needs a trigger for gs://"):
        waiting.artifact_wait_spec("gs://bucket/p", deferring)
    assert waiting.artifact_wait_spec("gs://bucket/p", settings).sensor == waiting.PYTHON_SENSOR

    assert _settings(monkeypatch, PLANNER_AWS_CONN_ID="none").aws_conn_id is None  # boto3's own chain
    monkeypatch.setenv("PLANNER_ARTIFACT_WAIT_MODE", "poke")
    with pytest.raises(ValueError, match="reschedule or deferrable"):
        registration_settings()


def _small_model_dir(tmp_path: Path) -> Path:
    """A staging directory of a few files (the sensor waits for the marker, not for the content)."""
    staging = tmp_path / "staged"
    staging.mkdir()
    (staging / names.MODEL_MANIFEST_FILE).write_text("{}")
    (staging / "model.safetensors").write_bytes(b"\0" * 16)
    return staging


def _s3_sensor(monkeypatch, uri: str, **env: str):
    settings = _settings(monkeypatch, PLANNER_ARTIFACT_POKE_INTERVAL_S="1", **env)
    spec = waiting.artifact_wait_spec(storage.models_root(), settings, marker=waiting.published_marker(uri))
    return waiting.build_sensor(spec)


@pytest.mark.e2e
def test_the_s3_key_sensor_succeeds_once_the_pointer_exists_and_not_before(s3_root, monkeypatch, tmp_path):
    from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor

    from include.registration.artifacts import artifact_problems

    uri = storage.join(storage.models_root(), "planner_acceptance-v20261123_000001")
    sensor = _s3_sensor(monkeypatch, uri)
    assert isinstance(sensor, S3KeySensor) and sensor.mode == "reschedule" and not sensor.deferrable

    assert sensor.poke({}) is False  # nothing there
    fs, path = storage.filesystem(uri)
    attempt = "_attempt-20261123T000000-deadbeef"
    fs.pipe_file(storage.join(path, attempt, "model.safetensors"), b"\0")  # an upload under way: no pointer yet
    assert sensor.poke({}) is False

    fs.pipe_file(storage.join(path, storage.POINTER), b'{"attempt": "%s"}' % attempt.encode())
    assert sensor.poke({}) is True
    # The pointer names an attempt without _SUCCESS: verification, which follows the sensor, says so.
    assert artifact_problems(uri) == [f"{uri} is not published: its _PUBLISHED pointer names {attempt}, which has "
                                      f"no _SUCCESS (an incomplete or removed attempt)"]

    storage.publish_dir(_small_model_dir(tmp_path), uri)  # a complete attempt, the pointer switched to it
    assert sensor.poke({}) is True and storage.is_complete(uri)
    assert sensor.bucket_key == storage.join(uri, storage.POINTER)

    # A directory published before pointers existed (_SUCCESS directly under it) is waited for by that marker.
    legacy = storage.join(storage.models_root(), "planner_acceptance-v20261116_000001")
    fs.pipe_file(storage.join(storage.filesystem(legacy)[1], names.SUCCESS_MARKER), b"")
    assert waiting.published_marker(legacy) == storage.join(legacy, names.SUCCESS_MARKER)
    assert _s3_sensor(monkeypatch, legacy).poke({}) is True


@pytest.mark.e2e
def test_the_deferrable_s3_sensor_defers_to_the_s3_trigger_which_fires_once_the_pointer_exists(
        s3_root, monkeypatch, tmp_path):
    from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger
    from airflow.sdk.exceptions import TaskDeferred

    uri = storage.join(storage.models_root(), "planner_acceptance-v20261123_000002")
    sensor = _s3_sensor(monkeypatch, uri, PLANNER_ARTIFACT_WAIT_MODE="deferrable",
                        PLANNER_ARTIFACT_WAIT_TIMEOUT_S="120")
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})  # one poke on the worker, then the triggerer
    trigger = deferred.value.trigger
    assert isinstance(trigger, S3KeyTrigger) and deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=120)
    assert (trigger.bucket_key, trigger.aws_conn_id) == (storage.join(uri, storage.POINTER), "aws_default")
    trigger.poke_interval = 0.2

    async def fire():
        events = trigger.run()
        waiting_for = asyncio.ensure_future(anext(events))
        await asyncio.sleep(1.5)  # several async pokes against the real server: nothing yet
        assert not waiting_for.done()
        await asyncio.to_thread(storage.publish_dir, _small_model_dir(tmp_path), uri)
        return await asyncio.wait_for(waiting_for, timeout=15)

    event = asyncio.run(fire())
    assert event.payload == {"status": "success"}
    sensor.execute_complete({}, event.payload)  # the task resumes and succeeds


@pytest.mark.e2e
def test_the_local_sensor_reschedules_until_success_appears(storage_root, monkeypatch, tmp_path):
    from airflow.providers.standard.sensors.filesystem import FileSensor

    uri = storage.join(storage.models_root(), "planner_acceptance-v20261123_[000003]")  # a glob character is literal
    settings = _settings(monkeypatch, PLANNER_ARTIFACT_POKE_INTERVAL_S="1")
    marker = waiting.published_marker(uri)
    assert marker == storage.join(uri, names.SUCCESS_MARKER)
    sensor = waiting.build_sensor(waiting.artifact_wait_spec(storage.models_root(), settings, marker=marker))
    assert isinstance(sensor, FileSensor) and sensor.mode == "reschedule" and sensor.reschedule

    staging = _small_model_dir(tmp_path)
    Path(uri).mkdir(parents=True)
    (Path(uri) / "model.safetensors").write_bytes(b"\0")  # a directory with files, but not published
    assert sensor.poke({}) is False
    storage.publish_dir(staging, uri)  # renamed into place whole, _SUCCESS inside
    assert sensor.poke({}) is True


def _publish_after_the_first_poke(monkeypatch, sensor_class, publish) -> list[bool]:
    """The sensor's pokes, in order; the model is published right after the first one (which so
    finds nothing), so the run must wait, then see it: the way a training still uploading is met."""
    pokes, real = [], sensor_class.poke

    def poke(self, context):
        found = real(self, context)
        pokes.append(found)
        if len(pokes) == 1:
            publish()
        return found

    monkeypatch.setattr(sensor_class, "poke", poke)
    return pokes


@pytest.mark.e2e
def test_a_run_in_reschedule_mode_waits_for_the_local_model_then_registers_it(
        airflow_db, fresh_mlflow, storage_root, trained_model, monkeypatch, capfd):
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from include.registration.sensors import PublishedMarkerSensor

    dag = parse_registration_dag(monkeypatch, PLANNER_ARTIFACT_WAIT_TIMEOUT_S="60")
    uri = storage.join(storage.models_root(), trained_model.name)

    def publish():
        staging = storage.new_staging_dir(uri)
        shutil.copytree(trained_model, staging, dirs_exist_ok=True)
        storage.publish_dir(staging, uri)

    pokes = _publish_after_the_first_poke(monkeypatch, PublishedMarkerSensor, publish)
    run = dag.test(run_conf={"model_path": trained_model.name})

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    sensor_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "wait_for_artifacts")
    with create_session() as session:
        reschedules = session.scalar(select(func.count()).select_from(TaskReschedule)
                                     .where(TaskReschedule.ti_id == sensor_ti.id))
    assert pokes == [False, True] and reschedules == 1  # it gave its slot back while the model was not there
    assert [str(v.version) for v in _registered_versions()] == ["1"]


@pytest.mark.e2e
def test_a_deferrable_run_on_s3_waits_in_the_s3_trigger_then_registers(
        airflow_db, fresh_mlflow, s3_root, trained_model, monkeypatch):
    from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor

    from tests.registration.test_registration_dag import _publish_to_object_storage

    dag = parse_registration_dag(monkeypatch, PLANNER_ARTIFACT_WAIT_MODE="deferrable",
                                 PLANNER_ARTIFACT_WAIT_TIMEOUT_S="120")
    sensor = dag.get_task("wait_for_artifacts")
    assert isinstance(sensor, S3KeySensor) and sensor.deferrable
    uri = storage.join(storage.models_root(), trained_model.name)

    from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

    pokes = _publish_after_the_first_poke(monkeypatch, S3KeySensor,
                                          lambda: _publish_to_object_storage(trained_model))
    triggered = []
    real_run = S3KeyTrigger.run

    async def recording_run(self):  # the trigger, recorded (the log line saying so is not captured in every run)
        triggered.extend(self.bucket_key if isinstance(self.bucket_key, list) else [self.bucket_key])
        async for event in real_run(self):
            yield event

    monkeypatch.setattr(S3KeyTrigger, "run", recording_run)
    run = dag.test(run_conf={"model_path": uri})

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert pokes == [False]  # one poke on the worker, then it deferred:
    assert triggered and all(key.endswith("/_PUBLISHED") for key in triggered)  # dag.test ran the S3KeyTrigger
    [version] = _registered_versions()
    assert version.tags["model_path"] == uri
