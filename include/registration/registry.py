"""Register a verified model directory in the MLflow Model Registry, exactly once per training run.

MLflow's `register_model` always creates a new version, so idempotency is ours:
- a version is found by its `training_run_id` tag before anything is written, so a rerun or a
  retry returns the existing version (and completes what an interrupted run left undone:
  missing tags, the alias);
- two registrations of the same run at once may both create a version; each then keeps the
  lowest-numbered one and deletes the others, so they converge on one version without a lock
  (this works against any registry backend);
- the pyfunc model is written once, straight into the logged model's artifact location when
  that is local (one copy of the weights, not MLflow's usual two), and a logged model whose
  upload broke off is marked FAILED, never registered.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from include.core import names
from include.core.config import PROJECT_ROOT
from include.core.hashing import file_sha256

log = logging.getLogger(__name__)

TAG_TRAINING_RUN_ID = "training_run_id"
TAG_MANIFEST_SHA256 = "manifest_sha256"
LOGGED_MODEL_TYPE = "planner-acceptance-pyfunc"

# The files the registered model needs to load without this repository (MLflow code_paths).
SERVING_CODE = ("include/__init__.py", "include/core/__init__.py", "include/core/features.py",
                "include/core/names.py", "include/registration/__init__.py", "include/registration/pyfunc_model.py")
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "pandas", "pyarrow", "safetensors")


class RegistryUnavailable(RuntimeError):
    """The registry could not be reached or refused a write; retrying later may succeed."""


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    training_run_id: str
    dataset_version: str
    model_id: str
    created: bool          # False: an earlier run had registered it (a rerun, a retry, a race lost)

    def as_dict(self) -> dict:
        return asdict(self)


def version_tags(manifest: dict, manifest_sha256: str, model_dir: Path) -> dict[str, str]:
    metrics = manifest.get("final_metrics") or {}
    tags = {TAG_TRAINING_RUN_ID: manifest["training_run_id"],
            "dataset_version": manifest.get("dataset_version", ""),
            "dataset_uri": manifest.get("dataset_uri", ""),
            "mlflow_training_run_id": manifest.get("mlflow_run_id", ""),
            TAG_MANIFEST_SHA256: manifest_sha256,
            "model_path": str(model_dir),
            "training_cutoff": manifest.get("training_cutoff", "")}
    for key in ("val_auc", "val_loss", "val_accuracy", "baseline_val_auc"):
        if key in metrics:
            tags[key] = f"{metrics[key]:.6f}"
    return tags


def registry_client():
    """An MLflow client on the configured tracking URI."""
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _serving_code(workdir: Path) -> str:
    """A copy of just the files the served model imports, laid out as the `include` package."""
    for relative in SERVING_CODE:
        target = workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / relative, target)
    return str(workdir / "include")


def versions_of(client, training_run_id: str) -> list:
    """Registered versions of this training run, lowest version number first."""
    found = client.search_model_versions(
        f"name = '{names.REGISTERED_MODEL_NAME}' and tags.{TAG_TRAINING_RUN_ID} = '{training_run_id}'")
    return sorted(found, key=lambda v: int(v.version))


def _ensure_registered_model(client) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(names.REGISTERED_MODEL_NAME)
    except MlflowException:
        try:
            client.create_registered_model(
                names.REGISTERED_MODEL_NAME,
                description="Planner acceptance classifier: per proposed meal, the probability it is kept.")
        except MlflowException:
            client.get_registered_model(names.REGISTERED_MODEL_NAME)  # a racing registration created it


def _training_run(client, run_id: str | None):
    """The training run in this tracking store, or None (trained against another store)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _ready_logged_model(client, experiment_id: str, training_run_id: str, manifest_sha256: str):
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.{TAG_TRAINING_RUN_ID} = '{training_run_id}' "
                      f"AND tags.{TAG_MANIFEST_SHA256} = '{manifest_sha256}'")
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return ready[0] if ready else None


