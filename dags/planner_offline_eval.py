"""
### planner_offline_eval: replay later logged events through challenger and champion

Runs when registration emits `planner.registered_model`, and from the trigger form. The
candidate (default: alias `challenger`) and the baseline (default: alias `champion`; none for
the very first model) are scored on **identical** replay rows that neither model saw.

| task | what it does |
|---|---|
| `plan_evaluation` | resolves the versions (of several queued registration events, the newest version; the others are logged and kept in XCom `skipped_events`) and the replay window (default: the held-out days of the candidate's training dataset, `[end_date - holdout_days, end_date)`) |
| `build_replay_set` | builds the window's rows with the dataset phase's own code, then fails the run if the window reaches into either model's training rows or any replayed `plan_id` was trained on (leakage) |
| `evaluate` | loads both versions through their `models:/` URIs, scores them batched next to a keep-rate-by-recipe floor (and the generator's oracle, where its truth table exists); logs metrics, a JSON and Markdown report and PNG plots (ROC, reliability, per-slice) to experiment `planner_offline_eval` |
| `tag_version` | tags the candidate version with its headline metrics and `evaluation_run_id`; emits the `planner.offline_eval` Asset that schedules promotion |

Metrics: accuracy, precision, recall, F1, ROC AUC, log loss, Brier, ECE, plan ranking (share
of plans whose kept meals all score above their replaced ones), single-plan latency p50/p95/p99
and batch throughput; quality per slice (workflow_type, mode, household size, policy version).
An empty window, a leaking window, a missing version or one that will not load fail the run
with the reason and leave the version's tags untouched. A rerun logs a new evaluation run and
re-points the tags to it.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.assets import OFFLINE_EVAL_ASSET, REGISTERED_MODEL_ASSET
from include.core.config import apply_offline_env


def _fail(error: Exception):
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


@dag(
    dag_id=names.DAG_OFFLINE_EVAL,
    schedule=[REGISTERED_MODEL_ASSET],
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "evaluation", "mlflow"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 1,
                  "retry_delay": timedelta(minutes=1)},
    params={
        "model_version": Param(None, type=["null", "string"], pattern=r"^([0-9]+|[A-Za-z_][A-Za-z0-9_-]*)$",
                               title="Model version",
                               description="A version number or alias of planner_acceptance. Empty: the version "
                                           "the triggering registration emitted, else alias `challenger`."),
        "baseline": Param(names.CHAMPION_ALIAS, type=["null", "string"],
                          pattern=r"^([0-9]+|[A-Za-z_][A-Za-z0-9_-]*)$", title="Baseline",
                          description="Version number or alias to compare against; `none` for no baseline. "
                                      "A missing `champion` alias (the first model) means no baseline."),
        "replay_start": Param(None, type=["null", "string"], format="date", title="Replay start",
                              description="YYYY-MM-DD (UTC). Empty: the candidate's training cutoff."),
        "replay_end": Param(None, type=["null", "string"], format="date", title="Replay end (exclusive)",
                            description="YYYY-MM-DD (UTC). Empty: the end of the candidate's training dataset."),
        "max_rows": Param(None, type=["null", "integer"], minimum=1, title="Max replay rows",
                          description="Evaluate only the first N replay rows (by plan_id). Empty: all."),
    },
)
def planner_offline_eval():
    @task(retries=0)
    def plan_evaluation() -> dict:
        from include.core.triggering import choose_event, event_extras, report_skipped
        from include.evaluation.pipeline import plan
        from include.evaluation.replay import EvaluationError

        context = get_current_context()
        params = context["params"]
        version = params["model_version"]
        if not version:
            chosen, skipped = choose_event(event_extras(context.get("triggering_asset_events")), "model_version",
                                           label="model version")
            report_skipped(context["ti"], skipped)
            version = chosen["model_version"] if chosen else None
        try:
            evaluation_plan = plan(version, params["baseline"], params["replay_start"], params["replay_end"])
        except EvaluationError as exc:
            raise _fail(exc) from exc
        champion = evaluation_plan["champion"]
        print(f"evaluating version {evaluation_plan['candidate']['version']} against "
              f"{champion['version'] if champion else 'no baseline'} on {evaluation_plan['window_version']}")
        return evaluation_plan

    @task(retries=0, execution_timeout=timedelta(hours=1))
    def build_replay_set(evaluation_plan: dict) -> dict:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from include.core.config import settings
        from include.core.connections import libpq_uri_for_connection
        from include.evaluation.pipeline import build_and_check_replay
        from include.evaluation.replay import EvaluationError

        hook = PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID)
        dsn = libpq_uri_for_connection(hook.get_connection(names.EVENTS_CONN_ID))
        try:
            replay = build_and_check_replay(dsn, evaluation_plan, parts=settings().extract_parallelism)
        except EvaluationError as exc:
            raise _fail(exc) from exc
        print(f"replay set: {replay['rows']} plans, no leakage")
        return replay

    @task(execution_timeout=timedelta(hours=2))
    def evaluate(evaluation_plan: dict, replay: dict) -> dict:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from include.core.connections import libpq_uri_for_connection
        from include.evaluation.pipeline import evaluate
        from include.evaluation.replay import EvaluationError

        context = get_current_context()
        hook = PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID)
        dsn = libpq_uri_for_connection(hook.get_connection(names.EVENTS_CONN_ID))
        try:
            report = evaluate(dsn, evaluation_plan, replay, context["params"]["max_rows"], context["run_id"])
        except EvaluationError as exc:
            raise _fail(exc) from exc
        candidate = report["models"]["candidate"]
        print(f"evaluation run {report['evaluation_run_id']}: version {report['model_version']} "
              f"roc_auc {candidate['roc_auc']:.4f} accuracy {candidate['accuracy']:.4f} "
              f"log_loss {candidate['log_loss']:.4f} p95 {candidate['latency_p95_ms']:.1f} ms")
        return {k: report[k] for k in ("evaluation_run_id", "model_version", "baseline_version")}

    @task(outlets=[OFFLINE_EVAL_ASSET])
    def tag_version(evaluated: dict) -> dict:
        from include.evaluation.pipeline import read_report, tag_version

        tags = tag_version(read_report(evaluated["evaluation_run_id"]))
        get_current_context()["outlet_events"][OFFLINE_EVAL_ASSET].extra = {
            "model_name": names.REGISTERED_MODEL_NAME, "model_version": evaluated["model_version"],
            "baseline_version": evaluated["baseline_version"], "evaluation_run_id": evaluated["evaluation_run_id"]}
        print(f"tagged version {evaluated['model_version']}: {tags}")
        return tags

    evaluation_plan = plan_evaluation()
    tag_version(evaluate(evaluation_plan, build_replay_set(evaluation_plan)))


planner_offline_eval()
