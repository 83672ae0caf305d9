"""
### planner_online_eval: decide a running canary from its logged events

Runs daily (07:00 UTC; `catchup=False`; `PLANNER_ONLINE_EVAL_SCHEDULE` overrides the cron, `none`: triggered
only, as `make lifecycle` does) and from the trigger form. While no canary runs (`ml.canaries`),
`look` says so and the run does nothing more. A canary is started by `planner_promotion` when the gate passes
under rollout `canary` (`include/promotion/policy.json`): the candidate serves a share of households
(`include.serving.assignment.in_canary`), the champion the rest, and every served plan carries its
arm's `context.policy_version_id`.

| task | what it does |
|---|---|
| `look` | builds the canary period's rows from the events database with the dataset code (up to midnight UTC of `as_of`, default today), splits them by the arm that served them (`context.policy_version_id`), counts per arm the share of proposed meals kept, the plan acceptance rate and edits per plan, and decides with `include.promotion.canary.decide` (mixture SPRT, always valid under daily looks; `min_days`, `min_exposure`, `max_days` of the canary's policy): `promote`, `continue` or `rollback`. The look goes to `ml.canary_looks` and to the canary's MLflow run (experiment `planner_online_eval`: metrics by day, `canary_looks.json`, `plots/arms_over_time.png`) |
| `route` | continue -> nothing more; promote -> `await_approval` (when `require_approval`) or `conclude`; rollback -> `conclude` |
| `await_approval` | Airflow's human-in-the-loop approval before the champion moves (Required actions in the UI) |
| `conclude` | promote: moves `champion` **compare-and-set** exactly as `planner_promotion` does (if the champion moved during the canary, nothing moves, the refusal is recorded and the canary is closed); the completion closes the canary in the same transaction. rollback: the canary is closed, the champion is unchanged. Redis and the version tags follow |
| `record_outcome` | when the approver said no: the canary is closed as rolled back, recorded `not_approved` |
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.config import apply_offline_env, settings
from include.promotion.approval import RecordedApprovalOperator

APPROVAL_TIMEOUT = timedelta(days=3)
DAG_ID = names.ONLINE_EVAL
SCHEDULE = settings().online_eval_schedule


def _events_dsn() -> str:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from include.core import names
    from include.core.connections import libpq_uri_for_connection

    hook = PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID)
    return libpq_uri_for_connection(hook.get_connection(names.EVENTS_CONN_ID))


def _airflow_ids(context) -> dict:
    return {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}


@dag(
    dag_id=DAG_ID,
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC") if SCHEDULE else None,
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "promotion", "canary", "mlflow"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 0},
    params={
        "as_of": Param(None, type=["null", "string"], format="date", title="As of",
                       description="Count events before midnight UTC of this day (YYYY-MM-DD); empty: today."),
        "require_approval": Param(None, type=["null", "boolean"], title="Require approval",
                                  description="Ask a person (Required actions) before a promoting canary moves the "
                                              "champion; empty: as the canary's start (asked when a person "
                                              "approved it). A rollback needs nobody: the champion stays."),
    },
)
def planner_online_eval():
    @task(retries=2, retry_delay=timedelta(seconds=30))
    def look() -> dict:
        from include.promotion.online import find_canary, look_end, promotion_needs_approval, take_look

        context = get_current_context()
        dsn = _events_dsn()
        canary = find_canary(dsn)
        if canary is None:
            print("no canary is running: nothing to look at")
            return {"action": "none", "canary": None}
        plan = take_look(dsn, canary, look_end(context["params"].get("as_of")), _airflow_ids(context))
        plan["require_approval"] = promotion_needs_approval(dsn, canary, context["params"].get("require_approval"))
        print(plan["summary"])
        return plan

    @task.branch
    def route(plan: dict) -> list[str]:
        if plan["action"] == "promote":
            return ["await_approval"] if plan.get("require_approval") else ["conclude"]
        return ["conclude"] if plan["action"] == "rollback" else []

    await_approval = RecordedApprovalOperator(
        task_id="await_approval",
        subject="Promote canary planner_acceptance version "
                "{{ ti.xcom_pull(task_ids='look')['canary']['canary_version'] }}?",
        body="{{ ti.xcom_pull(task_ids='look')['summary'] }}",
        defaults="Reject",
        response_timeout=APPROVAL_TIMEOUT,
    )

    @task(trigger_rule="none_failed_min_one_success", retries=2, retry_delay=timedelta(seconds=30))
    def conclude(plan: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.promotion.approval import approver_of
        from include.promotion.online import conclude

        context = get_current_context()
        approver = None
        if plan["action"] == "promote" and plan.get("require_approval"):
            approver = approver_of(context["ti"].xcom_pull(task_ids="await_approval", key="response"))
        result = conclude(_events_dsn(), plan, approver, _airflow_ids(context))
        print(f"{result['outcome']}: {result['reasons']} (decision {result['decision_id']}, champion "
              f"{result['champion']})")
        if result["outcome"] == "refused":
            raise AirflowFailException(result["reasons"][0])
        return result

    @task(trigger_rule="none_failed")
    def record_outcome(plan: dict) -> dict | None:
        """After `conclude`, or in its place: a promotion the approver refused closes the canary."""
        from include.promotion.approval import approver_of
        from include.promotion.online import roll_back

        context = get_current_context()
        concluded = context["ti"].xcom_pull(task_ids="conclude")
        if concluded or plan["action"] != "promote":
            return concluded
        approver = approver_of(context["ti"].xcom_pull(task_ids="await_approval", key="response"))
        result = roll_back(_events_dsn(), plan, "not_approved",
                           [f"promotion of the canary rejected by {approver or 'the approval timeout'}"],
                           approver, _airflow_ids(context))
        print(f"not_approved: the canary is closed, champion {result['champion']} unchanged")
        return result

    plan = look()
    concluded = conclude(plan)
    route(plan) >> [await_approval, concluded]
    await_approval >> concluded >> record_outcome(plan)


planner_online_eval()
