"""Hand-written source data for rule tests: a few households, recipes and events at chosen
instants, written to the real PostgreSQL test database, then built with the real code."""
from __future__ import annotations

import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from include.dataset.build import build_dataset
from include.dataset.window import resolve_window
from include.events.db import connect

END = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday; the default window is [2026-10-26, 2026-11-23)
CONTEXT = {"workflow_type": "plan-first", "mode": "autopilot", "policy_version_id": "policy-v1"}


def new_id() -> str:
    return str(uuid.uuid4())


class World:
    def __init__(self, dsn: str):
        self.dsn = dsn
        self.recipes = [self.recipe(f"recipe {i}") for i in range(6)]

    def _exec(self, sql: str, params: tuple) -> None:
        with connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql, params)

    def recipe(self, name: str) -> str:
        rid = new_id()
        self._exec("INSERT INTO app.recipes VALUES (%s, %s, 'italian', 20, 3.5, '[\"rice\"]', '[\"quick\"]')",
                   (rid, name))
        return rid

    def household(self, since: datetime, size: int = 2, **state) -> str:
        """A household whose profile, pantry and constraints all start at `since`."""
        hid = new_id()
        self.profile(hid, since, size=size)
        self.pantry(hid, since, state.get("items", [{"name": "rice", "quantity": 1, "unit": "kg"}]))
        self.constraints(hid, since, budget=state.get("budget", 100), max_prep_time=state.get("max_prep_time", 30))
        return hid

    def profile(self, hid: str, valid_from: datetime, size: int = 2, preferences=("quick",), restrictions=()):
        self._exec("INSERT INTO app.households VALUES (%s, %s, %s, %s, %s)",
                   (hid, valid_from, size, json.dumps(list(preferences)), json.dumps(list(restrictions))))

    def pantry(self, hid: str, valid_from: datetime, items: list[dict]):
        self._exec("INSERT INTO app.pantry_snapshots VALUES (%s, %s, %s)", (hid, valid_from, json.dumps(items)))

    def constraints(self, hid: str, valid_from: datetime, budget: float = 100, max_prep_time: int = 30,
                    excluded=()):
        self._exec("INSERT INTO app.constraints VALUES (%s, %s, %s, %s, %s)",
                   (hid, valid_from, budget, max_prep_time, json.dumps(list(excluded))))

    def event(self, event_type: str, hid: str | None, at: datetime, payload, context=CONTEXT,
              event_id: str | None = None) -> str:
        event_id = event_id or new_id()
        self._exec("INSERT INTO exp.events VALUES (%s, %s, %s, %s, %s, %s)",
                   (event_id, event_type, hid, at, json.dumps(context) if context is not None else None,
                    json.dumps(payload) if payload is not None else None))
        return event_id

    def meals(self, recipes: list[str] | None = None) -> list[dict]:
        days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
        return [{"day": d, "recipe_id": r, "servings": 2} for d, r in zip(days, recipes or self.recipes[:3])]

    def generated(self, plan_id: str, hid: str, at: datetime, recipes: list[str] | None = None, **kw) -> str:
        return self.event("plan_generated", hid, at, {"plan_id": plan_id, "plan": {"meals": self.meals(recipes)}}, **kw)

    def accepted(self, plan_id: str, hid: str, at: datetime, recipes: list[str] | None = None, **kw) -> str:
        return self.event("plan_accepted", hid, at, {"plan_id": plan_id, "plan": {"meals": self.meals(recipes)}}, **kw)

    def plan(self, hid: str, generated_at: datetime, accepted_at: datetime | None, **kw) -> str:
        plan_id = new_id()
        self.generated(plan_id, hid, generated_at, **kw)
        if accepted_at is not None:
            self.accepted(plan_id, hid, accepted_at, **kw)
        return plan_id

    def edit(self, plan_id: str, hid: str, at: datetime, edit_type: str, details: dict) -> str:
        edit_id = new_id()
        self._exec("INSERT INTO app.plan_edits VALUES (%s, %s, %s, %s, %s, %s)",
                   (edit_id, plan_id, hid, at, edit_type, json.dumps(details)))
        return edit_id

    def build(self, end_date: str = "2026-11-23", lookback_days: int = 28, parts: int = 2) -> Built:
        out = Path(tempfile.mkdtemp(prefix="built-"))
        counts = build_dataset(self.dsn, resolve_window(end_date, lookback_days), out, max_bad_share=1.0, parts=parts)
        return Built(out, counts)


class Built:
    def __init__(self, path: Path, counts: dict):
        self.path = path
        self.counts = counts
        self.rows = pq.read_table(path / "training.parquet")
        self.quarantine = pq.read_table(path / "quarantine.parquet")

    def row(self, plan_id: str) -> dict:
        matches = [r for r in self.rows.to_pylist() if r["plan_id"] == plan_id]
        assert len(matches) == 1, f"expected one row for {plan_id}, found {len(matches)}"
        row = matches[0]
        for column in ("input", "target", "metadata", "proposed_plan"):
            row[column] = json.loads(row[column])
        return row

    def plan_ids(self) -> list[str]:
        return self.rows["plan_id"].to_pylist()

    def reasons(self) -> dict[str, str]:
        """event_id -> reject_reason."""
        return dict(zip(self.quarantine["event_id"].to_pylist(), self.quarantine["reject_reason"].to_pylist()))


MICRO = timedelta(microseconds=1)
SECOND = timedelta(seconds=1)
