"""The seeded generator: deterministic, chunking-independent, idempotent to reload, refuses to
clobber data by accident, dirty only where asked, and with a learnable keep relation."""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from include.events import generate
from include.events.db import connect

END = datetime(2026, 11, 23, tzinfo=UTC)


def _table_digest(dsn: str, table: str, order: str) -> str:
    with connect(dsn) as conn:
        rows = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_same_seed_same_rows_whatever_the_chunking():
    _, whole = generate.generate(12, 3, seed=5, end=END, dirty_share=0.2)
    _, head = generate.generate(5, 3, seed=5, end=END, dirty_share=0.2, first_household=0)
    _, tail = generate.generate(7, 3, seed=5, end=END, dirty_share=0.2, first_household=5)
    assert whole.events == head.events + tail.events
    assert whole.truth == head.truth + tail.truth
    _, other_seed = generate.generate(12, 3, seed=6, end=END, dirty_share=0.2)
    assert other_seed.events != whole.events


def test_events_stay_before_the_end_and_state_starts_before_the_first_plan():
    _, tables = generate.generate(30, 4, seed=1, end=END, dirty_share=0.0)
    event_times = [datetime.fromisoformat(generate.Tables.fields(e)[3]) for e in tables.events]
    assert max(event_times) < END + generate.timedelta(days=2)  # an acceptance may come after the end
    first_state = min(datetime.fromisoformat(generate.Tables.fields(h)[1]) for h in tables.households)
    assert first_state < min(event_times)


def test_rows_are_copy_text_lines_whose_fields_read_back():
    """Rows are written as COPY text lines: six fields per event, NULL as \\N, valid JSON."""
    import json

    _, tables = generate.generate(5, 2, seed=3, end=END, dirty_share=0.0)
    for line in tables.events:
        event_id, event_type, unit_id, at, context, payload = generate.Tables.fields(line)
        assert datetime.fromisoformat(at).tzinfo is not None and event_type.startswith("plan_")
        assert set(json.loads(context)) == {"workflow_type", "mode", "policy_version_id"}
        assert "plan_id" in json.loads(payload)
    plan_id, recipe_id, p_keep = generate.Tables.fields(tables.truth[0])
    assert 0.0 < float(p_keep) < 1.0
    assert generate.Tables.fields("a\t\\N\t{\"k\": \"x\\\\\\\\y\"}") == ("a", None, '{"k": "x\\\\y"}')
    assert generate._json_field({"k": "x\\y"}) == '{"k":"x\\\\\\\\y"}'  # a backslash in the data is escaped for COPY


def test_keep_probability_follows_the_documented_relation():
    recipes = generate.make_recipes(3)
    state = generate.HouseholdState(size=2, preferences=[], restrictions=[], pantry=[], budget=400.0,
                                    max_prep_time=120, excluded=[], affinity=0.0)
    recipe = next(r for r in recipes if "peanuts" not in r.ingredients and 10 < r.prep_time <= 30)
    base = generate.keep_probability(recipe, state, "plan-first", "assisted")
    restricted = next(r for r in recipes if "peanuts" in r.ingredients)
    with_allergy = generate.HouseholdState(**{**state.__dict__, "restrictions": ["nut-allergy"]})
    assert generate.keep_probability(restricted, with_allergy, "plan-first", "assisted") < \
        generate.keep_probability(restricted, state, "plan-first", "assisted") - 0.3
    stocked = generate.HouseholdState(**{**state.__dict__, "pantry": [
        {"name": i, "quantity": 1, "unit": "count"} for i in recipe.ingredients]})
    assert generate.keep_probability(recipe, stocked, "plan-first", "assisted") > base + 0.2
    assert generate.keep_probability(recipe, stocked, "pantry-first", "assisted") > \
        generate.keep_probability(recipe, stocked, "plan-first", "assisted")
    slow = generate.HouseholdState(**{**state.__dict__, "max_prep_time": 10})
    assert generate.keep_probability(recipe, slow, "plan-first", "assisted") < base


def test_cli_refuses_to_overwrite_without_reset_and_reloads_identically(clean_source):
    args = ["--dsn", clean_source, "--households", "40", "--weeks", "3", "--seed", "9", "--end", "2026-11-23"]
    tables = {"exp.events": 'event_id, "timestamp", event_type, payload::text',
              "app.households": "household_id, valid_from", "app.plan_edits": "edit_id",
              "sim.keep_truth": "plan_id, recipe_id"}
    assert generate.main(args) == 0
    before = {table: _table_digest(clean_source, table, order) for table, order in tables.items()}
    with pytest.raises(SystemExit, match="--reset"):
        generate.main(args)
    assert generate.main([*args, "--reset", "--workers", "1"]) == 0  # another worker count, same data
    assert {table: _table_digest(clean_source, table, order) for table, order in tables.items()} == before


def test_cli_rejects_nonsense_arguments():
    with pytest.raises(SystemExit):
        generate.main(["--households", "0"])
    with pytest.raises(SystemExit):
        generate.main(["--dirty-share", "1.5"])


def test_a_bulk_load_leaves_every_key_and_index_of_the_schema_in_place(clean_source):
    """The loader drops keys and indexes for speed and must put every one of them back."""
    def catalog():
        with connect(clean_source) as conn:
            return conn.execute(
                "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname IN ('exp', 'app', 'sim') ORDER BY 1, 2, 3").fetchall()

    expected = catalog()  # as schema.sql created them
    assert any(name == "keep_truth_pkey" for _, _, name, _ in expected)
    generate.generate_and_load(clean_source, 20, 2, seed=3, end=END, dirty_share=0.0, reset=True)
    assert catalog() == expected
