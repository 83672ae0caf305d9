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
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from include.core import names
from include.core.config import PROJECT_ROOT
from include.core.hashing import file_sha256

log = logging.getLogger(__name__)

TAG_TRAINING_RUN_ID = "training_run_id"
TAG_MANIFEST_SHA256 = "manifest_sha256"
TAG_SERVING_PACKAGE = "serving_package"
LOGGED_MODEL_TYPE = "planner-acceptance-pyfunc"

# The files the registered model runs, copied into its own package `planner_serving_<digest>`.
SERVING_CODE = {"features.py": "include/core/features.py", "names.py": "include/core/names.py",
                "pyfunc_model.py": "include/registration/pyfunc_model.py"}
MODEL_LOADER = "planner_model.py"
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


def version_tags(manifest: dict, manifest_sha256: str, model_dir: Path | str) -> dict[str, str]:
    metrics = manifest.get("final_metrics") or {}
    tags = {TAG_TRAINING_RUN_ID: manifest["training_run_id"],
            "dataset_version": manifest.get("dataset_version", ""),
            "dataset_uri": manifest.get("dataset_uri", ""),
            "dataset_revision": manifest.get("dataset_revision", ""),
            "dataset_revision_uri": manifest.get("dataset_revision_uri", ""),
            "dataset_digest": manifest.get("dataset_digest", ""),
            "mlflow_training_run_id": manifest.get("mlflow_run_id", ""),
            TAG_MANIFEST_SHA256: manifest_sha256,
            "model_path": str(model_dir),
            "training_cutoff": manifest.get("training_cutoff", "")}
    for key in ("val_auc", "val_loss", "val_accuracy", "baseline_val_auc"):
        if key in metrics:
            tags[key] = f"{metrics[key]:.6f}"
    # The training's Airflow DAG run, when the trainer was told it (manifests from before have none).
    for key in ("airflow_dag_id", "airflow_run_id"):
        if manifest.get(key):
            tags[key.replace("airflow_", "airflow_training_")] = str(manifest[key])
    return tags


def registration_tags(airflow: dict | None) -> dict[str, str]:
    """`airflow_registration_dag_id` / `airflow_registration_run_id`: the DAG run that registered the
    version (none outside Airflow)."""
    airflow = airflow or {}
    return {f"airflow_registration_{key}": str(airflow[key]) for key in ("dag_id", "run_id") if airflow.get(key)}


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


def serving_package_name() -> str:
    """`planner_serving_` + a digest of the serving code: the same code, the same name; changed code, a
    new name, so versions registered with different feature code never import each other's modules."""
    import hashlib

    from include.registration.pyfunc_model import SERVING_PACKAGE_PREFIX

    digest = hashlib.sha256()
    for name, relative in sorted(SERVING_CODE.items()):
        digest.update(name.encode() + b"\0" + (PROJECT_ROOT / relative).read_bytes() + b"\0")
    return SERVING_PACKAGE_PREFIX + digest.hexdigest()[:16]


def _serving_code(workdir: Path, package: str) -> tuple[str, str]:
    """(the version's package dir for code_paths, the loader file for python_model)."""
    target = workdir / package
    target.mkdir(parents=True)
    (target / "__init__.py").write_text('"""Serving code of one planner_acceptance model version."""\n')
    for name, relative in SERVING_CODE.items():
        shutil.copy2(PROJECT_ROOT / relative, target / name)
    loader = workdir / MODEL_LOADER
    loader.write_text(f"import mlflow.models\n\nfrom {package}.pyfunc_model import PlannerAcceptanceModel\n\n"
                      "mlflow.models.set_model(PlannerAcceptanceModel())\n")
    return str(target), str(loader)


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


def run_in_store(client, run_id: str | None):
    """The MLflow run, or None when it is not in this tracking store (e.g. trained against another)."""
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
    # A logged model saved before versions carried their own code (no serving_package) is never reused.
    ready = [m for m in found if m.status == LoggedModelStatus.READY and m.tags.get(TAG_SERVING_PACKAGE)]
    return ready[0] if ready else None


