"""Every DAG file imports cleanly, cheaply and without touching a database or connection."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from include.core.config import OFFLINE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((PROJECT_ROOT / "dags").glob("*.py"))
HEAVY_MODULES = ["torch", "transformers", "mlflow", "pandas", "pyarrow", "great_expectations",
                 "adbc_driver_postgresql", "psycopg", "sklearn"]

# Parse in a fresh interpreter whose metadata DB and events connection point at nothing that
# answers: parsing must not need either.
PARSE_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
import os
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "dags": sorted(bag.dag_ids), "heavy": heavy,
                  "env_set": sorted(k for k in json.loads(sys.argv[3]) if k in os.environ)}))
"""


def _parse(path: Path) -> dict:
    env = dict(os.environ)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "sqlite:////nonexistent-dir/airflow.db"
    env["AIRFLOW_CONN_EVENTS_DB"] = "postgresql://nobody@127.0.0.1:9/unreachable"
    for key in OFFLINE_ENV:  # parsing must not set them: the parser serves every team's DAGs
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(path), json.dumps(HEAVY_MODULES),
                             json.dumps(sorted(OFFLINE_ENV))],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_without_db_or_heavy_imports(path):
    parsed = _parse(path)
    assert parsed["errors"] == {}
    assert parsed["dags"], f"{path.name} defines no DAG"
    assert parsed["heavy"] == [], f"{path.name} imports heavy modules at parse time: {parsed['heavy']}"
    assert parsed["env_set"] == [], f"{path.name} changes the parser's environment: {parsed['env_set']}"


def test_every_task_goes_offline_before_it_runs(dagbag):
    """The offline environment is set in each task's process, by its on_execute_callback, not at parse time."""
    from include.core.config import apply_offline_env

    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            callbacks = task.on_execute_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert apply_offline_env in callbacks, f"{dag_id}.{task.task_id}: no offline environment before it runs"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


def test_every_dag_is_documented_tagged_and_retries_io(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id}: doc_md missing or thin"
        assert "planner" in dag.tags, f"{dag_id}: tags {dag.tags}"
        assert dag.catchup is False or dag.schedule is None
        assert dag.params, f"{dag_id}: no Params (the UI trigger form)"
        assert any(t.retries > 0 for t in dag.tasks), f"{dag_id}: no task retries"


def test_dataset_dag_shape(dagbag):
    from include.core import names
    from include.core.assets import DATASET_ASSET

    dag = dagbag.dags[names.DAG_DATASET]
    assert dag.timetable.expression == "0 6 * * 1"  # Mondays 00:00 + the default 6 h lateness allowance
    assert str(dag.timetable.timezone) in ("UTC", "Timezone('UTC')")
    assert set(dag.task_ids) == {"resolve_window", "plan_ranges", "extract_range", "assemble_validate_publish",
                                 "log_dataset"}
    assert dag.get_task("extract_range").retries >= 1 and dag.get_task("assemble_validate_publish").retries >= 1
    assert dag.get_task("resolve_window").retries == 0
    assert [o.name for o in dag.get_task("log_dataset").outlets] == [DATASET_ASSET.name]
    schema = {name: param.schema for name, param in dag.params.items()}
    assert schema["lookback_days"]["type"] == "integer" and schema["lookback_days"]["minimum"] == 1
    assert schema["max_bad_share"]["maximum"] == 1
    assert schema["end_date"]["format"] == "date"
    assert schema["extract_ranges"]["type"] == "integer" and schema["extract_ranges"]["minimum"] == 1


