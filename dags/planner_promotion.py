"""
### planner_promotion: gate the challenger, move the champion safely, record it, roll back

Runs when offline evaluation emits `planner.offline_eval`, and from the trigger form.

| task | what it does |
|---|---|
| `decide` | `promote`: takes the newest version of the queued evaluation events (the others are logged and kept in XCom `skipped_events`), reads the version's evaluation report from MLflow and applies the gate (`include/promotion/policy.json`, overridable by `DEPLOY_*` environment variables): absolute thresholds, beating the keep-rate floor, no regression against the champion overall or in any large slice, enough replayed rows. `rollback`: picks the champion the current one replaced (or the given former champion). |
| `route` | passed -> `await_approval` (when `require_approval`) or `apply`; anything else skips to `record_outcome` |
| rollout | a passed gate in a run the Asset starts follows `rollout` in `include/promotion/policy.json` (`canary`; `PLANNER_PROMOTION_ROLLOUT`): `apply` then starts a **canary** (the candidate serves a share of households, the champion stays champion, `planner_online_eval` decides from the logged events) instead of moving `champion`. A run from the trigger form promotes directly unless its `rollout` Param says `canary`. The first model (no champion) is always promoted directly. |
| `await_approval` | Airflow's human-in-the-loop approval (Required actions in the UI), with the gate's report in its body |
| `apply` | moves alias `champion` **compare-and-set** under a PostgreSQL lock (if the champion moved since the decision, nothing moves and the refusal is recorded), records the decision as pending, moves the alias, then completes the record with the deployment and history in one transaction (`ml` schema), tags the version and writes the deployment to Redis when `REDIS_URL` is set; a retry after a crash at any step finishes the same decision |
| `record_outcome` | after `apply`, or in its place: records what moved nothing: rejected (the version is tagged with the reasons), not approved, dry run, already champion (no-op), no rollback target |

A failed gate is an outcome, not a crash: the run succeeds and says why. Rerunning a promotion
that already happened records a no-op and changes nothing.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.assets import OFFLINE_EVAL_ASSET
from include.core.config import apply_offline_env
from include.promotion.approval import RecordedApprovalOperator

APPROVAL_TIMEOUT = timedelta(days=3)


def _events_dsn() -> str:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from include.core.connections import libpq_uri_for_connection

    hook = PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID)
    return libpq_uri_for_connection(hook.get_connection(names.EVENTS_CONN_ID))


def _rollout(context) -> str:
    """The `rollout` Param; `auto`: the policy's for a run the Asset (or a schedule) started, direct for a manual one."""
    chosen = context["params"].get("rollout") or "auto"
    if chosen != "auto":
        return chosen
    run_type = str(getattr(context["dag_run"].run_type, "value", context["dag_run"].run_type) or "")
    if run_type not in ("asset_triggered", "scheduled"):
        return "direct"
    from include.promotion.gate import load_policy

    return load_policy()["rollout"]["value"]


def _airflow_ids(context) -> dict:
    return {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}


