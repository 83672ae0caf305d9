"""The dataset bench's equality claim (bench/dataset_peers.py): the pandas and DuckDB peers,
applying the same rules, produce exactly the build's rows (the digest of plan_id, input,
target, byte for byte) and the same quarantine counts, on a small generated database with
plenty of dirty input and a few hand-made edge cases (a state version exactly at the plan time,
an edit exactly at the acceptance and one after it, an upper-case recipe id, a generated plan
with a malformed meal)."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bench import dataset_peers as peers
from include.events.db import connect
from include.events.generate import generate_and_load

PLAN_TIME = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


@pytest.fixture()
def generated(clean_source):
    generate_and_load(clean_source, households=250, weeks=6, seed=11, end=datetime(2026, 11, 23, tzinfo=UTC),
                      dirty_share=0.2, reset=True)
    with connect(clean_source, autocommit=True) as conn:
        household = conn.execute("SELECT household_id FROM app.households ORDER BY household_id LIMIT 1").fetchone()[0]
        first, second = (r[0] for r in conn.execute("SELECT recipe_id::text FROM app.recipes ORDER BY 1 LIMIT 2"))
        conn.execute("INSERT INTO app.pantry_snapshots VALUES (%s, %s, %s)",
                     (household, PLAN_TIME, json.dumps([{"name": "rice", "unit": "g", "quantity": 500}])))
        accepted = PLAN_TIME + timedelta(hours=1)
        edge, bad = str(uuid.uuid4()), str(uuid.uuid4())
        for plan_id, proposed in ((edge, {"day": "mon", "recipe_id": first.upper(), "servings": 2}),
                                  (bad, {"day": "mon"})):
            for event_type, at, meal in (("plan_generated", PLAN_TIME, proposed),
                                         ("plan_accepted", accepted, {"day": "mon", "recipe_id": second, "servings": 2})):
                conn.execute("INSERT INTO exp.events VALUES (%s, %s, %s, %s, %s, %s)",
                             (uuid.uuid4(), event_type, household, at, json.dumps({"mode": "assisted"}),
                              json.dumps({"plan_id": plan_id, "plan": {"meals": [meal]}})))
        for at in (accepted, accepted + timedelta(seconds=1)):
            conn.execute("INSERT INTO app.plan_edits VALUES (%s, %s, %s, %s, 'swap_meal', %s)",
                         (uuid.uuid4(), edge, household, at, json.dumps({"day": "mon", "from": first, "to": second})))
    return clean_source, edge


def test_peers_build_the_builds_rows(generated, tmp_path):
    import pyarrow.parquet as pq

    generated, edge = generated
    build = peers.run_way("build", generated, peers.WINDOW, tmp_path / "build.parquet")
    row = next(r for r in pq.read_table(tmp_path / "build.parquet").to_pylist() if r["plan_id"] == edge)
    assert row["pantry_valid_from"] == row["generated_at"] == PLAN_TIME and row["n_user_edits"] == 1
    by_reason = build["quarantined_by_reason"]
    assert build["rows"] > 300
    # the dirty input reaches several quarantine rules, so the peers' versions of them are exercised
    assert sum(1 for count in by_reason.values() if count) >= 5 and by_reason["invalid_generated_plan"] == 1, by_reason
    expected = peers.rows_digest(tmp_path / "build.parquet")
    for way in ("pandas", "duckdb"):
        result = peers.run_way(way, generated, peers.WINDOW, tmp_path / f"{way}.parquet")
        assert result["quarantined_by_reason"] == by_reason, way
        assert result["rows"] == build["rows"], way
        assert peers.rows_digest(tmp_path / f"{way}.parquet") == expected, way
