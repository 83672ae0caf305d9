"""Alerts: the lifecycle tells a person when it needs one, through Airflow's notifiers (the SMTP provider's
`SmtpNotifier`), never a hand-written client. Configured by environment (include/core/config.py `alert_settings`):

| variable | meaning |
|---|---|
| `PLANNER_ALERT_EMAIL_TO` | recipients, comma-separated; unset: alerts are off (no notifier is attached, nothing is sent) |
| `PLANNER_ALERT_EMAIL_FROM` | sender; unset: the SMTP connection's `from_email` extra |
| `PLANNER_ALERT_SMTP_CONN_ID` | the Airflow SMTP connection (default `smtp_default`, e.g. `AIRFLOW_CONN_SMTP_DEFAULT`) |
| `PLANNER_AIRFLOW_UI_URL` | where the messages' links point (default `http://127.0.0.1:$AIRFLOW_PORT`, 8080) |
| `PLANNER_ALERT_ON_DRIFT` | `false`: no drift alerts (drift is still logged and shown) |
| `PLANNER_CHAIN_DEADLINE_HOURS` | the weekly chain's deadline after the dataset's Monday 00:00 UTC (default 30) |

When: a task fails for good (`on_failure_callback` of every DAG's `default_args`: `failure_notifiers()`); the
gate rejects a candidate (`notify_gate_rejected`, from promotion's `record_outcome`); a dataset drifts over its
limit (`notify_drift`, from `include.drift.tracking.log_drift`); the weekly chain has no promotion decision by
its deadline (`include/alerts/chain_deadline.py`). Importing this package imports no provider: the notifier is
built on first use (DAG files call `failure_notifiers()` at parse time, which with alerts off imports nothing).
"""
from __future__ import annotations

from include.alerts import messages


def _settings():
    from include.core.config import alert_settings

    return alert_settings()


def smtp_notifier(subject: str | None = None, html_content: str | None = None, builder=None):
    """An SmtpNotifier to the configured recipients, or None when alerts are off. `builder(context) ->
    (subject, html)` makes the message when it is sent (a failure callback's message depends on the context)."""
    config = _settings()
    if not config.enabled:
        return None
    from include.alerts.notifier import PlannerSmtpNotifier

    return PlannerSmtpNotifier(to=list(config.email_to), from_email=config.email_from,
                               smtp_conn_id=config.smtp_conn_id, subject=subject, html_content=html_content,
                               builder=builder)


def failure_notifiers() -> list:
    """The notifiers for `on_failure_callback` (a DAG's `default_args`): one e-mail per task that fails for good,
    saying which DAG, run and task, the error and the log's address; [] when alerts are off."""
    notifier = smtp_notifier(builder=messages.task_failed)
    return [notifier] if notifier is not None else []


def send(subject: str, html: str, context=None) -> bool:
    """Send one message now (from inside a task); False when alerts are off or it could not be sent. A failure
    to send is printed to the task log and does not fail the task: the lifecycle (the decision recorded, the
    dataset's Asset) never waits on the mail server."""
    notifier = smtp_notifier(subject=subject, html_content=html)
    if notifier is None:
        print(f"alert (alerts off, not sent): {subject}")
        return False
    try:
        notifier.notify(dict(context or {}))
    except Exception as exc:  # noqa: BLE001 - SMTP, connection lookup: reported, never raised into the phase
        print(f"ALERT NOT SENT ({type(exc).__name__}: {exc}): {subject}")
        return False
    print(f"alert sent to {', '.join(_settings().email_to)}: {subject}")
    return True


def _airflow(context) -> dict | None:
    if not context:
        return None
    ti = context.get("ti")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
    run_id = getattr(ti, "run_id", None) or context.get("run_id")
    return {"dag_id": dag_id, "run_id": run_id} if run_id else None


def notify_gate_rejected(plan: dict, result: dict, context=None) -> bool:
    """After promotion recorded its outcome: an alert when the gate rejected the candidate (nothing otherwise)."""
    if result.get("outcome") != "rejected" or plan.get("action", "promote") != "promote":
        return False
    return send(*messages.gate_rejected(plan, result, _airflow(context)), context=context)


def notify_drift(report: dict, run_id: str | None = None, context=None) -> bool:
    """A dataset version drifted over a limit of include/drift/thresholds.json."""
    if not report.get("over_threshold") or not _settings().drift_alerts:
        return False
    return send(*messages.drift_over_threshold(report, run_id, _airflow(context)), context=context)