@dag(
    dag_id=names.DAG_PROMOTION,
    schedule=[OFFLINE_EVAL_ASSET],
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "promotion", "mlflow"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 0},
    params={
        "model_version": Param(None, type=["null", "string"], pattern=r"^([0-9]+|[A-Za-z_][A-Za-z0-9_-]*)$",
                               title="Model version",
                               description="promote: the version (number or alias) to promote; empty: the one the "
                                           "triggering evaluation names, else alias `challenger`. rollback: a former "
                                           "champion to return to; empty: the champion the current one replaced."),
        "action": Param("promote", type="string", enum=["promote", "rollback"], title="Action"),
        "require_approval": Param(False, type="boolean", title="Require approval",
                                  description="Ask a person (Required actions) before the champion moves."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Decide and record the decision; move nothing."),
        "rollout": Param("auto", type="string", enum=["auto", "direct", "canary"], title="Rollout",
                         description="promote: direct = move the champion once the gate passes; canary = start a "
                                     "canary (planner_online_eval decides); auto = the policy's rollout (canary) for "
                                     "runs the Asset starts, direct for runs from this form."),
    },
)
def planner_promotion():
    @task(retries=2, retry_delay=timedelta(seconds=30))
    def decide() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.core.triggering import choose_event, event_extras, report_skipped
        from include.promotion.gate import PolicyError
        from include.promotion.pipeline import PromotionError, decide_promotion, decide_rollback

        context = get_current_context()
        params = context["params"]
        version, evaluation_run_id = params["model_version"], None
        if not version and params["action"] == "promote":
            chosen, skipped = choose_event(event_extras(context.get("triggering_asset_events")), "model_version",
                                           label="model version")
            report_skipped(context["ti"], skipped)
            if chosen:
                version, evaluation_run_id = chosen["model_version"], chosen.get("evaluation_run_id")
        try:
            if params["action"] == "rollback":
                plan = decide_rollback(_events_dsn(), version, params["require_approval"], params["dry_run"])
            else:
                plan = decide_promotion(_events_dsn(), version, evaluation_run_id, params["require_approval"],
                                        params["dry_run"], rollout=_rollout(context))
        except (PromotionError, PolicyError) as exc:
            raise AirflowFailException(str(exc)) from exc
        print(plan["summary"])
        print(f"decision: {plan['outcome']} -> {plan['next']}")
        return plan

    @task.branch
    def route(plan: dict) -> list[str]:
        """Nothing chosen (a verdict that moves nothing) skips straight to `record_outcome`."""
        return {"apply": ["apply"], "approval": ["await_approval"]}.get(plan["next"], [])

    await_approval = RecordedApprovalOperator(
        task_id="await_approval",
        subject="{% set plan = ti.xcom_pull(task_ids='decide') %}"
                "{{ 'Start a canary of' if plan['outcome'] == 'canary_started' else plan['action'] | capitalize }}"
                " planner_acceptance version {{ plan['model_version'] }}?",
        body="{{ ti.xcom_pull(task_ids='decide')['summary'] }}",
        defaults="Reject",
        response_timeout=APPROVAL_TIMEOUT,
    )

    @task(trigger_rule="none_failed_min_one_success", retries=2, retry_delay=timedelta(seconds=30))
    def apply(plan: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.promotion.approval import approver_of
        from include.promotion.pipeline import apply

        context = get_current_context()
        approver = None
        if plan["next"] == "approval":
            approver = approver_of(context["ti"].xcom_pull(task_ids="await_approval", key="response"))
        result = apply(_events_dsn(), plan, approver, _airflow_ids(context))
        if result["outcome"] == "refused":
            raise AirflowFailException(result["reasons"][0])
        if result["outcome"] == "canary_started":
            print(f"canary_started: {names.REGISTERED_MODEL_NAME} version {plan['model_version']} serves "
                  f"{plan['canary']['share']:.0%} of households, version {result['champion']} stays the "
                  f"{names.CHAMPION_ALIAS} (canary {result['canary_id']}, decision {result['decision_id']}, approver "
                  f"{approver or 'none needed'})")
        else:
            print(f"{result['outcome']}: {names.REGISTERED_MODEL_NAME} version {plan['model_version']} is the "
                  f"{names.CHAMPION_ALIAS} (decision {result['decision_id']}, approver {approver or 'none needed'})")
        return result

    @task(trigger_rule="none_failed")
    def record_outcome(plan: dict) -> dict:
        """Runs after `apply`, or in its place when it was skipped (a verdict, a rejection by the approver)."""
        from include.promotion.approval import approver_of
        from include.promotion.pipeline import record_outcome

        context = get_current_context()
        applied = context["ti"].xcom_pull(task_ids="apply")
        if applied:
            return applied
        outcome, reasons, approver = plan["outcome"], plan["decision"]["reasons"], None
        if plan["next"] == "approval":  # reached only when the approver said no
            approver = approver_of(context["ti"].xcom_pull(task_ids="await_approval", key="response"))
            outcome, reasons = "not_approved", [f"rejected by {approver or 'the approval timeout'}"]
        result = record_outcome(_events_dsn(), plan, outcome, reasons, approver, _airflow_ids(context))
        print(f"{outcome}: nothing moved (decision {result['decision_id']}); reasons: {reasons}")
        from include.alerts import notify_gate_rejected

        notify_gate_rejected(plan, result, context)  # an e-mail when the gate rejected it (alerts configured)
        return result

    plan = decide()
    applied = apply(plan)
    route(plan) >> [await_approval, applied]
    await_approval >> applied >> record_outcome(plan)


planner_promotion()