def test_dataset_params_reject_values_outside_their_schema(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    from include.core import names

    dag = dagbag.dags[names.DAG_DATASET]
    for name, bad in (("lookback_days", 0), ("lookback_days", "four"), ("max_bad_share", 1.5),
                      ("end_date", "23/11/2026"), ("extract_ranges", 0), ("extract_ranges", 65),
                      ("extract_ranges", 2.5)):
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(bad)
    assert dag.params.get_param("end_date").resolve("2026-11-23") == "2026-11-23"
    assert dag.params.get_param("end_date").resolve(None) is None


def test_evaluation_and_promotion_dag_shapes(dagbag):
    from include.core import names
    from include.core.assets import OFFLINE_EVAL_ASSET

    evaluation = dagbag.dags[names.DAG_OFFLINE_EVAL]
    assert names.ASSET_REGISTERED_MODEL in str(evaluation.timetable.asset_condition)
    assert set(evaluation.task_ids) == {"plan_evaluation", "build_replay_set", "evaluate", "tag_version"}
    assert [o.name for o in evaluation.get_task("tag_version").outlets] == [OFFLINE_EVAL_ASSET.name]
    schema = {name: param.schema for name, param in evaluation.params.items()}
    assert schema["max_rows"]["minimum"] == 1 and schema["replay_start"]["format"] == "date"
    assert evaluation.params["baseline"] == names.CHAMPION_ALIAS

    promotion = dagbag.dags[names.DAG_PROMOTION]
    assert names.ASSET_OFFLINE_EVAL in str(promotion.timetable.asset_condition)
    assert set(promotion.task_ids) == {"decide", "route", "await_approval", "apply", "record_outcome"}
    schema = {name: param.schema for name, param in promotion.params.items()}
    assert schema["action"]["enum"] == ["promote", "rollback"]
    assert schema["require_approval"]["type"] == "boolean" and schema["dry_run"]["type"] == "boolean"
    assert promotion.get_task("record_outcome").trigger_rule == "none_failed"
    assert type(promotion.get_task("await_approval")).__mro__[1].__name__ == "ApprovalOperator"


def test_the_weekly_schedule_and_the_asset_chain(dagbag):
    """The dataset's next run is a Monday 00:00 UTC + the allowance within a week; every later phase
    runs on the previous phase's Asset."""
    from datetime import UTC, datetime, timedelta

    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    from include.core import names
    from include.core.config import settings

    dataset = dagbag.dags[names.DAG_DATASET]
    scheduler_side = CronTriggerTimetable(dataset.timetable.expression, timezone="UTC")  # what the scheduler computes
    info = scheduler_side.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dataset.start_date, latest=None, catchup=False))
    run_after = info.run_after.astimezone(UTC)
    window_end = run_after - timedelta(hours=settings().dataset_lateness_hours)
    assert (window_end.weekday(), window_end.hour, window_end.minute) == (0, 0, 0)
    assert abs(run_after - datetime.now(UTC)) <= timedelta(days=7)
    chain = {names.DAG_TRAINING: names.ASSET_DATASET, names.DAG_REGISTRATION: names.ASSET_MODEL_ARTIFACTS,
             names.DAG_OFFLINE_EVAL: names.ASSET_REGISTERED_MODEL, names.DAG_PROMOTION: names.ASSET_OFFLINE_EVAL}
    for dag_id, asset_name in chain.items():
        assert asset_name in str(dagbag.dags[dag_id].timetable.asset_condition), dag_id


@pytest.mark.parametrize(("after", "run_after", "version"), [
    ("2026-11-18T12:00:00+00:00", "2026-11-23T06:00:00+00:00", "2026-11-23"),  # midweek: next Monday 06:00
    ("2026-11-23T03:00:00+00:00", "2026-11-23T06:00:00+00:00", "2026-11-23"),  # inside the allowance: today
    ("2026-11-23T06:00:01+00:00", "2026-11-30T06:00:00+00:00", "2026-11-30"),
])
def test_the_scheduled_run_waits_the_allowance_and_builds_the_monday(dagbag, after, run_after, version):
    """What the scheduler computes from the DAG's (serialized) timetable, then the version that run builds."""
    from datetime import datetime

    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    from include.core import names
    from include.dataset.window import resolve_window

    timetable = coerce_to_core_timetable(dagbag.dags[names.DAG_DATASET].timetable)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=datetime.fromisoformat(after), latest=None, catchup=True))
    assert info.run_after.isoformat() == run_after
    assert resolve_window(None, 28, info.run_after, 6).version == version


@pytest.mark.parametrize(("run_after", "version"), [
    ("2026-11-23T05:59:00+00:00", "2026-11-16"),  # a manual run before this Monday's allowance has passed
    ("2026-11-23T06:00:00+00:00", "2026-11-23"),
])
def test_the_dataset_dags_resolve_window_task_uses_the_run_time_and_the_allowance(airflow_db, dagbag, run_after,
                                                                                   version):
    """The real task in a real run (the build and the MLflow log are marked done, not run)."""
    from datetime import datetime

    from include.core import names

    run = dagbag.dags[names.DAG_DATASET].test(run_after=datetime.fromisoformat(run_after),
                                              mark_success_pattern="extract_range|assemble_validate_publish|log_dataset")
    window = next(ti for ti in run.get_task_instances() if ti.task_id == "resolve_window").xcom_pull(
        task_ids="resolve_window")
    assert window["version"] == version and window["end"] == f"{version}T00:00:00+00:00"
