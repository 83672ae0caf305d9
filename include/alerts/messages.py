"""What an alert says: what happened and where to look (the DAG, the run, the task, its log; the MLflow run or
model version). Pure functions of the Airflow context (or the records) -> (subject, HTML body); nothing is sent
here. Every body is escaped HTML, so an exception's text cannot inject markup."""
from __future__ import annotations

from html import escape
from urllib.parse import quote

from include.core import names

PREFIX = "[planner]"
EXCEPTION_CHARS = 2000


def airflow_ui() -> str:
    from include.core.config import alert_settings

    return alert_settings().airflow_ui_url


def run_url(dag_id: str, run_id: str) -> str:
    return f"{airflow_ui()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def task_log_url(dag_id: str, run_id: str, task_id: str, map_index: int | None = -1, try_number: int | None = None) -> str:
    """The task instance's page (its log), as Airflow's own `ti.log_url` builds it, on PLANNER_AIRFLOW_UI_URL."""
    mapped = f"/mapped/{map_index}" if map_index is not None and map_index >= 0 else ""
    tried = f"?try_number={try_number}" if try_number else ""
    return f"{run_url(dag_id, run_id)}/tasks/{quote(task_id, safe='')}{mapped}{tried}"


def mlflow_run_url(run_id: str | None) -> str | None:
    from include.models_page.links import mlflow_ui_base

    return f"{mlflow_ui_base()}/#/runs/{quote(run_id, safe='')}" if run_id else None


def model_version_url(version: str | None) -> str | None:
    from include.models_page.links import mlflow_ui_base

    if not version:
        return None
    return f"{mlflow_ui_base()}/#/models/{quote(names.REGISTERED_MODEL_NAME, safe='')}/versions/{quote(str(version))}"


def _html(title: str, facts: list[tuple[str, str | None]], links: list[tuple[str, str | None]],
          details: str | None = None) -> str:
    rows = "".join(f"<tr><th align='left'>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts
                   if v not in (None, ""))
    hrefs = "".join(f"<li>{escape(label)}: <a href='{escape(url)}'>{escape(url)}</a></li>" for label, url in links if url)
    body = f"<h3>{escape(title)}</h3><table>{rows}</table>"
    if details:
        body += f"<pre>{escape(details)}</pre>"
    if hrefs:
        body += f"<p>Where to look:</p><ul>{hrefs}</ul>"
    return f"<html><body>{body}</body></html>"


def _ids(context) -> dict:
    ti, dag_run = context.get("ti") or context.get("task_instance"), context.get("dag_run")
    dag = context.get("dag")
    return {"dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None),
            "run_id": getattr(ti, "run_id", None) or context.get("run_id") or getattr(dag_run, "run_id", None),
            "task_id": getattr(ti, "task_id", None), "map_index": getattr(ti, "map_index", -1),
            "try_number": getattr(ti, "try_number", None)}


def task_failed(context) -> tuple[str, str]:
    """A task failed for good (no retry left): which phase, DAG, run, task, try, the error, the log."""
    ids = _ids(context)
    error = context.get("exception")
    error_text = f"{type(error).__name__}: {error}"[:EXCEPTION_CHARS] if error is not None else None
    phase = (ids["dag_id"] or "").removeprefix("planner_")
    subject = f"{PREFIX} {ids['dag_id']}: task {ids['task_id']} failed (run {ids['run_id']})"
    links = [("the task's log", task_log_url(ids["dag_id"], ids["run_id"], ids["task_id"], ids["map_index"],
                                             ids["try_number"])) if ids["task_id"] else ("", None),
             ("the DAG run", run_url(ids["dag_id"], ids["run_id"]) if ids["run_id"] else None)]
    body = _html(f"The {phase} phase failed: task {ids['task_id']} of {ids['dag_id']}",
                 [("what happened", "the task failed and has no retry left; the phase's later tasks and the DAGs its "
                                    "Asset schedules do not run"),
                  ("DAG", ids["dag_id"]), ("run", ids["run_id"]), ("task", ids["task_id"]),
                  ("map index", ids["map_index"] if ids["map_index"] not in (None, -1) else None),
                  ("try", ids["try_number"]), ("error", error_text)], links)
    return subject, body