def log_pyfunc(client, model_dir: Path, manifest: dict, manifest_sha256: str, run) -> str:
    """The id of a READY logged model holding this directory as a pyfunc model (reused if one exists)."""
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model
    from mlflow.utils.file_utils import local_file_uri_to_path

    from include.core.tracking import ensure_experiment
    from include.registration.pyfunc_model import MODEL_CODE, signature

    experiment_id = run.info.experiment_id if run else ensure_experiment(names.EXPERIMENT_TRAINING)
    training_run_id = manifest["training_run_id"]
    existing = _ready_logged_model(client, experiment_id, training_run_id, manifest_sha256)
    if existing is not None:
        return existing.model_id
    logged = client.create_logged_model(
        experiment_id=experiment_id, name=names.REGISTERED_MODEL_NAME,
        source_run_id=run.info.run_id if run else None, model_type=LOGGED_MODEL_TYPE,
        tags={TAG_TRAINING_RUN_ID: training_run_id, TAG_MANIFEST_SHA256: manifest_sha256})
    try:
        with tempfile.TemporaryDirectory(prefix="planner-serving-code-") as workdir:
            options = dict(python_model=str(MODEL_CODE), artifacts={"model": str(model_dir)},
                           code_paths=[_serving_code(Path(workdir))], pip_requirements=_requirements(),
                           signature=signature(),
                           metadata={TAG_TRAINING_RUN_ID: training_run_id,
                                     "dataset_version": manifest.get("dataset_version", "")})
            location = logged.artifact_location
            if location.startswith("file:") or "://" not in location:
                mlflow.pyfunc.save_model(
                    path=local_file_uri_to_path(location),
                    mlflow_model=Model(artifact_path=location, model_uuid=logged.model_id,
                                       run_id=run.info.run_id if run else None, model_id=logged.model_id),
                    **options)
            else:
                mlflow.pyfunc.log_model(name=names.REGISTERED_MODEL_NAME, model_id=logged.model_id, **options)
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.warning("could not mark logged model %s FAILED", logged.model_id)
        raise
    return logged.model_id


def _complete(client, version, tags: dict[str, str]) -> None:
    """Finish what a registration may have left undone: every tag, and the challenger alias
    unless a newer version holds it already."""
    from mlflow.exceptions import MlflowException

    for key, value in tags.items():
        if version.tags.get(key) != value:
            client.set_model_version_tag(names.REGISTERED_MODEL_NAME, version.version, key, value)
    try:
        current = client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS)
    except MlflowException:
        current = None
    if current is None or int(current.version) < int(version.version):
        client.set_registered_model_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS, version.version)


def _converge(client, versions: list):
    """Keep the lowest-numbered of a training run's versions; delete any other (a lost race)."""
    from mlflow.exceptions import MlflowException

    winner, extras = versions[0], versions[1:]
    for extra in extras:
        try:
            client.delete_model_version(names.REGISTERED_MODEL_NAME, extra.version)
            log.warning("deleted version %s: a duplicate of version %s (concurrent registration)",
                        extra.version, winner.version)
        except MlflowException:
            pass  # the other registration deleted it first
    return winner


def register(model_dir: Path) -> Registration:
    """Register a verified model directory; returns the one version of its training run."""
    from mlflow.exceptions import MlflowException

    manifest_path = model_dir / names.MODEL_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_sha256 = file_sha256(manifest_path)
    training_run_id = manifest["training_run_id"]
    tags = version_tags(manifest, manifest_sha256, model_dir)
    try:
        client = registry_client()
        _ensure_registered_model(client)
        existing = versions_of(client, training_run_id)
        created = False
        if not existing:
            run = _training_run(client, manifest.get("mlflow_run_id"))
            model_id = log_pyfunc(client, model_dir, manifest, manifest_sha256, run)
            mine = client.create_model_version(
                names.REGISTERED_MODEL_NAME, source=f"models:/{model_id}",
                run_id=run.info.run_id if run else None, tags=tags, model_id=model_id,
                description=f"{training_run_id} trained on dataset {manifest.get('dataset_version')}")
            winner = _converge(client, versions_of(client, training_run_id))
            created = winner.version == mine.version
        else:
            winner = _converge(client, existing)
        _complete(client, winner, tags)
    except MlflowException as exc:
        from include.core.config import settings

        raise RegistryUnavailable(f"the MLflow registry at {settings().mlflow_tracking_uri} failed during "
                                  f"registration of {training_run_id}: {exc.message}") from exc
    return Registration(names.REGISTERED_MODEL_NAME, str(winner.version), training_run_id,
                        manifest.get("dataset_version", ""),
                        getattr(winner, "model_id", None) or str(winner.source).removeprefix("models:/"), created)
