"""MLflow wiring shared by every phase: tracking URI from configuration, experiments whose
artifacts land under the configured artifact root on the embedded default."""
from __future__ import annotations

from pathlib import Path

from include.core.config import apply_offline_env, settings


def configure_mlflow() -> str:
    apply_offline_env()  # no MLflow telemetry from whatever process logs
    import mlflow

    uri = settings().mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it on first use (idempotent, safe against a racing creator)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure_mlflow()
    client = mlflow.MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    location = None
    if not settings().mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
        root = Path(settings().mlflow_artifact_root)
        root.mkdir(parents=True, exist_ok=True)
        location = (root / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return again.experiment_id


def dataset_source(uri: str):
    """An MLflow DatasetSource for a dataset location: MLflow's own for the schemes it knows
    (local files, s3, ...), else a plain URI reference."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    location = Path(uri).resolve().as_uri() if "://" not in uri else uri
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them local files
        warnings.simplefilter("ignore", UserWarning)
        try:
            return resolve_dataset_source(location)
        except Exception:  # noqa: BLE001 - MLflow raises its own exception type per resolver
            return HTTPDatasetSource(location)


def all_pages(fetch) -> list:
    """Every item of an MLflow search whose results come in pages: `fetch(page_token)` returns a
    PagedList (its `token` names the next page, None after the last)."""
    found, token = [], None
    while True:
        page = fetch(token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            return found


class ProjectCodeModel(ValueError):
    """A registered version whose model class is this deployment's own code, not a copy of its own."""


def refuse_project_code(model, uri: str):
    """`model` (a loaded pyfunc) unless its Python model is a class of this project's `include`
    package. A version registered before versions carried their own code (no `planner_serving_*`
    package) unpickles to the project's `include.registration.pyfunc_model`, so it would read today's
    `include/core/features.py`, whatever texts it was trained on, and score without an error but wrongly."""
    try:
        module = type(model.unwrap_python_model()).__module__
    except Exception:  # noqa: BLE001 - not a PythonModel flavor: nothing of ours to check
        return model
    if module == "include" or module.startswith("include."):
        raise ProjectCodeModel(
            f"{uri} was registered before model versions carried their own feature code (its class is "
            f"{module}, this deployment's): it would score with today's include/core/features.py, not the "
            "texts it was trained on. Retrain it and register the new model instead")
    return model


def load_registered_model(uri: str, dst_path: str | None = None):
    """A registered version's pyfunc model, refused when it would score with this deployment's code."""
    import mlflow.pyfunc

    configure_mlflow()  # a task is a fresh process: models:/ URIs resolve against the configured registry
    return refuse_project_code(mlflow.pyfunc.load_model(uri, dst_path=dst_path), uri)