def gate_rejected(plan: dict, result: dict, airflow: dict | None) -> tuple[str, str]:
    """The promotion gate rejected a candidate: the version, the champion it was gated against, every reason."""
    version, reasons = plan.get("model_version"), list(result.get("reasons") or plan.get("decision", {}).get("reasons") or [])
    airflow = airflow or {}
    subject = f"{PREFIX} gate rejected {names.REGISTERED_MODEL_NAME} version {version}"
    facts = [("what happened", f"the promotion gate rejected version {version}; the champion did not move"),
             ("model", names.REGISTERED_MODEL_NAME), ("version", version),
             ("champion (unchanged)", plan.get("expected_champion") or "none"),
             ("decision", result.get("decision_id")), ("evaluation run", plan.get("evaluation_run_id")),
             ("DAG", airflow.get("dag_id")), ("run", airflow.get("run_id"))]
    links = [("the promotion run", run_url(airflow["dag_id"], airflow["run_id"]) if airflow.get("run_id") else None),
             ("the model version in MLflow", model_version_url(version)),
             ("the evaluation run in MLflow", mlflow_run_url(plan.get("evaluation_run_id")))]
    return subject, _html(f"Promotion gate rejected version {version}", facts, links,
                          "Reasons:\n" + "\n".join(f"- {r}" for r in reasons) if reasons else None)


def drift_over_threshold(report: dict, run_id: str | None, airflow: dict | None) -> tuple[str, str]:
    """Dataset drift over its limit: which inputs, their PSI and limits, against which version."""
    current, previous = report["current"], report["previous"]
    airflow = airflow or {}
    over = report["over_threshold"]
    subject = f"{PREFIX} dataset {current['version']} drifted from {previous['version']}: {', '.join(over)}"
    lines = [f"- {name}: PSI {report['features'][name]['psi']:.4f} >= alert limit {report['features'][name]['alert']}"
             for name in over]
    lines += [f"- {name}: PSI {report['features'][name]['psi']:.4f} (warn {report['features'][name]['warn']})"
              for name in report.get("warnings", [])]
    facts = [("what happened", f"dataset version {current['version']} differs from {previous['version']} beyond the "
                               "limits of include/drift/thresholds.json; training runs on it as usual"),
             ("dataset", f"{current['version']} {current.get('revision') or ''}".strip()),
             ("compared with", f"{previous['version']} {previous.get('revision') or ''}".strip()),
             ("over threshold", ", ".join(over)), ("MLflow run", run_id),
             ("DAG", airflow.get("dag_id")), ("run", airflow.get("run_id"))]
    links = [("the dataset run in MLflow (drift_report.json)", mlflow_run_url(run_id)),
             ("the dataset DAG run", run_url(airflow["dag_id"], airflow["run_id"]) if airflow.get("run_id") else None),
             ("the models page", f"{airflow_ui()}/planner/")]
    return subject, _html(f"Dataset drift: {current['version']} against {previous['version']}", facts, links,
                          "\n".join(lines))


def chain_late(dataset_version: str, deadline: str, found: dict, airflow: dict | None) -> tuple[str, str]:
    """The weekly chain has no promotion decision by its deadline: how far it got."""
    airflow = airflow or {}
    subject = f"{PREFIX} weekly chain of dataset {dataset_version} not finished by {deadline}"
    facts = [("what happened", f"no promotion decision for a model trained on dataset {dataset_version} by {deadline}"),
             ("dataset version", dataset_version), ("deadline", deadline),
             ("versions trained on it", ", ".join(found.get("versions", [])) or "none registered"),
             ("how far it got", found.get("stage")), ("DAG", airflow.get("dag_id")), ("run", airflow.get("run_id"))]
    links = [(f"the runs of {dag}", f"{airflow_ui()}/dags/{dag}/runs") for dag in
             (names.DAG_DATASET, names.DAG_TRAINING, names.DAG_REGISTRATION, names.DAG_OFFLINE_EVAL,
              names.DAG_PROMOTION)]
    links.append(("the watch run", run_url(airflow["dag_id"], airflow["run_id"]) if airflow.get("run_id") else None))
    return subject, _html(f"Weekly chain of {dataset_version} late", facts, links)
