"""The dataset window as a table of cases: Params and data interval -> [start, end), version."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from include.dataset.window import partition_bounds, resolve_window


@pytest.mark.parametrize(
    ("end_date", "lookback", "run_end", "version", "start"),
    [
        ("2026-11-23", 28, None, "2026-11-23", "2026-10-26T00:00:00+00:00"),
        (date(2026, 11, 23), 7, None, "2026-11-23", "2026-11-16T00:00:00+00:00"),
        (None, 28, datetime(2026, 11, 23, 0, 0, tzinfo=UTC), "2026-11-23", "2026-10-26T00:00:00+00:00"),
        ("", 1, datetime(2026, 11, 23, 17, 45, tzinfo=UTC), "2026-11-23", "2026-11-22T00:00:00+00:00"),
        # a run ending at 01:30 in UTC+02:00 is still 2026-11-22 in UTC
        (None, 28, datetime.fromisoformat("2026-11-23T01:30:00+02:00"), "2026-11-22", "2026-10-25T00:00:00+00:00"),
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
