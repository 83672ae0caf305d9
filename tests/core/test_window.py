"""The dataset window as a table of cases: Params, run time and lateness allowance -> [start, end), version."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from include.dataset.window import latest_window_end, partition_bounds, resolve_window


@pytest.mark.parametrize(
    ("end_date", "lookback", "run_end", "version", "start"),
    [
        ("2026-11-23", 28, None, "2026-11-23", "2026-10-26T00:00:00+00:00"),
        (date(2026, 11, 23), 7, None, "2026-11-23", "2026-11-16T00:00:00+00:00"),
        (None, 28, datetime(2026, 11, 23, 0, 0, tzinfo=UTC), "2026-11-23", "2026-10-26T00:00:00+00:00"),
        ("", 1, datetime(2026, 11, 23, 17, 45, tzinfo=UTC), "2026-11-23", "2026-11-22T00:00:00+00:00"),
        # a run at Monday 01:30 in UTC+02:00 is still Sunday 2026-11-22 in UTC: the Monday before
        (None, 28, datetime.fromisoformat("2026-11-23T01:30:00+02:00"), "2026-11-16", "2026-10-19T00:00:00+00:00"),
        # no end_date: the latest Monday, never the run's own weekday
        (None, 7, datetime(2026, 11, 26, 9, 0, tzinfo=UTC), "2026-11-23", "2026-11-16T00:00:00+00:00"),
        ("2026-11-23", 28, datetime(2025, 1, 1, tzinfo=UTC), "2026-11-23", "2026-10-26T00:00:00+00:00"),
    ],
)
def test_window_resolution(end_date, lookback, run_end, version, start):
    window = resolve_window(end_date, lookback, run_end)
    assert window.version == version
    assert window.start.isoformat() == start
    assert window.end.isoformat() == f"{version}T00:00:00+00:00"
    assert window.lookback_days == lookback
    assert window.last_instant < window.end and (window.end - window.last_instant).total_seconds() == 1e-6


@pytest.mark.parametrize(
    ("run_time", "lateness", "version"),
    [
        ("2026-11-23T05:59:59+00:00", 6, "2026-11-16"),  # just before Monday 00:00 + 6 h: last week's Monday
        ("2026-11-23T06:00:00+00:00", 6, "2026-11-23"),  # the scheduled run's own time: this Monday
        ("2026-11-23T06:00:01+00:00", 6, "2026-11-23"),
        ("2026-11-23T00:00:00+00:00", 0, "2026-11-23"),  # no allowance: the Monday itself, as before
        ("2026-11-22T23:59:59+00:00", 0, "2026-11-16"),
        ("2026-11-25T23:59:59+00:00", 72, "2026-11-16"),  # the largest allowance ends Thursday 00:00
        ("2026-11-26T00:00:00+00:00", 72, "2026-11-23"),
        ("2026-11-30T03:00:00+00:00", 6, "2026-11-23"),  # a manual run early next Monday
    ],
)
def test_a_run_without_end_date_builds_the_latest_monday_whose_allowance_has_passed(run_time, lateness, version):
    when = datetime.fromisoformat(run_time)
    assert latest_window_end(when, lateness).isoformat() == version
    window = resolve_window(None, 28, when, lateness)
    assert window.version == version and window.end.isoformat() == f"{version}T00:00:00+00:00"


def test_an_explicit_end_date_ignores_the_run_time_and_the_allowance():
    window = resolve_window("2026-11-25", 28, datetime(2026, 11, 23, 1, tzinfo=UTC), lateness_hours=72)
    assert window.version == "2026-11-25"  # any day, used as given (as before the allowance existed)


@pytest.mark.parametrize(("hours", "cron"), [("0", "0 0 * * 1"), (None, "0 6 * * 1"), ("30", "0 6 * * 2"),
                                             ("72", "0 0 * * 4")])
def test_the_default_schedule_is_monday_plus_the_allowance(monkeypatch, hours, cron):
    from include.core.config import settings

    monkeypatch.delenv("PLANNER_DATASET_SCHEDULE", raising=False)
    if hours is None:
        monkeypatch.delenv("PLANNER_DATASET_LATENESS_HOURS", raising=False)
    else:
        monkeypatch.setenv("PLANNER_DATASET_LATENESS_HOURS", hours)
    assert settings().dataset_schedule == cron
    assert settings().dataset_lateness_hours == int(hours or 6)


@pytest.mark.parametrize("hours", ["-1", "73"])
def test_an_allowance_outside_0_to_72_hours_is_refused(monkeypatch, hours):
    from include.core.config import settings

    monkeypatch.setenv("PLANNER_DATASET_LATENESS_HOURS", hours)
    with pytest.raises(ValueError, match="0..72"):
        settings()


@pytest.mark.parametrize(("end_date", "lookback", "message"), [
    ("23/11/2026", 28, "YYYY-MM-DD"), ("2026-11-23", 0, "lookback_days"), ("2026-02-30", 28, "YYYY-MM-DD")])
def test_bad_window_params_are_rejected_with_a_clear_message(end_date, lookback, message):
    with pytest.raises(ValueError, match=message):
        resolve_window(end_date, lookback)


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 16])
def test_partition_bounds_are_contiguous_and_cover_every_plan_id(parts):
    bounds = partition_bounds(parts)
    assert len(bounds) == parts and bounds[0][0] == "" and bounds[-1][1] == ""
    for (_, high), (low, _) in zip(bounds, bounds[1:]):
        assert high == low
    for plan_id in ["00000000-0000-4000-8000-000000000000", "7fffffff-0000-4000-8000-000000000000",
                    "80000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff", "not-a-uuid"]:
        owners = [i for i, (low, high) in enumerate(bounds) if plan_id >= low and (high == "" or plan_id < high)]
        assert len(owners) == 1, (plan_id, owners)