def log_pyfunc(client, model_dir: Path, manifest: dict, manifest_sha256: str, run) -> str:
    """The id of a READY logged model holding this directory as a pyfunc model (reused if one exists)."""
    from mlflow.entities import LoggedModelStatus

    from include.core.tracking import ensure_experiment
    from include.registration.pyfunc_model import signature

    experiment_id = run.info.experiment_id if run else ensure_experiment(names.EXPERIMENT_TRAINING)
    training_run_id = manifest["training_run_id"]
    existing = _ready_logged_model(client, experiment_id, training_run_id, manifest_sha256)
    if existing is not None:
        return existing.model_id
    package = serving_package_name()
    logged = client.create_logged_model(
        experiment_id=experiment_id, name=names.REGISTERED_MODEL_NAME,
        source_run_id=run.info.run_id if run else None, model_type=LOGGED_MODEL_TYPE,
        tags={TAG_TRAINING_RUN_ID: training_run_id, TAG_MANIFEST_SHA256: manifest_sha256,
              TAG_SERVING_PACKAGE: package})
    try:
        with tempfile.TemporaryDirectory(prefix="planner-serving-code-") as workdir:
            package_dir, loader = _serving_code(Path(workdir), package)
            options = dict(python_model=loader, artifacts={"model": str(model_dir)},
                           code_paths=[package_dir], pip_requirements=_requirements(),
                           signature=signature(),
                           metadata={TAG_TRAINING_RUN_ID: training_run_id, TAG_SERVING_PACKAGE: package,
                                     "dataset_version": manifest.get("dataset_version", "")})
            location = logged.artifact_location
            sys.path.insert(0, workdir)  # MLflow runs the loader while saving: the package must import
            try:
                _save(options, location, logged, run)
            finally:
                sys.path.remove(workdir)
                for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                    del sys.modules[module]  # imported from the temporary copy: load from the model's own
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.warning("could not mark logged model %s FAILED", logged.model_id)
        raise
    return logged.model_id


def _save(options: dict, location: str, logged, run) -> None:
    """Straight into the logged model's location when it is local (one copy of the weights), else upload."""
    import mlflow
    from mlflow.models import Model
    from mlflow.utils.file_utils import local_file_uri_to_path

    if location.startswith("file:") or "://" not in location:
        mlflow.pyfunc.save_model(
            path=local_file_uri_to_path(location),
            mlflow_model=Model(artifact_path=location, model_uuid=logged.model_id,
                               run_id=run.info.run_id if run else None, model_id=logged.model_id),
            **options)
    else:
        mlflow.pyfunc.log_model(name=names.REGISTERED_MODEL_NAME, model_id=logged.model_id, **options)


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


def register_uri(model_uri: str, airflow: dict | None = None) -> Registration:
    """Register a verified model directory given by its URI: read in place when local, from a scratch
    copy (removed afterwards) when it lies on object storage."""
    from include.core import storage

    if storage.is_local(model_uri):
        return register(storage.local_path(model_uri), airflow=airflow)
    with tempfile.TemporaryDirectory(prefix="planner-register-") as scratch:
        return register(storage.download_dir(model_uri, Path(scratch) / "model"), model_uri=model_uri,
                        airflow=airflow)


def register(model_dir: Path, model_uri: str | None = None, airflow: dict | None = None) -> Registration:
    """Register a verified model directory; returns the one version of its training run. `model_uri`:
    where the directory was published, when `model_dir` is a copy of it. `airflow`: the registering DAG
    run's `{dag_id, run_id}`, tagged as `airflow_registration_dag_id` / `_run_id` on the version; a later
    run that finds the version already registered keeps the first run's ids."""
    from mlflow.exceptions import MlflowException

    manifest_path = model_dir / names.MODEL_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_sha256 = file_sha256(manifest_path)
    training_run_id = manifest["training_run_id"]
    tags = version_tags(manifest, manifest_sha256, model_uri or model_dir)
    registered_by = registration_tags(airflow)
    try:
        client = registry_client()
        _ensure_registered_model(client)
        existing = versions_of(client, training_run_id)
        created = False
        if not existing:
            run = run_in_store(client, manifest.get("mlflow_run_id"))
            model_id = log_pyfunc(client, model_dir, manifest, manifest_sha256, run)
            # Which code the version scores with: the package its logged model was saved with.
            package = client.get_logged_model(model_id).tags.get(TAG_SERVING_PACKAGE)
            mine = client.create_model_version(
                names.REGISTERED_MODEL_NAME, source=f"models:/{model_id}",
                run_id=run.info.run_id if run else None, model_id=model_id,
                tags={**tags, **registered_by, **({TAG_SERVING_PACKAGE: package} if package else {})},
                description=f"{training_run_id} trained on dataset {manifest.get('dataset_version')}")
            winner = _converge(client, versions_of(client, training_run_id))
            created = winner.version == mine.version
        else:
            winner = _converge(client, existing)
        _complete(client, winner, {**tags, **{k: v for k, v in registered_by.items() if k not in winner.tags}})
    except MlflowException as exc:
        from include.core.config import settings

        raise RegistryUnavailable(f"the MLflow registry at {settings().mlflow_tracking_uri} failed during "
                                  f"registration of {training_run_id}: {exc.message}") from exc
    return Registration(names.REGISTERED_MODEL_NAME, str(winner.version), training_run_id,
                        manifest.get("dataset_version", ""),
                        getattr(winner, "model_id", None) or str(winner.source).removeprefix("models:/"), created)
