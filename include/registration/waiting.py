"""How planner_registration waits for a model directory to be published: which provider sensor,
with which arguments. A plain function of the models root and the settings (no Airflow
running, nothing imported from it), so the choice is tested on its own; `build_sensor` makes
the operator in the DAG.

What is waited for is the published marker of docs/contracts.md, the last thing a publish writes:

- an `s3://` root: the Amazon provider's `S3KeySensor` on the model directory's `_PUBLISHED`
  pointer key (one PUT, written after the attempt it names is whole; a directory published
  before pointers existed: its `_SUCCESS`), over the Airflow AWS
  connection `PLANNER_AWS_CONN_ID` (default `aws_default`; a missing connection falls back to
  boto3's own chain: `AWS_*` env, instance role, `AWS_ENDPOINT_URL`); `verify_artifacts` then
  checks that the attempt the pointer names is complete and intact;
- a local root: the standard provider's `FileSensor` on `<model dir>/_SUCCESS` (the directory
  is renamed into place whole, `_SUCCESS` inside), as `PublishedMarkerSensor`: the literal
  absolute path, no `fs` connection needed;
- another object store (gs://, ...): a `PythonSensor` on `storage.is_complete` (reschedule only:
  there is no trigger for it).

`PLANNER_ARTIFACT_WAIT_MODE` picks how the sensor waits between checks: `reschedule` (default;
the task gives its worker slot back between pokes, every worker can run it) or `deferrable`
(one poke on the worker, then the provider's trigger, `S3KeyTrigger` / `FileTrigger`, polls in
the triggerer: no task slot at all while waiting; needs a running `airflow triggerer`).
`PLANNER_ARTIFACT_POKE_INTERVAL_S` and `PLANNER_ARTIFACT_WAIT_TIMEOUT_S` apply to both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from include.core import names, storage
from include.core.config import RegistrationSettings

TASK_ID = "wait_for_artifacts"
MARKER_XCOM_KEY = "published_marker"
# The marker resolve_model_path found for the model directory, rendered into the sensor's templated field.
MARKER_TEMPLATE = "{{ ti.xcom_pull(task_ids='resolve_model_path', key='%s') }}" % MARKER_XCOM_KEY

S3_SENSOR = "airflow.providers.amazon.aws.sensors.s3.S3KeySensor"
FILE_SENSOR = "include.registration.sensors.PublishedMarkerSensor"
PYTHON_SENSOR = "airflow.providers.standard.sensors.python.PythonSensor"


@dataclass(frozen=True)
class SensorSpec:
    """The sensor class (dotted path) and its constructor's keyword arguments."""
    sensor: str
    kwargs: dict = field(default_factory=dict)


def published_marker(model_uri: str) -> str:
    """The object or file whose existence means the model directory `model_uri` is published:
    `<dir>/_SUCCESS` on a local root; on object storage `<dir>/_PUBLISHED`, except for a directory
    published before pointers existed (`_SUCCESS` directly under it, no pointer), whose marker is
    that `_SUCCESS`."""
    if storage.is_local(model_uri):
        return storage.join(model_uri, names.SUCCESS_MARKER)
    fs, path = storage.filesystem(model_uri)
    if not fs.exists(storage.join(path, storage.POINTER)) and fs.isfile(storage.join(path, names.SUCCESS_MARKER)):
        return storage.join(model_uri, names.SUCCESS_MARKER)
    return storage.join(model_uri, storage.POINTER)


def marker_published(marker: str) -> bool:
    """The generic object-store check (no provider sensor fits): the marker's directory is complete."""
    return storage.is_complete(marker.rstrip("/").rsplit("/", 1)[0])


def mode_kwargs(wait_mode: str) -> dict:
    if wait_mode == "reschedule":
        return {"mode": "reschedule", "deferrable": False}
    if wait_mode == "deferrable":
        return {"mode": "poke", "deferrable": True}  # poke once on the worker, then the trigger
    raise ValueError(f"wait mode must be reschedule or deferrable, not {wait_mode!r}")


def artifact_wait_spec(models_root: str, settings: RegistrationSettings, marker: str = MARKER_TEMPLATE) -> SensorSpec:
    """The sensor that waits, in the settings' wait mode, for `marker` (`published_marker` of a model
    directory under `models_root`; by default the template of the one resolve_model_path found)."""
    common = {"task_id": TASK_ID, "poke_interval": settings.poke_interval_s, "timeout": settings.wait_timeout_s}
    mode = mode_kwargs(settings.wait_mode)
    if models_root.startswith("s3://"):
        return SensorSpec(S3_SENSOR, {**common, **mode, "bucket_key": marker,
                                      "bucket_name": None, "wildcard_match": False,
                                      "aws_conn_id": settings.aws_conn_id})
    if storage.is_local(models_root):
        return SensorSpec(FILE_SENSOR, {**common, **mode, "filepath": marker})
    if mode["deferrable"]:
        raise ValueError(f"PLANNER_ARTIFACT_WAIT_MODE=deferrable needs a trigger for {models_root.split('://')[0]}:// "
                         f"(there is one for s3:// and local roots); use reschedule")
    return SensorSpec(PYTHON_SENSOR, {**common, "mode": "reschedule", "python_callable": marker_published,
                                      "op_args": [marker]})


def build_sensor(spec: SensorSpec):
    """The sensor operator of `spec` (in a DAG context: a task of that DAG)."""
    from importlib import import_module

    module, _, name = spec.sensor.rpartition(".")
    return getattr(import_module(module), name)(**spec.kwargs)
