"""One test per dataset rule (docs/contracts.md, dataset rules), with hand-written events at the
boundaries, built by the real extraction against the real PostgreSQL test database."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.dataset.world import END, MICRO, SECOND, World, new_id

START = END - timedelta(days=28)
MID = END - timedelta(days=10)
LONG_AGO = START - timedelta(days=90)


@pytest.fixture()
def world(clean_source) -> World:
    return World(clean_source)


# --- window --------------------------------------------------------------------------------


def test_window_includes_its_start_and_excludes_its_end(world):
    hid = world.household(LONG_AGO)
    at_start = world.plan(hid, START - timedelta(hours=1), START)
    last_instant = world.plan(hid, END - timedelta(hours=1), END - MICRO)
    at_end = world.plan(hid, END - timedelta(hours=1), END)
    before = world.plan(hid, START - timedelta(hours=2), START - MICRO)

    built = world.build()

    assert at_start in built.plan_ids() and last_instant in built.plan_ids()
    assert at_end not in built.plan_ids() and before not in built.plan_ids()
    # generated before the window start but accepted inside it: a row, plan time outside the window
    assert built.row(at_start)["generated_at"] == START - timedelta(hours=1)


def test_rows_are_ordered_by_plan_id_and_one_per_plan(world):
    hid = world.household(LONG_AGO)
    plans = [world.plan(hid, MID + i * SECOND, MID + i * SECOND + timedelta(minutes=5)) for i in range(12)]
    built = world.build(parts=3)
    assert built.plan_ids() == sorted(plans)


# --- one row per accepted plan; duplicates collapse and are counted ------------------------


def test_second_acceptance_collapses_to_the_first_and_is_counted(world):
    hid = world.household(LONG_AGO)
    plan_id = new_id()
    world.generated(plan_id, hid, MID)
    first = world.accepted(plan_id, hid, MID + timedelta(minutes=5), recipes=world.recipes[:3])
    world.accepted(plan_id, hid, MID + timedelta(minutes=9), recipes=world.recipes[3:6])

    built = world.build()

    row = built.row(plan_id)
    assert row["accepted_at"] == MID + timedelta(minutes=5)
    assert [m["recipe_id"] for m in row["target"]["accepted_plan"]["meals"]] == world.recipes[:3]
    assert built.counts["duplicate_acceptances"] == 1
    assert first not in built.reasons()


def test_plan_first_accepted_before_the_window_makes_no_row(world):
    hid = world.household(LONG_AGO)
    plan_id = new_id()
    world.generated(plan_id, hid, START - timedelta(days=2))
    world.accepted(plan_id, hid, START - timedelta(days=1))
    world.accepted(plan_id, hid, START + timedelta(days=1))  # re-acceptance inside the window

    built = world.build()

    assert plan_id not in built.plan_ids()
    assert built.counts["duplicate_acceptances"] == 1


def test_duplicate_delivery_of_an_event_collapses_and_is_counted(world):
    hid = world.household(LONG_AGO)
    plan_id = new_id()
    generated = world.generated(plan_id, hid, MID)
    world.generated(plan_id, hid, MID, event_id=generated)
    accepted = world.accepted(plan_id, hid, MID + SECOND)
    world.accepted(plan_id, hid, MID + SECOND, event_id=accepted)

    built = world.build()

    assert built.plan_ids() == [plan_id]
    assert built.counts["duplicate_deliveries"] == 2
    assert built.counts["duplicate_acceptances"] == 0
    assert built.counts["events_by_type"]["plan_accepted"] == {"events": 1, "deliveries": 2}


# --- plan time ------------------------------------------------------------------------------


def test_plan_time_is_the_latest_generation_at_or_before_the_acceptance(world):
    hid = world.household(LONG_AGO)
    plan_id = new_id()
    world.generated(plan_id, hid, MID - timedelta(hours=3), recipes=world.recipes[:3])
    world.generated(plan_id, hid, MID, recipes=world.recipes[3:6])          # the one shown last
    world.accepted(plan_id, hid, MID)                                          # same instant counts
    world.generated(plan_id, hid, MID + SECOND, recipes=world.recipes[1:4])   # after: ignored

    row = world.build().row(plan_id)

    assert row["generated_at"] == MID
    assert [m["recipe_id"] for m in row["proposed_plan"]["meals"]] == world.recipes[3:6]
    assert row["input"]["proposed_plan"] == row["proposed_plan"]
    assert row["metadata"]["timestamp"].startswith(MID.isoformat()[:19])


# --- state as of the plan time --------------------------------------------------------------


@pytest.mark.parametrize("table", ["profile", "pantry", "constraints"])
def test_state_is_the_version_in_effect_at_the_plan_time_never_a_later_one(world, table):
    hid = world.household(LONG_AGO, size=2, budget=100, max_prep_time=30)
    plan_time = MID
    early = plan_id_before = world.plan(hid, plan_time, plan_time + timedelta(hours=2))
    # a change exactly at the plan time of a second plan, and one a microsecond after a third
    later_time = MID + timedelta(days=1)
    at_exact = world.plan(hid, later_time, later_time + timedelta(hours=1))
    just_after_time = MID + timedelta(days=2)
    after = world.plan(hid, just_after_time, just_after_time + timedelta(hours=1))
    change = {
        "profile": lambda at, v: world.profile(hid, at, size=v),
        "pantry": lambda at, v: world.pantry(hid, at, [{"name": f"item{v}", "quantity": v, "unit": "count"}]),
        "constraints": lambda at, v: world.constraints(hid, at, budget=100 * v, max_prep_time=30),
    }[table]
    change(later_time, 5)                    # exactly at the second plan's time: in effect for it
    change(just_after_time + MICRO, 7)       # one microsecond after the third plan's time: not for it

    built = world.build()

    def state(plan_id):
        data = built.row(plan_id)["input"]
        return {"profile": data["household"]["size"],
                "pantry": data["pantry"]["items"][0]["quantity"] if data["pantry"]["items"][0]["name"] != "rice" else 1,
                "constraints": data["constraints"]["budget"] / 100}[table]

    assert state(early) == {"profile": 2, "pantry": 1, "constraints": 1}[table]
    assert state(at_exact) == 5
    assert state(after) == 5, "a version stamped after the plan time leaked into the row"
    audit = {"profile": "household_valid_from", "pantry": "pantry_valid_from", "constraints": "constraints_valid_from"}
    assert built.row(at_exact)[audit[table]] == later_time
    assert built.row(plan_id_before)[audit[table]] == LONG_AGO


def test_household_with_no_state_at_the_plan_time_is_quarantined(world):
    hid = world.household(MID + timedelta(hours=1))  # the profile starts after the plan time
    plan_id = world.plan(hid, MID, MID + timedelta(hours=2))
    built = world.build()
    assert plan_id not in built.plan_ids()
    quarantined = built.quarantine.to_pylist()
    assert [(q["plan_id"], q["reject_reason"]) for q in quarantined] == [(plan_id, "no_household_state")]
    assert "household" in quarantined[0]["reject_detail"] and "pantry" in quarantined[0]["reject_detail"]


def test_missing_only_the_pantry_names_it(world):
    hid = new_id()
    world.profile(hid, LONG_AGO)
    world.constraints(hid, LONG_AGO)
    plan_id = world.plan(hid, MID, MID + SECOND)
    (record,) = world.build().quarantine.to_pylist()
    assert record["plan_id"] == plan_id and record["reject_reason"] == "no_household_state"
    assert record["reject_detail"].endswith("pantry")


# --- previous plan and edits ----------------------------------------------------------------


def test_previous_plan_is_the_latest_acceptance_strictly_before_the_plan_time(world):
    hid = world.household(LONG_AGO)
    older = world.plan(hid, START - timedelta(days=9), START - timedelta(days=8))  # before the window
    previous = world.plan(hid, MID - timedelta(days=2), MID - MICRO)
    current = new_id()
    world.generated(current, hid, MID)
    # a second acceptance of the older plan, later: a duplicate, not "the latest accepted plan"
    world.accepted(older, hid, MID - timedelta(days=1))
    at_plan_time = world.plan(hid, MID - timedelta(hours=5), MID)  # accepted exactly at the plan time
    world.accepted(current, hid, MID + timedelta(hours=1))

    built = world.build()

    # `at_plan_time` was accepted exactly at current's plan time: not strictly before it
    assert built.row(current)["input"]["previous_plan"]["plan_id"] == previous
    assert built.row(previous)["input"]["previous_plan"]["plan_id"] == older
    # its own plan time (MID - 5h) precedes `previous`'s acceptance; the re-acceptance of
    # `older` at MID - 1 day is a duplicate and does not count
    assert built.row(at_plan_time)["input"]["previous_plan"]["plan_id"] == older
    assert built.row(at_plan_time)["input"]["previous_plan"]["accepted_at"].startswith("2026-10-18T00:00:00")
    first = world.household(LONG_AGO)
    first_plan = world.plan(first, MID, MID + SECOND)
    assert world.build().row(first_plan)["input"]["previous_plan"] is None


def test_user_edits_up_to_the_acceptance_in_time_order(world):
    hid = world.household(LONG_AGO)
    plan_id = new_id()
    world.generated(plan_id, hid, MID)
    accepted_at = MID + timedelta(hours=2)
    world.accepted(plan_id, hid, accepted_at)
    world.edit(plan_id, hid, accepted_at, "remove_meal", {"day": "tuesday", "from": world.recipes[1]})
    world.edit(plan_id, hid, MID + timedelta(minutes=10), "swap_meal",
               {"day": "monday", "from": world.recipes[0], "to": world.recipes[4]})
    world.edit(plan_id, hid, accepted_at + MICRO, "adjust_servings", {"day": "monday", "servings": 6})

    row = world.build().row(plan_id)

    edits = row["target"]["user_edits"]
    assert [e["type"] for e in edits] == ["swap_meal", "remove_meal"]
    assert edits[0] == {"type": "swap_meal", "day": "monday", "from": world.recipes[0], "to": world.recipes[4],
                        "timestamp": edits[0]["timestamp"]}
    assert row["n_user_edits"] == 2


# --- quarantine: every dirty kind -----------------------------------------------------------


def test_every_dirty_kind_is_quarantined_with_its_reason_and_counted(world):
    hid = world.household(LONG_AGO)
    good = world.plan(hid, MID, MID + SECOND)
    no_generation = world.accepted(new_id(), hid, MID)
    no_plan_id = world.event("plan_accepted", hid, MID, {"plan": {"meals": world.meals()}})
    bad_plan_id = world.event("plan_accepted", hid, MID, {"plan_id": "plan-42", "plan": {"meals": world.meals()}})
    no_payload = world.event("plan_accepted", hid, MID, None)
    plan_missing_meals = new_id()
    world.generated(plan_missing_meals, hid, MID)
    missing_meals = world.event("plan_accepted", hid, MID + SECOND, {"plan_id": plan_missing_meals, "plan": {}})
    plan_meals_not_list = new_id()
    world.generated(plan_meals_not_list, hid, MID)
    meals_not_list = world.event("plan_accepted", hid, MID + SECOND,
                                 {"plan_id": plan_meals_not_list, "plan": {"meals": {"monday": "x"}}})
    plan_meal_no_recipe = new_id()
    world.generated(plan_meal_no_recipe, hid, MID)
    meal_no_recipe = world.event("plan_accepted", hid, MID + SECOND,
                                 {"plan_id": plan_meal_no_recipe, "plan": {"meals": [{"day": "monday"}]}})
    unknown = new_id()
    unknown_recipe = world.recipes[:2] + [new_id()]
    world.generated(unknown, hid, MID)
    unknown_accepted = world.accepted(unknown, hid, MID + SECOND, recipes=unknown_recipe)
    proposed_unknown = new_id()
    world.generated(proposed_unknown, hid, MID, recipes=[new_id()])
    proposed_unknown_accepted = world.accepted(proposed_unknown, hid, MID + SECOND)
    bad_generated = world.event("plan_generated", hid, MID, {"plan_id": new_id(), "plan": {"meals": []}})

    built = world.build()

    assert built.plan_ids() == [good]
    assert built.reasons() == {
        no_generation: "no_generation_before_acceptance",
        no_plan_id: "invalid_plan_id",
        bad_plan_id: "invalid_plan_id",
        no_payload: "invalid_plan_id",
        missing_meals: "invalid_meals",
        meals_not_list: "invalid_meals",
        meal_no_recipe: "invalid_meals",
        unknown_accepted: "unknown_recipe_id",
        proposed_unknown_accepted: "unknown_recipe_id",
        bad_generated: "invalid_meals",
    }
    by_id = {r["event_id"]: r for r in built.quarantine.to_pylist()}
    assert unknown_recipe[2] in by_id[unknown_accepted]["reject_detail"]
    assert by_id[bad_plan_id]["payload"] and '"plan-42"' in by_id[bad_plan_id]["payload"]
    counts = built.counts
    assert counts["quarantined"] == 10 and counts["rows"] == 1
    assert counts["quarantined_by_reason"]["invalid_plan_id"] == 3
    assert counts["bad_share"] == pytest.approx(10 / 11, abs=1e-6)


def test_each_meal_of_both_plans_is_checked_and_the_first_failing_rule_names_it(world):
    hid = world.household(LONG_AGO)
    good_meals = world.meals()
    upper_case = new_id()  # a known recipe id in upper case is the same recipe
    world.event("plan_generated", hid, MID, {"plan_id": upper_case, "plan": {
        "meals": [dict(m, recipe_id=m["recipe_id"].upper()) for m in good_meals]}})
    world.accepted(upper_case, hid, MID + SECOND)

    def plan_with(proposed_meals, accepted_meals):
        plan_id = new_id()
        world.event("plan_generated", hid, MID, {"plan_id": plan_id, "plan": {"meals": proposed_meals}})
        return world.event("plan_accepted", hid, MID + SECOND, {"plan_id": plan_id, "plan": {"meals": accepted_meals}})

    meal_is_a_string = plan_with(good_meals, good_meals + ["monday"])
    numeric_recipe_id = plan_with(good_meals, good_meals + [{"day": "friday", "recipe_id": 7}])
    proposed_malformed = plan_with(good_meals[:1] + [{"day": "friday"}], good_meals)
    proposed_unknown = new_id()
    both_unknown = plan_with(good_meals + [{"recipe_id": proposed_unknown}], good_meals + [{"recipe_id": "zz-unknown"}])
    malformed_beats_unknown = plan_with(good_meals, [{"recipe_id": "zz-unknown"}, {"recipe_id": None}])

    built = world.build()

    assert built.plan_ids() == [upper_case]
    assert built.reasons() == {
        meal_is_a_string: "invalid_meals",
        numeric_recipe_id: "invalid_meals",
        proposed_malformed: "invalid_generated_plan",
        both_unknown: "unknown_recipe_id",
        malformed_beats_unknown: "invalid_meals",
    }
    detail = {r["event_id"]: r["reject_detail"] for r in built.quarantine.to_pylist()}
    for malformed in (meal_is_a_string, numeric_recipe_id, proposed_malformed, malformed_beats_unknown):
        assert detail[malformed] == "a meal is not an object with a string recipe_id"
    assert detail[both_unknown] == "not in app.recipes: " + ",".join(sorted([proposed_unknown, "zz-unknown"]))
    assert built.counts["quarantined_by_reason"]["unknown_recipe_id"] == 1


def test_unused_event_types_and_never_accepted_plans_make_no_row_and_are_counted(world):
    hid = world.household(LONG_AGO)
    accepted = world.plan(hid, MID, MID + SECOND)
    world.plan(hid, MID, None)                                       # never accepted
    late = world.plan(hid, END - timedelta(hours=1), END + SECOND)   # accepted after the window
    world.event("plan_viewed", hid, MID, {"plan_id": accepted})
    world.event("plan_shared", hid, MID, {"plan_id": accepted})

    built = world.build()

    assert built.plan_ids() == [accepted] and late not in built.plan_ids()
    assert built.counts["generated_never_accepted"] == 2
    assert built.counts["unused_event_types"] == {"plan_shared": 1, "plan_viewed": 1}
    assert built.quarantine.num_rows == 0


# --- purity ---------------------------------------------------------------------------------


def test_a_rebuild_writes_the_same_rows_in_the_same_order_whatever_the_parallelism(world):
    hids = [world.household(LONG_AGO) for _ in range(3)]
    for i in range(30):
        world.plan(hids[i % 3], MID + i * SECOND, MID + i * SECOND + timedelta(minutes=1))
    first, again, serial = world.build(parts=2), world.build(parts=2), world.build(parts=1)
    assert first.rows.equals(again.rows) and first.rows.equals(serial.rows)
    assert first.quarantine.equals(again.quarantine)
    assert (first.path / "training.parquet").read_bytes() == (again.path / "training.parquet").read_bytes()


def test_an_empty_window_builds_an_empty_table_with_the_full_schema(world):
    built = world.build()
    from include.dataset import schema

    assert built.rows.num_rows == 0 and built.rows.schema.names == [f[0] for f in schema.TRAINING_FIELDS]
    assert built.counts["bad_share"] == 0.0


def test_rows_out_of_plan_id_order_stop_the_build_before_anything_is_written():
    """The statement's order comes from its plan (no final sort); the build checks it per batch."""
    import pyarrow as pa

    from include.dataset.build import ExtractionOrderError, _check_plan_id_order

    assert _check_plan_id_order(pa.array(["0a", "0b", "f1"]), None) == "f1"
    assert _check_plan_id_order(pa.array([], pa.string()), "f1") == "f1"
    with pytest.raises(ExtractionOrderError, match="out of plan_id order"):
        _check_plan_id_order(pa.array(["0b", "0a"]), None)
    with pytest.raises(ExtractionOrderError):  # across batches, and never the same plan twice
        _check_plan_id_order(pa.array(["f1", "f2"]), "f1")
