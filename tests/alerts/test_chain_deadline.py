"""The weekly chain's deadline (include/alerts/chain_deadline.py): how far a week's chain got, read from the
records the phases wrote (a real MLflow registry, a real `ml` schema: tests/plugins/records.py), the check failing
(sensor mode) or skipping (Deadline Alert mode) at the deadline, and the watch DAG in both modes."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.alerts import chain_deadline


def test_the_week_and_its_deadline():
    # a scheduled run of the dataset's cron (Monday 06:00 with the default allowance) watches that Monday
    assert chain_deadline.week_of(datetime(2026, 11, 30, 6, 0, tzinfo=UTC), 6) == "2026-11-30"
    assert chain_deadline.week_of(datetime(2026, 12, 3, 6, 0, tzinfo=UTC), 72) == "2026-11-30"
    assert chain_deadline.deadline_of("2026-11-30", 30) == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def lifecycle(events_dsn, tmp_path_factory):
    from tests.conftest import isolated_planner
    from tests.plugins import records

    base = tmp_path_factory.mktemp("chain-deadline")
    with isolated_planner(base, events_dsn) as (env, _):
        yield {"dsn": events_dsn, "written": records.build(base, events_dsn)}


def test_chain_status_reads_how_far_the_week_got(lifecycle):
    dsn, written = lifecycle["dsn"], lifecycle["written"]
    days = {entry["dataset"]: number for number, entry in written["versions"].items()}
    promoted = chain_deadline.chain_status(min(days), dsn)       # version 1: promoted
    assert promoted["decided"] and promoted["versions"] == [days[min(days)]]
    assert promoted["stage"] == f"promotion decided: version {days[min(days)]} promoted"
    rejected = next(d for d, n in days.items() if written["versions"][n].get("outcome") == "rejected")
    assert chain_deadline.chain_status(rejected, dsn)["decided"]  # a rejection is a decision too
    never = next(d for d, n in days.items() if not written["versions"][n]["evaluated"])
    late = chain_deadline.chain_status(never, dsn)
    assert not late["decided"] and "registered; not evaluated yet" in late["stage"]
    nothing = chain_deadline.chain_status("2020-01-06", dsn)
    assert not nothing["decided"] and nothing["versions"] == [] and "not published" in nothing["stage"]


def test_the_check_fails_or_skips_at_the_deadline(lifecycle):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    dsn, written = lifecycle["dsn"], lifecycle["written"]
    never = next(e["dataset"] for e in written["versions"].values() if not e["evaluated"])
    decided = min(e["dataset"] for e in written["versions"].values())
    week = {"dataset_version": never, "deadline": chain_deadline.deadline_of(never, 30).isoformat()}
    before, after = datetime.fromisoformat(week["deadline"]) - timedelta(hours=1), datetime.fromisoformat(week["deadline"])
    assert chain_deadline.check(week, now=before, dsn=dsn, watch_mode="sensor") is False  # keeps waiting
    with pytest.raises(AirflowFailException, match="not finished by"):
        chain_deadline.check(week, now=after, dsn=dsn, watch_mode="sensor")
    with pytest.raises(AirflowSkipException):
        chain_deadline.check(week, now=after, dsn=dsn, watch_mode="deadline_alert")
    done = {"dataset_version": decided, "deadline": week["deadline"]}
    assert chain_deadline.check(done, now=after, dsn=dsn, watch_mode="sensor") is True


def test_the_watch_dag_in_both_modes(monkeypatch):
    monkeypatch.setenv("PLANNER_ALERT_EMAIL_TO", "ml-oncall@planner.test")
    monkeypatch.setenv("PLANNER_CHAIN_DEADLINE_MODE", "sensor")
    dag = chain_deadline.chain_deadline_dag()
    assert dag.dag_id == "planner_chain_deadline" and set(dag.task_ids) == {"resolve_week",
                                                                          "wait_for_promotion_decision"}
    assert not dag.deadline
    sensor = dag.get_task("wait_for_promotion_decision")
    assert sensor.mode == "reschedule" and len(sensor.on_failure_callback) == 1
    assert dag.timetable.expression == "0 6 * * 1"  # the dataset's cron

    monkeypatch.setenv("PLANNER_CHAIN_DEADLINE_MODE", "deadline_alert")
    monkeypatch.setenv("PLANNER_CHAIN_DEADLINE_HOURS", "30")
    dag = chain_deadline.chain_deadline_dag()
    (alert,) = dag.deadline
    assert alert.interval == timedelta(hours=24)  # logical date (Monday 06:00) + 24 h = Monday + 30 h
    assert alert.callback.path == "include.alerts.chain_deadline.deadline_missed"

    monkeypatch.delenv("PLANNER_ALERT_EMAIL_TO")  # alerts off: nobody to tell, so no weekly run polls
    assert type(chain_deadline.chain_deadline_dag().timetable).__name__ == "NullTimetable"

    monkeypatch.setenv("PLANNER_CHAIN_DEADLINE_MODE", "never")
    with pytest.raises(ValueError):
        chain_deadline.chain_deadline_dag()
