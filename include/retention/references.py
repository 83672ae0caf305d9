"""Every storage location something still needs, gathered before anything is planned:

- each registered version of `planner_acceptance`: its `model_path`, the dataset revision it was
  trained on (`dataset_revision_uri`; the whole `dataset_uri` for a version from before revisions),
  the `replay_uri` of its evaluation runs, and its training's `base_model` when that is a directory;
- each champion in `ml.model_version_history` and `ml.model_deployments` (the versions rollback may
  return to): through the registry, as above. A champion the registry no longer has cannot be mapped
  to its files, so the plan then removes no model directory and no dataset revision at all;
- each RUNNING MLflow run of training (its model directory, staging and checkpoints, by training run
  id, and the dataset it reads) and of offline evaluation (its replay set).

Any failure to reach MLflow or the events database raises: retention never plans on a partial view.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from include.core import names

log = logging.getLogger(__name__)

RUNNING = "RUNNING"
LOCATION_TAGS_OF_RUNS = ("replay_uri", "model_path")


@dataclass
class Referenced:
    locations: dict[str, str] = field(default_factory=dict)   # URI or path -> why it is kept
    open_training_runs: dict[str, str] = field(default_factory=dict)  # training_run_id -> why
    unresolved: list[str] = field(default_factory=list)       # what could not be mapped to locations

    def add(self, uri: str | None, why: str) -> None:
        if uri and str(uri).strip():
            self.locations.setdefault(str(uri).strip(), why)

    def add_dataset(self, tags: dict, why: str) -> None:
        """The revision a model was trained on; the whole version for one from before revisions."""
        if tags.get("dataset_revision_uri"):
            self.add(tags["dataset_revision_uri"], why)
        else:
            self.add(tags.get("dataset_uri"), why)

    def as_dict(self) -> dict:
        return {"locations": dict(sorted(self.locations.items())),
                "open_training_runs": dict(sorted(self.open_training_runs.items())),
                "unresolved": list(self.unresolved)}


def _pages(search, **kwargs) -> list:
    found, token = [], None
    while True:
        page = search(**kwargs, page_token=token) if token else search(**kwargs)
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _experiment_id(client, name: str) -> str | None:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def _is_directory_reference(value: str | None) -> bool:
    return bool(value) and value not in ("tiny",) and ("/" in value or "\\" in value)


def champion_versions(events_dsn: str, model_name: str = names.REGISTERED_MODEL_NAME) -> dict[str, str]:
    """{version: where it was found} of every champion, current or former, in the `ml` schema (empty
    when the schema does not exist yet: no promotion has run)."""
    from include.promotion.history import connect

    found: dict[str, str] = {}
    with connect(events_dsn, autocommit=True, connect_timeout=15) as conn:
        tables = conn.execute("SELECT to_regclass('ml.model_version_history') IS NOT NULL,"
                              " to_regclass('ml.model_deployments') IS NOT NULL").fetchone()
        if tables[0]:
            for version, previous in conn.execute("SELECT version, previous_version FROM ml.model_version_history"
                                                  " WHERE model_name = %s", (model_name,)).fetchall():
                found.setdefault(str(version), "a champion in ml.model_version_history")
                if previous:
                    found.setdefault(str(previous), "a former champion in ml.model_version_history")
        if tables[1]:
            for version, previous in conn.execute("SELECT version, previous_version FROM ml.model_deployments"
                                                  " WHERE model_name = %s", (model_name,)).fetchall():
                found[str(version)] = "the deployed champion (ml.model_deployments)"
                if previous:
                    found.setdefault(str(previous), "the previous deployment (ml.model_deployments)")
    return found


def referenced_locations(client=None, events_dsn: str | None = None) -> Referenced:
    """What must be kept (see the module's doc). `client`: an MlflowClient (default: the configured
    registry); `events_dsn`: the database of the `ml` schema (default: settings().events_dsn)."""
    from include.core.config import settings

    if client is None:
        from include.registration.registry import registry_client

        client = registry_client()
    events_dsn = events_dsn or settings().events_dsn
    referenced = Referenced()
    model = names.REGISTERED_MODEL_NAME

    versions = _pages(client.search_model_versions, filter_string=f"name = '{model}'")
    registered = {str(v.version): v for v in versions}
    for number, version in sorted(registered.items(), key=lambda item: int(item[0])):
        tags = version.tags or {}
        why = f"registered version {number}"
        referenced.add(tags.get("model_path"), f"model_path of {why}")
        referenced.add_dataset(tags, f"training dataset of {why}")
        if tags.get("mlflow_training_run_id"):
            run = _run_or_none(client, tags["mlflow_training_run_id"])
            base = run.data.params.get("base_model") if run is not None else None
            if _is_directory_reference(base):
                referenced.add(base, f"base_model of the training of {why}")

    for number, why in sorted(champion_versions(events_dsn, model).items()):
        if number not in registered:
            referenced.unresolved.append(f"version {number} ({why}) is no longer in the registry: its model "
                                         "directory and training dataset cannot be told apart from others")

    evaluation = _experiment_id(client, names.EXPERIMENT_OFFLINE_EVAL)
    if evaluation is not None:
        for run in _pages(client.search_runs, experiment_ids=[evaluation],
                          filter_string=f"tags.model_name = '{model}'"):
            tags = run.data.tags
            if tags.get("model_version") in registered:
                referenced.add(tags.get("replay_uri"), f"replay set of evaluation run {run.info.run_id} of "
                                                       f"registered version {tags['model_version']}")
            elif run.info.status == RUNNING:
                referenced.add(tags.get("replay_uri"), f"replay set of open evaluation run {run.info.run_id}")

    for experiment_name in (names.EXPERIMENT_TRAINING, names.EXPERIMENT_OFFLINE_EVAL, names.EXPERIMENT_DATASET):
        experiment = _experiment_id(client, experiment_name)
        if experiment is None:
            continue
        for run in _pages(client.search_runs, experiment_ids=[experiment],
                          filter_string=f"attributes.status = '{RUNNING}'"):
            tags, why = run.data.tags, f"open (RUNNING) {experiment_name} run {run.info.run_id}"
            if tags.get("training_run_id"):
                referenced.open_training_runs.setdefault(tags["training_run_id"], why)
            if experiment_name != names.EXPERIMENT_DATASET:  # a dataset run logs a version it has published
                referenced.add_dataset(tags, why)
            for key in LOCATION_TAGS_OF_RUNS:
                referenced.add(tags.get(key), why)
            base = run.data.params.get("base_model")
            if _is_directory_reference(base):
                referenced.add(base, f"base_model of {why}")
    return referenced


def _run_or_none(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None  # trained against another tracking store: its base_model is unknown here
