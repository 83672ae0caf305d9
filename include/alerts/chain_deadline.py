"""The weekly chain's deadline: an alert when no promotion decision has been made for a model trained on the week's
dataset by `PLANNER_CHAIN_DEADLINE_HOURS` (default 30) after the dataset's Monday 00:00 UTC.

The chain is five DAGs started by one another's Assets, so no single DAG run covers it. The watch DAG
`planner_chain_deadline` (built by `chain_deadline_dag()`) starts with the dataset's cron and waits, in reschedule
mode, until `chain_status` finds a promotion decision (any outcome: promoted, rejected, not approved) on a version
whose `dataset_version` tag is the week's Monday. Two ways to be told, `PLANNER_CHAIN_DEADLINE_MODE`:

- `sensor` (default): the check itself fails at the deadline (AirflowFailException), and its failure callback
  sends the "chain late" message (how far the chain got, where to look). Works on every Airflow 3.
- `deadline_alert`: Airflow's Deadline Alerts (`DeadlineAlert` on the watch DAG, reference the run's logical date,
  so the dataset's Monday + lateness, interval up to the deadline, an `AsyncCallback` in the triggerer). Deadline
  Alerts are **experimental in Airflow 3.3** (their API and the context handed to the callback may change); the
  run finishing (the decision found) clears the deadline. The check then skips itself at the deadline instead of
  failing, so one message is sent, not two.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from include.core import names

DAG_ID = "planner_chain_deadline"
MODES = ("sensor", "deadline_alert")
POKE_INTERVAL_S = 15 * 60


def mode() -> str:
    import os

    value = (os.environ.get("PLANNER_CHAIN_DEADLINE_MODE", "").strip() or "sensor").lower()
    if value not in MODES:
        raise ValueError(f"PLANNER_CHAIN_DEADLINE_MODE must be one of {MODES}, got {value!r}")
    return value


def week_of(run_time: datetime, lateness_hours: int) -> str:
    """The dataset version (its Monday) a scheduled run at `run_time` watches: the Monday whose allowance ended then."""
    moment = run_time.astimezone(UTC) - timedelta(hours=lateness_hours)
    day = moment.date()
    return (day - timedelta(days=day.weekday())).isoformat()


def deadline_of(dataset_version: str, hours: int) -> datetime:
    return datetime.combine(date.fromisoformat(dataset_version), datetime.min.time(), UTC) + timedelta(hours=hours)


def chain_status(dataset_version: str, dsn: str | None) -> dict:
    """How far the week's chain got: {decided, stage, versions (registered from the dataset), decisions}."""
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}' and "
                                         f"tags.dataset_version = '{dataset_version}'")
    versions = sorted({str(v.version) for v in found if (v.tags or {}).get("dataset_version") == dataset_version},
                      key=int)
    if not versions:
        experiment = client.get_experiment_by_name(names.EXPERIMENT_DATASET)
        logged = experiment is not None and client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.dataset_version = '{dataset_version}'", max_results=1)
        return {"decided": False, "versions": [], "decisions": [],
                "stage": ("dataset logged; no model registered from it yet (training or registration)" if logged
                          else "dataset not published or not logged yet (planner_dataset)")}
    decisions = []
    if dsn:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=10) as conn:
            if conn.execute("SELECT to_regclass('ml.promotion_decisions')").fetchone()[0] is not None:
                decisions = [{"decision_id": r[0], "version": r[1], "outcome": r[2]} for r in conn.execute(
                    "SELECT decision_id, version, outcome FROM ml.promotion_decisions WHERE model_name = %s"
                    " AND version = ANY(%s) AND action = 'promote' AND state = 'complete' ORDER BY decision_id",
                    (names.REGISTERED_MODEL_NAME, versions)).fetchall()]
    if decisions:
        last = decisions[-1]
        return {"decided": True, "versions": versions, "decisions": decisions,
                "stage": f"promotion decided: version {last['version']} {last['outcome']}"}
    evaluated = [v.version for v in found if (v.tags or {}).get("evaluation_run_id")]
    stage = (f"version {', '.join(map(str, evaluated))} evaluated; no promotion decision yet (planner_promotion)"
             if evaluated else f"version {', '.join(versions)} registered; not evaluated yet (planner_offline_eval)")
    return {"decided": False, "versions": versions, "decisions": [], "stage": stage}


def _events_dsn() -> str | None:
    try:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from include.core.connections import libpq_uri_for_connection

        return libpq_uri_for_connection(PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID).get_connection(
            names.EVENTS_CONN_ID))
    except Exception:  # noqa: BLE001 - no connection: the settings' DSN
        from include.core.config import settings

        return settings().events_dsn


