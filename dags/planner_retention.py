"""
### planner_retention: delete what no one can need any more, and nothing else

Weekly (Sundays 03:00 UTC, `catchup=False`, away from the Monday dataset build) and from the
trigger form. The policy is `include/retention/policy.json`: per kind, how many days after its
last modification an unneeded item may go.

| kind | what | default age |
|---|---|---|
| `staging`, `replaced` | local `_staging/<name>-<token>/` and `_staging/replaced-...` left by failed or interrupted writes | 2 days |
| `superseded_attempt` | object storage `<version>/_attempt-*/` that `_PUBLISHED` does not name | 7 days |
| `dataset_revision` | `datasets/planner/<version>/rev-*/` that `_PUBLISHED` does not name | 90 days |
| `model_dir` | `models/planner_acceptance/<training run id>/` | 30 days |
| `replay_set` | `replays/planner/<start>_<end>/` | 30 days |
| `checkpoint` | `checkpoints/<training run id>/` of runs no longer RUNNING (none written yet) | 14 days |

**Never removed**: anything a registered version of `planner_acceptance` points to (`model_path`,
`dataset_revision_uri`, or the whole `dataset_uri` for a model from before revisions, the replay sets
of its evaluation runs, a local `base_model`); any champion in `ml.model_version_history` or
`ml.model_deployments` (a champion the registry has lost holds back every model directory and
dataset revision, and the log says which); what a RUNNING MLflow run of training or evaluation uses;
the content a version's `_PUBLISHED` pointer names; and anything whose name is not one this project
writes (a file beside the versions, a directory of another name, a symbolic link).

Tasks:

1. `plan`: gathers the references (MLflow registry and runs; the `events_db` connection for the
   `ml` schema), lists the storage root and logs every item it would remove with its kind, age and
   reason, then every candidate it keeps and why. The XCom holds the plan.
2. `apply`: in a dry run, lists the plan and removes nothing. Otherwise it plans again and removes
   only what both plans agree on (so a version registered, or a pointer switched back, in between is
   safe), re-reads each version's pointer just before removing one of its attempts or revisions, and
   fails when anything could not be removed (the rest is still removed; a rerun finishes the job).

**Dry run**: the trigger form's `dry_run` defaults to true (the run lists, removes nothing);
scheduled runs follow the policy's `scheduled_dry_run` (false: they remove). Applying twice ends in
the same state: the second run finds nothing to remove.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.config import apply_offline_env
from include.retention import DAG_RETENTION

SCHEDULE = "0 3 * * 0"  # Sundays 03:00 UTC


def _events_dsn() -> str:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from include.core.connections import libpq_uri_for_connection

    hook = PostgresHook(postgres_conn_id=names.EVENTS_CONN_ID)
    return libpq_uri_for_connection(hook.get_connection(names.EVENTS_CONN_ID))


def _plan(now: datetime) -> tuple[list, list, dict]:
    from include.core.config import settings
    from include.retention.plan import plan_removals
    from include.retention.policy import load_policy
    from include.retention.references import referenced_locations

    policy = load_policy()
    referenced = referenced_locations(events_dsn=_events_dsn())
    kept: list = []
    removals = plan_removals(settings().storage_root, policy, now, referenced, kept=kept)
    return removals, kept, {"policy": policy, "referenced": referenced}


@dag(
    dag_id=DAG_RETENTION,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 4),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "retention", "maintenance"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 0},
    params={
        "dry_run": Param(True, type="boolean", title="Dry run",
                         description="List what would be removed, remove nothing. Scheduled runs ignore this "
                                     "and follow scheduled_dry_run in include/retention/policy.json."),
    },
)
def planner_retention():
    @task(retries=2, retry_delay=timedelta(minutes=1))
    def plan() -> dict:
        from datetime import UTC

        from include.core.config import settings
        from include.retention.policy import effective_dry_run

        context = get_current_context()
        removals, kept, facts = _plan(datetime.now(UTC))
        dry_run = effective_dry_run(context["dag_run"].run_type, context["params"].get("dry_run"), facts["policy"])
        referenced = facts["referenced"]
        print(f"storage root {settings().storage_root}; {len(referenced.locations)} referenced locations, "
              f"{len(referenced.open_training_runs)} open training runs; dry run: {dry_run}")
        for problem in referenced.unresolved:
            print(f"HOLD: {problem}")
        print(f"{'would remove' if dry_run else 'to remove'}: {len(removals)}")
        for removal in removals:
            print(f"  - {removal.kind:<18} {removal.age_days:8.1f} d  {removal.uri}  ({removal.reason})")
        print(f"kept candidates: {len(kept)}")
        for item in kept:
            print(f"  = {item.kind:<18} {item.uri}  ({item.reason})")
        return {"dry_run": dry_run, "removals": [r.as_dict() for r in removals], "kept": len(kept)}

    @task(retries=1, retry_delay=timedelta(minutes=1))
    def apply(planned: dict) -> list[dict]:
        from datetime import UTC

        from airflow.sdk.exceptions import AirflowFailException

        from include.retention.plan import apply_removals, still_planned

        if planned["dry_run"]:
            print(f"dry run: nothing removed; {len(planned['removals'])} items would be")
            return [{**r, "action": "would_remove"} for r in planned["removals"]]
        fresh, _, _ = _plan(datetime.now(UTC))
        agreed, dropped = still_planned(planned["removals"], fresh)
        for item in dropped:
            print(f"no longer removable, kept: {item['uri']} ({item['kind']})")
        done = apply_removals(agreed, dry_run=False)
        for record in done:
            print(f"{record['action']:<8} {record['kind']:<18} {record['uri']}")
        failed = [r for r in done if r["action"] == "failed"]
        if failed:
            raise AirflowFailException(f"{len(failed)} of {len(done)} removals failed (the others were made):\n- "
                                       + "\n- ".join(f"{r['uri']}: {r['error']}" for r in failed))
        return done

    apply(plan())


planner_retention()
