"""
### planner_registration: register a trained model in the MLflow Model Registry, once

Runs when training publishes a model directory (the `planner.model_artifacts` Asset) and from
the trigger form with a `model_path` (any run directory under the models root). Training
and registration are decoupled: registration takes minutes, is safe to rerun, and never
trains.

1. `resolve_model_path`: the path must lie inside the models root, a local directory or an
   object-storage prefix such as `s3://bucket/planner/models/planner_acceptance` (no `..`, no
   symlink escape, no other scheme or bucket), else the run fails here with the reason.
2. `wait_for_artifacts`: a provider sensor until the directory is published: on an s3:// root the
   Amazon provider's `S3KeySensor` on its `_PUBLISHED` pointer (AWS connection
   `PLANNER_AWS_CONN_ID`, default `aws_default`), on a local root the standard provider's
   `FileSensor` on its `_SUCCESS`. `PLANNER_ARTIFACT_WAIT_MODE`: `reschedule` (default; the worker
   slot is given back between checks) or `deferrable` (the triggerer polls; no slot held).
3. `verify_artifacts`: the attempt the pointer names is complete, every manifest file present
   with its sha256 (computed from the object store itself when the root is remote), the model,
   tokenizer and recipe catalogue load and score (from a scratch copy, removed afterwards); a
   bad directory fails with the list of what is wrong.
4. `register_model`: one version of `planner_acceptance` per training run, tagged with the
   training run id, dataset version, manifest digest and MLflow training run; alias
   `challenger`. A rerun, a retry or two runs at once leave exactly one version. Emits the
   `planner.registered_model` Asset.

**Fixed something? Rerun only the registration** (no training is paid for again):
Grid view -> the run -> `register_model` -> *Clear task* (downstream off); or
`airflow tasks clear planner_registration -t register_model -s <date> -e <date> -y`; or
`POST /api/v2/dags/planner_registration/clearTaskInstances` with `{"task_ids": ["register_model"],
"dag_run_id": "<run id>", "only_failed": false}`.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.assets import MODEL_ARTIFACTS_ASSET, REGISTERED_MODEL_ASSET
from include.core.config import apply_offline_env, registration_settings
from include.core.storage import models_root
from include.registration.waiting import MARKER_XCOM_KEY, artifact_wait_spec, build_sensor, published_marker

SETTINGS = registration_settings()


@dag(
    dag_id=names.DAG_REGISTRATION,
    schedule=[MODEL_ARTIFACTS_ASSET],
    start_date=datetime(2026, 1, 5),
    catchup=False,
    doc_md=__doc__,
    tags=["planner", "registration", "mlflow"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 0},
    params={
        "model_path": Param(None, type=["null", "string"], title="Model path",
                            description="A run directory under the models root: a path or URI under it (e.g. "
                                        "s3://bucket/planner/models/planner_acceptance/planner_acceptance-"
                                        "v20261123_000000), or relative to the root (planner_acceptance-"
                                        "v20261123_000000). Empty: the model the triggering training run "
                                        "published."),
    },
)
def planner_registration():
    @task
    def resolve_model_path() -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from include.core import storage
        from include.core.triggering import choose_event, event_extras, report_skipped
        from include.registration.artifacts import ModelPathError, resolve_model_uri

        context = get_current_context()
        given = context["params"]["model_path"]
        if not given:
            # Several models queued for one run (a backfill): the newest training run is registered here,
            # the others are recorded in XCom skipped_events (register them by triggering with model_path).
            extras = [e for e in event_extras(context.get("triggering_asset_events")) if e.get("model_path")]
            chosen, skipped = choose_event(extras, "training_run_id", label="training run")
            report_skipped(context["ti"], skipped)
            if chosen is None:
                raise AirflowFailException("no model_path: give one in the trigger form, or let training's "
                                           f"{names.ASSET_MODEL_ARTIFACTS} Asset event start this DAG")
            given = chosen["model_path"]
        try:
            uri = resolve_model_uri(given, storage.models_root(), must_exist=False)
        except ModelPathError as exc:
            raise AirflowFailException(str(exc)) from exc
        context["ti"].xcom_push(key=MARKER_XCOM_KEY, value=published_marker(uri))  # what wait_for_artifacts waits for
        return uri

    @task
    def verify_artifacts(model_path: str) -> dict:
        import json
        import tempfile
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowFailException

        from include.core import storage
        from include.registration.artifacts import (
            ModelPathError,
            artifact_problems,
            feature_code_problems,
            load_problems,
            resolve_model_uri,
        )

        try:  # again: the directory may have changed (a symlink swapped in) since the first check
            uri = resolve_model_uri(model_path, storage.models_root())
        except ModelPathError as exc:
            raise AirflowFailException(str(exc)) from exc
        problems = artifact_problems(Path(uri) if storage.is_local(uri) else uri)
        if not problems and storage.is_local(uri):
            problems = load_problems(Path(uri))
        elif not problems:
            with tempfile.TemporaryDirectory(prefix="planner-verify-") as scratch:
                problems = load_problems(storage.download_dir(uri, Path(scratch) / "model"))
        manifest = json.loads(storage.read_text(uri, names.MODEL_MANIFEST_FILE)) if not problems else {}
        if not problems:
            problems = feature_code_problems(manifest)
        if not problems and manifest.get("dataset_digest"):  # the rows it learned from must still be the ones
            problems = storage.verify_revision(manifest["dataset_revision_uri"], manifest["dataset_digest"])
        if problems:
            raise AirflowFailException(f"{uri} cannot be registered:\n- " + "\n- ".join(problems))
        return {"model_path": uri, "training_run_id": manifest["training_run_id"],
                "dataset_version": manifest.get("dataset_version")}

    @task(retries=SETTINGS.register_retries, retry_delay=timedelta(seconds=SETTINGS.register_retry_delay_s),
          retry_exponential_backoff=2.0, outlets=[REGISTERED_MODEL_ASSET])
    def register_model(verified: dict) -> dict:
        from include.registration.registry import register_uri

        context = get_current_context()
        registration = register_uri(verified["model_path"],
                                    airflow={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]})
        print(f"{'registered' if registration.created else 'already registered'}: "
              f"{registration.model_name} version {registration.version} ({registration.training_run_id}); "
              f"alias {names.CHALLENGER_ALIAS}")
        extra = {"model_name": registration.model_name, "model_version": registration.version,
                 "training_run_id": registration.training_run_id, "dataset_version": registration.dataset_version}
        context["outlet_events"][REGISTERED_MODEL_ASSET].extra = extra
        return registration.as_dict()

    resolved = resolve_model_path()
    verified = verify_artifacts(resolved)
    resolved >> build_sensor(artifact_wait_spec(models_root(), SETTINGS)) >> verified  # wait_for_artifacts
    register_model(verified)


planner_registration()
