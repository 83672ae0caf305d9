"""Which of an Asset-scheduled run's triggering events it acts on, and why it skips the others.

The scheduler queues every event since the last run into one run: two dataset versions
published while training was busy arrive together. A run acts on the newest and records each
other event with its reason, so nothing is dropped silently and an older version never
displaces a newer one because it happened to be queued last.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def event_extras(triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> list[dict]:
    """The extras of a run's triggering events, oldest first (the order they were queued in).

    An event reached through both its Asset and an alias is listed under each: `choose_event`
    drops such identical copies.
    """
    events = [event for events in (triggering_asset_events or {}).values() for event in events]
    events.sort(key=lambda event: event.timestamp)  # the run's event list has no guaranteed order
    return [dict(event.extra or {}) for event in events]


def _newness(value: Any) -> tuple:
    """Numbers by value (model version 10 is newer than 9), anything else by text (ISO dates)."""
    text = str(value)
    return (1, int(text), "") if text.isdigit() else (0, 0, text)


def choose_event(extras: list[dict], key: str, label: str | None = None) -> tuple[dict | None, list[str]]:
    """(the event with the newest `key`, a reason for every other event); (None, reasons) when none has it.

    Events are in queue order: among events of the same `key` value the later one wins (a rebuild
    of that version). Identical events count once.
    """
    label = label or key
    seen, distinct = set(), []
    for extra in extras:
        identity = json.dumps(extra, sort_keys=True, default=str)
        if identity not in seen:
            seen.add(identity)
            distinct.append(extra)
    usable = [extra for extra in distinct if extra.get(key) not in (None, "")]
    reasons = [f"event without {key} ignored: {json.dumps(extra, sort_keys=True, default=str)}"
               for extra in distinct if extra not in usable]
    if not usable:
        return None, reasons
    chosen = max(reversed(usable), key=lambda extra: _newness(extra[key]))  # reversed: the later one wins a tie
    for extra in usable:
        if extra is chosen:
            continue
        if str(extra[key]) == str(chosen[key]):
            reasons.append(f"{label} {extra[key]}: an earlier event of the same {label} replaced by the later one "
                           "(queued in the same run)")
        else:
            reasons.append(f"{label} {extra[key]} superseded by {chosen[key]} (queued in the same run)")
    return chosen, reasons


def report_skipped(ti, skipped: list[str]) -> None:
    """Log each skipped event and keep the list as XCom `skipped_events`, where the UI shows it."""
    for reason in skipped:
        print(f"skipped triggering event: {reason}")
    ti.xcom_push(key="skipped_events", value=skipped)
