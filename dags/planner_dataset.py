"""
### planner_dataset: the weekly, leak-free training dataset

Builds dataset version `YYYY-MM-DD` (the window's end date) from the product events in
PostgreSQL (connection `events_db`): one row per plan whose **first** `plan_accepted` lies in
`[end_date - lookback_days, end_date)` (UTC), with the household, pantry and constraints
**as of the plan time** (never a later version), the previous accepted plan and the user's
edits up to the acceptance.

| task | what it does |
|---|---|
| `resolve_window` | turns the Params (or the run's data interval) into the window and version |
| `build_validate_publish` | extracts (pushed down to PostgreSQL, plan_id ranges in parallel), writes the files, validates them with Great Expectations and the bad-share limit, then publishes atomically (`_SUCCESS` last). A failed validation publishes nothing and is not retried. |
| `log_dataset` | logs the version to MLflow (experiment `planner_dataset`) and emits the `planner.dataset` Asset that schedules training |

Bad events (no plan_id, no meals, unknown recipe, no generation before the acceptance, no
household state at the plan time) go to `quarantine.parquet` with their reason; the run fails
only when their share exceeds `max_bad_share`. Re-running a version rewrites it identically.

Runs every Monday 00:00 UTC (the window ends at that Monday) and from the trigger form.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.core import names
from include.core.assets import DATASET_ASSET
from include.core.config import settings

DEFAULTS = settings()


@dag(
    dag_id=names.DAG_DATASET,
    schedule=DEFAULTS.dataset_schedule,
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "dataset", "weekly"],
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(minutes=2),
                  "retry_exponential_backoff": True},
    params={
        "end_date": Param(None, type=["null", "string"], format="date",
                          title="End date (exclusive)",
                          description="Version and exclusive end of the window, YYYY-MM-DD (UTC). "
                                      "Empty: the run's data interval end (the Monday of a scheduled run)."),
        "lookback_days": Param(DEFAULTS.lookback_days, type="integer", minimum=1, maximum=366,
                               title="Lookback (days)", description="Window length in days, ending at end_date."),
        "max_bad_share": Param(DEFAULTS.max_bad_share, type="number", minimum=0, maximum=1,
                               title="Max bad share",
                               description="Largest share of quarantined candidates that still publishes."),
    },
)
def planner_dataset():
    @task(retries=0)
    def resolve_window() -> dict:
        from include.dataset.pipeline import window_from_params

        context = get_current_context()
        params = context["params"]
        run = context["dag_run"]
        run_end = context.get("data_interval_end") or run.run_after
        return window_from_params(params["end_date"], params["lookback_days"], run_end).as_dict()

    @task(execution_timeout=timedelta(hours=1))
    def build_validate_publish(window: dict) -> dict:
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk.exceptions import AirflowFailException

        from include.core.config import settings
        from include.core.connections import libpq_uri_for_connection
        from include.dataset.pipeline import DatasetValidationError, build_validate_publish, window_from_params

        params = get_current_context()["params"]
        hook = PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID)
        dsn = libpq_uri_for_connection(hook.get_connection(names.EVENTS_CONN_ID))
        try:
            published = build_validate_publish(
                dsn, window_from_params(window["version"], window["lookback_days"], None),
                max_bad_share=float(params["max_bad_share"]), parts=settings().extract_parallelism)
        except DatasetValidationError as failure:
            raise AirflowFailException(str(failure)) from failure  # same data, same verdict: no retry
        return {k: published[k] for k in ("version", "uri", "rows", "counts")}

    @task(outlets=[DATASET_ASSET])
    def log_dataset(published: dict) -> str:
        from include.dataset.tracking import log_dataset_version

        run_id = log_dataset_version(published["uri"], published["counts"])
        get_current_context()["outlet_events"][DATASET_ASSET].extra = {
            "dataset_version": published["version"], "dataset_uri": published["uri"], "rows": published["rows"],
            "mlflow_run_id": run_id,
        }
        return run_id

    log_dataset(build_validate_publish(resolve_window()))


planner_dataset()
