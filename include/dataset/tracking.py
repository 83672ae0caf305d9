"""The dataset version in MLflow: one active run per version (experiment `planner_dataset`)."""
from __future__ import annotations

import warnings

from include.core import names
from include.core.hashing import content_digest
from include.core.tracking import dataset_source, ensure_experiment

TRACKED_FILES = [names.DATASET_SCHEMA_FILE, names.DATASET_SUMMARY_FILE, names.DATASET_VALIDATION_FILE,
                 names.DATASET_COUNTS_FILE]
METRICS = ["rows", "quarantined", "duplicate_deliveries", "duplicate_acceptances", "generated_never_accepted",
           "bad_share"]
INPUT_COLUMNS = ["plan_id", "household_id", "accepted_at", "workflow_type", "mode", "policy_version_id",
                 "household_size", "budget", "max_prep_time", "n_proposed_meals", "n_accepted_meals", "n_user_edits"]


def airflow_tags(airflow: dict | None) -> dict[str, str]:
    """`airflow_dag_id` / `airflow_run_id` tags of the DAG run a phase ran in (none outside Airflow)."""
    airflow = airflow or {}
    return {f"airflow_{key}": str(airflow[key]) for key in ("dag_id", "run_id") if airflow.get(key)}


def log_dataset_version(uri: str, counts: dict, airflow: dict | None = None, revision: str | None = None,
                        digest: str | None = None) -> str:
    """Log (or find) the MLflow run of a revision of the version; returns its run id.

    `revision`/`digest`: the revision the publish step produced (from its XCom), so that a cleared,
    re-run log step logs what its own DAG run published even after a newer revision took the
    pointer; without them, the revision the pointer names now.

    `airflow`: the `{dag_id, run_id}` of the DAG run that logs it, recorded as the run's tags
    `airflow_dag_id` and `airflow_run_id` (the lineage's dataset phase); a reused run keeps the
    ids of the DAG run that first logged it.

    One run per revision: rebuilding with the same content reuses its run; different content is a
    new revision with a run of its own, and the older revision's run stays (models trained on it
    point there). Versions published before revisions are identified by their rows' digest.
    """
    import mlflow

    from include.core import storage

    window = counts["window"]
    version = window["version"]
    if revision is None:
        pointer = storage.read_pointer(uri) or {}
        attempt = str(pointer.get("attempt", ""))
        revision = attempt if attempt.startswith(storage.REVISION_PREFIX) else ""
        digest = pointer.get("digest") if revision else None
    elif revision and not digest:
        raise ValueError(f"revision {revision} of {uri} given without its digest")
    content_uri = storage.join(uri, revision) if revision else uri  # what this run logs, whatever the pointer says now
    digest = digest or content_digest(uri, names.DATASET_TRAINING_FILE)
    experiment_id = ensure_experiment(names.EXPERIMENT_DATASET)
    client = mlflow.MlflowClient()
    previous = client.search_runs([experiment_id], filter_string=f"tags.dataset_version = '{version}' "
                                                                 f"AND tags.dataset_digest = '{digest}'")
    if previous:
        return previous[0].info.run_id

    if revision and not storage.is_complete(content_uri):
        raise ValueError(f"revision {content_uri} is not complete or no longer exists: nothing to log")
    fs, path = storage.published(content_uri)
    dataset = rows_input(f"{path.rstrip('/')}/{names.DATASET_TRAINING_FILE}", fs, uri, version, digest)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"dataset-{version}" + (f"-{revision}" if revision
                                                                                         else "")) as run:
        mlflow.set_tags({"dataset_version": version, "dataset_uri": uri, "dataset_digest": digest,
                         "dataset_revision": revision,
                         "dataset_revision_uri": storage.join(uri, revision) if revision else uri,
                         **airflow_tags(airflow)})
        mlflow.log_params({"end_date": version, "window_start": window["start"], "window_end": window["end"],
                           "lookback_days": window["lookback_days"], "max_bad_share": counts["max_bad_share"]})
        mlflow.log_metrics({name: float(counts[name]) for name in METRICS})
        mlflow.log_metrics({f"quarantined_{reason}": float(n) for reason, n in counts["quarantined_by_reason"].items()})
        for name in TRACKED_FILES:
            if fs.exists(f"{path.rstrip('/')}/{name}"):
                mlflow.log_text(storage.read_text(content_uri, name), name)
        mlflow.log_input(dataset, context="training")
        return run.info.run_id


def rows_input(rows_path: str, fs, uri: str, version: str, digest: str):
    """The rows as an MLflow input without reading them: a MetaDataset with the rows' source, the
    revision's content digest (the first 16 hex digits, as training logs the same input) and the
    schema of INPUT_COLUMNS as MLflow infers it from pandas, taken from the file's first batch only
    (the columns' types are the file's, the same in every row). The rows' count is the run's
    `rows` metric. Reading the whole table into pandas, as `mlflow.data.from_pandas` needs, would
    make this task's memory grow with the window."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.utils import _infer_schema

    from include.dataset.build import iter_tables

    head = next(iter_tables(rows_path, columns=INPUT_COLUMNS, filesystem=fs), None)
    if head is None:
        import pyarrow.parquet as pq

        with fs.open(rows_path, "rb") as handle:
            head = pq.read_schema(handle).empty_table().select(INPUT_COLUMNS)
    with warnings.catch_warnings():  # MLflow's hint about integer columns: ours have no missing values
        warnings.simplefilter("ignore", UserWarning)
        schema = _infer_schema(head.to_pandas())
    return MetaDataset(source=dataset_source(uri), name=f"{names.DATASET_NAME}/{version}", digest=digest[:16],
                       schema=schema)
