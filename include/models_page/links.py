"""Extra links on the lifecycle's task instances (the task's "Extra links" in the UI) to what the task recorded
in MLflow: the run it logged (dataset, training, evaluation) or the model version it acted on (registration,
evaluation, promotion).

The tasks are TaskFlow `@task`s, so the links are *global* operator extra links (the plugin's
`global_operator_extra_links`): Airflow offers them on every task and asks `get_link(operator, ti_key=...)`
on the api-server; each link answers only for the (DAG, task) pairs in `TARGETS` and "" (no link) for any
other task. The target comes from the XCom the task (or a task of the same DAG run) returned, never from a
guess: no XCom yet (the task has not finished), no link. The MLflow UI's address is
`include.core.config.mlflow_ui_url()` (PLANNER_MLFLOW_UI_URL, else an http(s) tracking URI), else the
local `mlflow ui` default.

Loaded by every Airflow process with the plugin: this module imports only attrs and Airflow's SDK base class;
the metadata database is read on first use, on the api-server.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import quote

import attrs
from airflow.sdk.bases.operatorlink import BaseOperatorLink

from include.core import names

RETURN_VALUE = "return_value"


@attrs.frozen
class Target:
    """Where a task's link target lies: the XCom `return_value` of `source_task` (None: the task itself) in
    the same DAG run, at `path` (keys into it; () for the value itself)."""
    path: tuple[str, ...] = ()
    source_task: str | None = None


# (dag_id, task_id) -> Target, per link
RUN_TARGETS: dict[tuple[str, str], Target] = {
    (names.DAG_DATASET, "log_dataset"): Target(),                                    # the dataset run's id
    **{(names.DAG_TRAINING, task): Target(("mlflow_run_id",), "publish_model_artifacts")
       for task in ("train_local", "train_kubernetes", "train_databricks", "publish_model_artifacts")},
    (names.DAG_OFFLINE_EVAL, "evaluate"): Target(("evaluation_run_id",)),
    (names.DAG_OFFLINE_EVAL, "tag_version"): Target(("evaluation_run_id",), "evaluate"),
}
VERSION_TARGETS: dict[tuple[str, str], Target] = {
    (names.DAG_REGISTRATION, "register_model"): Target(("version",)),
    (names.DAG_OFFLINE_EVAL, "evaluate"): Target(("model_version",)),
    (names.DAG_OFFLINE_EVAL, "tag_version"): Target(("model_version",), "evaluate"),
    **{(names.DAG_PROMOTION, task): Target(("model_version",), "decide")
       for task in ("decide", "await_approval", "apply", "record_outcome")},
}


def mlflow_ui_base() -> str:
    from include.core.config import MLFLOW_UI_LOCAL_DEFAULT, mlflow_ui_url

    return mlflow_ui_url() or MLFLOW_UI_LOCAL_DEFAULT


def read_xcom(dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = RETURN_VALUE) -> Any:
    """A task instance's XCom value from the metadata database (what Airflow's own XComOperatorLink reads), or
    None where there is none."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(XComModel.get_many(key=key, run_id=run_id, dag_ids=dag_id, task_ids=task_id,
                                                 map_indexes=map_index).with_only_columns(XComModel.value)).first()
    if row is None:
        return None
    value = row[0]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return value


def recorded(targets: dict[tuple[str, str], Target], ti_key, xcom=read_xcom) -> Any:
    """The recorded value the task's link points at, or None (not one of `targets`, nothing recorded)."""
    target = targets.get((ti_key.dag_id, ti_key.task_id))
    if target is None:
        return None
    if target.source_task is None:
        value = xcom(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
    else:
        value = xcom(ti_key.dag_id, ti_key.run_id, target.source_task)
    for key in target.path:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value in (None, "") else value


@attrs.define()
class MlflowRunLink(BaseOperatorLink):
    """The MLflow run the task logged: the dataset's run, the training run, the evaluation run."""
    name: ClassVar[str] = "MLflow run"
    targets: dict = attrs.field(factory=lambda: dict(RUN_TARGETS))

    def get_link(self, operator, *, ti_key) -> str:
        run_id = recorded(self.targets, ti_key)
        return f"{mlflow_ui_base()}/#/runs/{quote(str(run_id), safe='')}" if run_id else ""


@attrs.define()
class MlflowModelVersionLink(BaseOperatorLink):
    """The version of `planner_acceptance` the task registered, evaluated or promoted / rolled back."""
    name: ClassVar[str] = "MLflow model version"
    targets: dict = attrs.field(factory=lambda: dict(VERSION_TARGETS))

    def get_link(self, operator, *, ti_key) -> str:
        version = recorded(self.targets, ti_key)
        if not version or not str(version).isdigit():
            return ""
        return (f"{mlflow_ui_base()}/#/models/{quote(names.REGISTERED_MODEL_NAME, safe='')}"
                f"/versions/{quote(str(version), safe='')}")
