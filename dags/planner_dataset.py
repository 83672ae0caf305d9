"""
### planner_dataset: the weekly, leak-free training dataset

Builds dataset version `YYYY-MM-DD` (the window's end date) from the product events in
PostgreSQL (connection `events_db`): one row per plan whose **first** `plan_accepted` lies in
`[end_date - lookback_days, end_date)` (UTC), with the household, pantry and constraints
**as of the plan time** (never a later version), the previous accepted plan and the user's
edits up to the acceptance.

| task | what it does |
|---|---|
| `resolve_window` | turns the Params (or the run's time and the lateness allowance) into the window and version |
| `plan_ranges` | splits the plan_ids into `extract_ranges` contiguous ranges (fixed boundaries by leading hex digits: the same for every run) |
| `extract_range` (mapped, one per range) | extracts its range (pushed down to PostgreSQL) into a part of its own staged on the storage root, `datasets/planner/_staging/<version>-<run token>/range-<i>-of-<n>/` (rows, quarantine, recipe ids, and a `_PART.json` marker last); a retry rewrites only its own part |
| `assemble_validate_publish` | checks it has exactly this run's parts, each finished by its successful attempt, assembles them in plan_id order into the version's files, validates them with Great Expectations and the bad-share limit (every file read back batch by batch: memory follows `PLANNER_DATASET_BATCH_ROWS`, not the window), then publishes it atomically as an immutable revision `rev-<digest>` of the version (`_SUCCESS` last; the same content again writes nothing, other content is a new revision beside the old ones, which never change), and removes the run's parts. A failed validation publishes nothing and is not retried; nothing is assembled unless every part succeeded. |
| `log_dataset` | logs the version to MLflow (experiment `planner_dataset`) and emits the `planner.dataset` Asset that schedules training |

Bad events (no plan_id, no meals, unknown recipe, no generation before the acceptance, no
household state at the plan time) go to `quarantine.parquet` with their reason; the run fails
only when their share exceeds `max_bad_share`. The number of ranges (`extract_ranges`) only
spreads the work: the published bytes, so the revision, are the same for any number. Re-running a version with the same events writes nothing (the same revision); other content becomes a new revision, and older revisions never change.

Runs weekly at Monday 00:00 UTC + `PLANNER_DATASET_LATENESS_HOURS` (default 6, so Mondays
06:00 UTC; 0..72; `PLANNER_DATASET_SCHEDULE` overrides the cron, `none`: triggered only), and
from the trigger form. The window still ends at that Monday 00:00 UTC and the version is that
Monday: the run only waits, so that events which reach PostgreSQL late (delayed uploads, a
lagging ingestion) are there before the extraction. A run without `end_date` (scheduled or
manual) builds the latest Monday whose allowance has passed at the run's time (`run_after`).

Trade-off: a longer allowance catches more late events but delays the dataset, and with it
training and promotion, by as much. An event that arrives later than the allowance misses that
week's version (it is not in the model trained on it); a rebuild of the version (trigger with
its `end_date`) picks it up. Training does not retrain on a rebuilt version older than the
newest one by itself (an older dataset never displaces a newer challenger): trigger
`planner_training` with that `dataset_version` when you want it.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.assets import DATASET_ASSET
from include.core.config import apply_offline_env, settings

DEFAULTS = settings()


@dag(
    dag_id=names.DAG_DATASET,
    schedule=CronTriggerTimetable(DEFAULTS.dataset_schedule, timezone="UTC") if DEFAULTS.dataset_schedule else None,
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "dataset", "weekly"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 2,
                  "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "end_date": Param(None, type=["null", "string"], format="date",
                          title="End date (exclusive)",
                          description="Version and exclusive end of the window, YYYY-MM-DD (UTC). Empty: the latest "
                                      "Monday whose lateness allowance has passed (a scheduled run's Monday)."),
        "lookback_days": Param(DEFAULTS.lookback_days, type="integer", minimum=1, maximum=366,
                               title="Lookback (days)", description="Window length in days, ending at end_date."),
        "max_bad_share": Param(DEFAULTS.max_bad_share, type="number", minimum=0, maximum=1,
                               title="Max bad share",
                               description="Largest share of quarantined candidates that still publishes."),
        "extract_ranges": Param(4, type="integer", minimum=1, maximum=64, title="Extraction ranges",
                                description="plan_id ranges extracted in parallel, one mapped task each (the "
                                            "published content is the same for any number)."),
    },
)
def planner_dataset():
    @task(retries=0)
    def resolve_window() -> dict:
        """run_after, not the wall clock: a cleared or retried run rebuilds the same version."""
        from include.dataset import window

        context = get_current_context()
        params = context["params"]
        return window.resolve_window(params["end_date"], int(params["lookback_days"]), context["dag_run"].run_after,
                                     settings().dataset_lateness_hours).as_dict()

    @task(retries=0)
    def plan_ranges(window: dict) -> list[dict]:
        """One spec per plan_id range, keyed by this DAG run (a cleared run reuses its own keys)."""
        from include.dataset.parts import plan_ranges
        from include.dataset.pipeline import window_from_params

        context = get_current_context()
        return plan_ranges(window_from_params(window["version"], window["lookback_days"], None),
                           int(context["params"]["extract_ranges"]),
                           run_key=f"{context['dag'].dag_id}/{context['run_id']}")

    @task(execution_timeout=timedelta(hours=1), map_index_template="{{ range_label }}")
    def extract_range(spec: dict) -> dict:
        from include.dataset.parts import extract_range, range_label

        context = get_current_context()
        context["range_label"] = range_label(spec)
        return extract_range(_events_dsn(), spec)

    @task(execution_timeout=timedelta(hours=1))
    def assemble_validate_publish(window: dict, specs: list[dict], extracted) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.dataset.parts import PartsError
        from include.dataset.pipeline import DatasetValidationError, assemble_validate_publish, window_from_params

        params = get_current_context()["params"]
        try:
            published = assemble_validate_publish(
                _events_dsn(), window_from_params(window["version"], window["lookback_days"], None), specs,
                list(extracted), max_bad_share=float(params["max_bad_share"]))
        except (DatasetValidationError, PartsError) as failure:
            raise AirflowFailException(str(failure)) from failure  # same data or parts, same verdict: no retry
        return {k: published[k] for k in ("version", "uri", "rows", "counts", "revision", "digest")}

    @task(outlets=[DATASET_ASSET])
    def log_dataset(published: dict) -> str:
        from include.core import storage
        from include.dataset.tracking import log_dataset_version
        from include.drift.tracking import log_drift

        context = get_current_context()
        # the revision this run published (its XCom), not whatever the pointer names now: a cleared
        # log step of an older run logs its own revision
        run_id = log_dataset_version(published["uri"], published["counts"],
                                     airflow={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
                                     revision=published["revision"], digest=published["digest"])
        revision_uri = (storage.join(published["uri"], published["revision"]) if published["revision"]
                        else published["uri"])
        log_drift(revision_uri, run_id=run_id, context=context)  # against the previous version; alerts over limits
        context["outlet_events"][DATASET_ASSET].extra = {
            "dataset_version": published["version"], "dataset_uri": published["uri"], "rows": published["rows"],
            "mlflow_run_id": run_id, "dataset_revision": published["revision"], "dataset_digest": published["digest"],
        }
        return run_id

    window = resolve_window()
    specs = plan_ranges(window)
    log_dataset(assemble_validate_publish(window, specs, extract_range.expand(spec=specs)))


def _events_dsn() -> str:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from include.core.connections import libpq_uri_for_connection

    return libpq_uri_for_connection(PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID).get_connection(
        names.EVENTS_CONN_ID))


planner_dataset()