def check(week: dict, now: datetime | None = None, dsn: str | None = None, watch_mode: str | None = None) -> bool:
    """One poke: True once the promotion is decided; at or after the deadline, fails (mode `sensor`: the failure
    callback sends the alert) or skips (mode `deadline_alert`: the Deadline Alert has sent it)."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    status = chain_status(week["dataset_version"], dsn if dsn is not None else _events_dsn())
    print(f"weekly chain of {week['dataset_version']}: {status['stage']}")
    if status["decided"]:
        return True
    if (now or datetime.now(UTC)) >= datetime.fromisoformat(week["deadline"]):
        why = f"weekly chain of dataset {week['dataset_version']} not finished by {week['deadline']}: {status['stage']}"
        if (watch_mode or mode()) == "deadline_alert":
            raise AirflowSkipException(why + " (the Deadline Alert reports it)")
        raise AirflowFailException(why)
    return False


def late_message(context) -> tuple[str, str]:
    """The failure callback's message for the watch: the chain's state now, else the plain failure message."""
    from include.alerts import messages

    try:
        week = context["ti"].xcom_pull(task_ids="resolve_week")
        status = chain_status(week["dataset_version"], _events_dsn())
        ids = {"dag_id": context["ti"].dag_id, "run_id": context["ti"].run_id}
        return messages.chain_late(week["dataset_version"], week["deadline"], status, ids)
    except Exception:  # noqa: BLE001 - whatever broke, the person still hears that the watch failed
        return messages.task_failed(context)


async def deadline_missed(context: dict | None = None, **_) -> None:
    """The Deadline Alert's callback (runs in the triggerer): the chain-late message for the run's week."""
    import asyncio

    from include.alerts import messages, send
    from include.core.config import alert_settings, settings

    run = (context or {}).get("dag_run") or {}
    logical = run.get("logical_date") or run.get("run_after")
    when = datetime.fromisoformat(str(logical).replace("Z", "+00:00")) if logical else datetime.now(UTC)
    version = (run.get("conf") or {}).get("dataset_version") or week_of(when, settings().dataset_lateness_hours)
    deadline = deadline_of(version, alert_settings().chain_deadline_hours).isoformat()
    status = await asyncio.to_thread(chain_status, version, _events_dsn())
    if status["decided"]:
        return
    subject, html = messages.chain_late(version, deadline, status, {"dag_id": run.get("dag_id"),
                                                                   "run_id": run.get("dag_run_id")})
    await asyncio.to_thread(send, subject, html)


def chain_deadline_dag():
    """The watch DAG (`planner_chain_deadline`): call it from a file under dags/."""
    from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

    from include.alerts import failure_notifiers, smtp_notifier
    from include.core.config import alert_settings, apply_offline_env, settings

    config, alerts, watch_mode = settings(), alert_settings(), mode()
    deadline = None
    if watch_mode == "deadline_alert" and alerts.enabled:
        from airflow.sdk.definitions.callback import AsyncCallback
        from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

        # the logical date of a run of the dataset's cron is the Monday + the lateness allowance
        deadline = DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
                                 interval=timedelta(hours=max(1, alerts.chain_deadline_hours
                                                                 - config.dataset_lateness_hours)),
                                 callback=AsyncCallback(deadline_missed), name="weekly chain deadline")
    late = smtp_notifier(builder=late_message)

    @dag(dag_id=DAG_ID, start_date=datetime(2026, 1, 5),
         # with alerts off there is no one to tell: no weekly run polls for nothing (still triggerable from the UI)
         schedule=(CronTriggerTimetable(config.dataset_schedule, timezone="UTC")
                   if config.dataset_schedule and alerts.enabled else None),
         catchup=False, max_active_runs=2, tags=["planner", "alerts", "weekly"], doc_md=__doc__, deadline=deadline,
         default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                       "on_failure_callback": failure_notifiers(), "retries": 0},
         params={"dataset_version": Param(None, type=["null", "string"], format="date", title="Dataset version",
                                          description="The week to watch (its Monday, YYYY-MM-DD); empty: the "
                                                      "Monday of the run, as planner_dataset builds it.")})
    def planner_chain_deadline():
        @task(retries=2, retry_delay=timedelta(minutes=1))
        def resolve_week() -> dict:
            context = get_current_context()
            version = context["params"]["dataset_version"] or week_of(context["dag_run"].run_after,
                                                                      config.dataset_lateness_hours)
            when = deadline_of(version, alert_settings().chain_deadline_hours)
            print(f"watching the chain of dataset {version}: promotion decided by {when.isoformat()}")
            return {"dataset_version": version, "deadline": when.isoformat()}

        @task.sensor(poke_interval=POKE_INTERVAL_S, timeout=8 * 24 * 3600, mode="reschedule",
                     on_failure_callback=[late] if late else [])
        def wait_for_promotion_decision(week: dict) -> bool:
            return check(week)

        wait_for_promotion_decision(resolve_week())

    return planner_chain_deadline()
