"""Choosing among a run's queued triggering events: the newest wins, every other one has a reason."""
from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from include.core.triggering import choose_event, event_extras

OLD = {"dataset_version": "2026-11-16", "dataset_uri": "/s/2026-11-16", "mlflow_run_id": "a"}
NEW = {"dataset_version": "2026-11-23", "dataset_uri": "/s/2026-11-23", "mlflow_run_id": "b"}


def test_two_events_queued_the_newest_wins_whatever_the_queue_order():
    for queued in ([OLD, NEW], [NEW, OLD]):
        chosen, skipped = choose_event(queued, "dataset_version", label="dataset")
        assert chosen == NEW
        assert skipped == ["dataset 2026-11-16 superseded by 2026-11-23 (queued in the same run)"]


def test_identical_events_count_once():
    chosen, skipped = choose_event([NEW, dict(NEW), OLD, dict(OLD)], "dataset_version", label="dataset")
    assert chosen == NEW and skipped == ["dataset 2026-11-16 superseded by 2026-11-23 (queued in the same run)"]
    assert choose_event([NEW, dict(NEW)], "dataset_version") == (NEW, [])


def test_a_rebuild_of_the_same_version_queued_later_wins():
    rebuilt = {**NEW, "mlflow_run_id": "c"}
    chosen, skipped = choose_event([NEW, rebuilt], "dataset_version", label="dataset")
    assert chosen == rebuilt
    assert skipped == ["dataset 2026-11-23: an earlier event of the same dataset replaced by the later one "
                       "(queued in the same run)"]


def test_events_without_the_key_are_reported_not_chosen():
    chosen, skipped = choose_event([{"rows": 3}, NEW, {"dataset_version": ""}], "dataset_version")
    assert chosen == NEW
    assert skipped == ['event without dataset_version ignored: {"rows": 3}',
                       'event without dataset_version ignored: {"dataset_version": ""}']
    assert choose_event([{"rows": 3}], "dataset_version") == (None, ['event without dataset_version ignored: '
                                                                     '{"rows": 3}'])
    assert choose_event([], "dataset_version") == (None, [])


def test_model_versions_compare_as_numbers():
    chosen, skipped = choose_event([{"model_version": "10"}, {"model_version": "9"}, {"model_version": 11}],
                                   "model_version", label="model version")
    assert chosen == {"model_version": 11}
    assert skipped == ["model version 10 superseded by 11 (queued in the same run)",
                       "model version 9 superseded by 11 (queued in the same run)"]


def test_event_extras_flattens_assets_and_restores_the_queue_order():
    def event(extra, minute):
        return SimpleNamespace(extra=extra, timestamp=datetime(2026, 11, 23, 6, minute, tzinfo=UTC))

    accessor = {"planner.dataset": [event(NEW, 5), event(OLD, 1)], "an alias": [event(NEW, 5)]}
    assert event_extras(accessor) == [OLD, NEW, NEW]
    assert event_extras(None) == [] and event_extras({}) == []
