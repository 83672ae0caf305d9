"""Seeded generator of realistic planner data, bulk-loaded into PostgreSQL with COPY.

    python -m include.events.generate --households 2000 --weeks 8 --seed 7 --reset

What it makes (docs/contracts.md, source schema): recipes; households whose profile, pantry
and constraints change over time (so the as-of join matters); weekly plans (`plan_generated`,
sometimes regenerated, viewed, then mostly accepted with the household's swaps, removals and
serving changes as `app.plan_edits`, some edits landing after acceptance); and a configurable
dirty share (duplicate deliveries, second acceptances, acceptances without generation, payloads
without plan_id or meals, unknown recipe ids, unknown households, unknown event types).

Which proposed meals a household keeps follows a known model of the state *as of the plan
time* (restrictions, excluded ingredients, prep time, budget, pantry overlap, preferences,
workflow_type, mode); its true probability is written to `sim.keep_truth`, which the dataset
code never reads. The output is a pure function of the arguments.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from include.events.db import schema_sql

DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WORKFLOW_TYPES = (["plan-first", "meal-first", "pantry-first"], [0.6, 0.3, 0.1])
MODES = (["autopilot", "assisted"], [0.55, 0.45])
CUISINES = ["italian", "mexican", "indian", "thai", "american", "mediterranean", "japanese", "chinese"]
PROTEINS = {
    "meat": ["chicken", "beef", "pork", "bacon", "sausage"],
    "fish": ["salmon", "tuna", "shrimp"],
    "veg": ["tofu", "lentils", "chickpeas", "black beans", "eggs", "paneer"],
}
BASES = ["rice", "pasta", "noodles", "bread", "tortillas", "potatoes", "quinoa", "couscous"]
VEGETABLES = ["tomatoes", "onion", "garlic", "spinach", "broccoli", "carrots", "peppers", "mushrooms",
              "zucchini", "cabbage", "corn", "avocado", "eggplant", "peas"]
EXTRAS = ["cheese", "milk", "butter", "yogurt", "feta", "peanuts", "almonds", "cashews", "soy sauce",
          "coconut milk", "curry paste", "ginger", "lemon", "basil", "cilantro", "chili", "flour"]
ALL_INGREDIENTS = sorted({i for v in PROTEINS.values() for i in v} | set(BASES) | set(VEGETABLES) | set(EXTRAS))
UNITS = {"rice": "kg", "pasta": "kg", "noodles": "pack", "flour": "kg", "milk": "l", "coconut milk": "can",
         "soy sauce": "bottle", "curry paste": "jar"}
RESTRICTION_INGREDIENTS = {
    "nut-allergy": {"peanuts", "almonds", "cashews"},
    "gluten-free": {"pasta", "noodles", "bread", "tortillas", "couscous", "flour", "soy sauce"},
    "dairy-free": {"cheese", "milk", "butter", "yogurt", "feta", "paneer"},
    "shellfish-allergy": {"shrimp"},
    "no-pork": {"pork", "bacon", "sausage"},
    "vegetarian": set(PROTEINS["meat"]) | set(PROTEINS["fish"]),
}
PREFERENCES = ["vegetarian", "spicy", "quick", "low-carb", "kid-friendly", "healthy", *CUISINES]
POLICY_VERSIONS = ["policy-v1", "policy-v2"]
EDIT_SWAP, EDIT_SERVINGS, EDIT_REMOVE = "swap_meal", "adjust_servings", "remove_meal"
DIRTY_KINDS = ["duplicate_delivery", "duplicate_acceptance", "acceptance_without_generation",
               "missing_plan_id", "missing_meals", "unknown_recipe", "unknown_household", "unknown_event_type"]


@dataclass(frozen=True, eq=False)  # identity hash: cheap cache keys over the catalogue
class Recipe:
    recipe_id: str
    name: str
    cuisine: str
    prep_time: int
    cost: float  # per serving
    ingredients: frozenset[str]
    tags: frozenset[str]


@dataclass
class HouseholdState:
    size: int
    preferences: list[str]
    restrictions: list[str]
    pantry: list[dict]
    budget: float
    max_prep_time: int
    excluded: list[str]
    affinity: float  # persistent household effect, unobserved


@dataclass
class Tables:
    """Rows as lines of COPY text format (tab-separated, `\\N` for NULL), written as they are
    made: formatting a row once is most of what loading costs on the Python side."""
    events: list[str] = field(default_factory=list)
    households: list[str] = field(default_factory=list)
    pantry: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)

    @staticmethod
    def fields(line: str) -> tuple[str | None, ...]:
        """A line back as its values (text; None for NULL)."""
        return tuple(None if f == NULL else f.replace("\\\\", "\\") for f in line.split("\t"))


def _uuid(rng: random.Random) -> str:
    """A random (version 4) UUID drawn from the seeded stream; formatted by hand for speed."""
    h = f"{(rng.getrandbits(128) & _UUID_CLEAR) | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)


_encode = msgspec.json.Encoder().encode


def _dumps(value) -> str:
    return _encode(value).decode()


NULL = "\\N"


def _json_field(value) -> str:
    """JSON as a COPY text field (tabs and newlines are escaped by JSON itself)."""
    return _copy_field(_dumps(value))


def make_recipes(seed: int, count: int = 240) -> tuple[Recipe, ...]:
    rng = random.Random(f"recipes-{seed}")
    recipes = []
    for index in range(count):
        cuisine = CUISINES[index % len(CUISINES)]
        kind = rng.choices(["meat", "fish", "veg"], [0.45, 0.15, 0.4])[0]
        ingredients = {rng.choice(PROTEINS[kind]), rng.choice(BASES)}
        ingredients |= set(rng.sample(VEGETABLES, rng.randint(2, 4)))
        ingredients |= set(rng.sample(EXTRAS, rng.randint(1, 3)))
        prep_time = int(rng.choice([10, 15, 20, 25, 30, 40, 45, 60, 75, 90]))
        cost = round(rng.uniform(2.0, 9.0) + (2.5 if kind == "fish" else 1.0 if kind == "meat" else 0.0), 2)
        tags = {cuisine}
        if kind == "veg":
            tags.add("vegetarian")
        if prep_time <= 20:
            tags.add("quick")
        if "chili" in ingredients or "curry paste" in ingredients:
            tags.add("spicy")
        if not ingredients & set(BASES[:5]):
            tags.add("low-carb")
        if rng.random() < 0.3:
            tags.add("kid-friendly")
        if kind != "meat" and len(ingredients & set(VEGETABLES)) >= 3:
            tags.add("healthy")
        name = f"{cuisine.title()} {sorted(ingredients & set(PROTEINS[kind]))[0]} with {sorted(ingredients & set(BASES))[0]}"
        recipes.append(Recipe(_uuid(rng), f"{name} #{index}", cuisine, prep_time, cost,
                              frozenset(ingredients), frozenset(tags)))
    return tuple(recipes)


@functools.cache
def _banned(restrictions: tuple[str, ...]) -> frozenset[str]:
    return frozenset().union(*(RESTRICTION_INGREDIENTS.get(r, set()) for r in restrictions))


def banned_ingredients(restrictions: list[str]) -> frozenset[str]:
    return _banned(tuple(restrictions))


@functools.cache
def _allowed_pool(recipes: tuple[Recipe, ...], restrictions: tuple[str, ...]) -> tuple[Recipe, ...]:
    banned = _banned(restrictions)
    return tuple(r for r in recipes if r.ingredients.isdisjoint(banned))


def keep_probability(recipe: Recipe, state: HouseholdState, workflow_type: str, mode: str) -> float:
    """The true chance a household keeps a proposed meal, from its state at plan time."""
    return keep_probabilities([recipe], state, workflow_type, mode)[0]


def keep_probabilities(recipes: list[Recipe], state: HouseholdState, workflow_type: str, mode: str) -> list[float]:
    """keep_probability for each of a plan's meals, with the state's sets built once per plan."""
    banned = banned_ingredients(state.restrictions)
    excluded = frozenset(state.excluded)
    pantry = {item["name"] for item in state.pantry}
    preferences = set(state.preferences)
    autopilot = mode == "autopilot"
    base = 0.9 + state.affinity + (0.4 if autopilot else 0.0)
    per_meal_budget = state.budget / 7.0
    pantry_factor = 1.8 if workflow_type == "pantry-first" else 1.0
    out = []
    for recipe in recipes:
        logit = base
        if not recipe.ingredients.isdisjoint(banned):
            logit -= 3.5
        if not recipe.ingredients.isdisjoint(excluded):
            logit -= 2.5
        if recipe.prep_time > state.max_prep_time:
            logit -= 0.06 * (recipe.prep_time - state.max_prep_time) * (1.5 if autopilot else 1.0)
        meal_cost = recipe.cost * state.size
        if meal_cost > per_meal_budget:
            logit -= 1.5 * (meal_cost / per_meal_budget - 1.0)
        overlap = len(recipe.ingredients & pantry) / len(recipe.ingredients)
        logit += 3.0 * overlap * pantry_factor - 0.8
        logit += 0.9 * len((recipe.tags | {recipe.cuisine}) & preferences)
        out.append(1.0 / (1.0 + math.exp(-logit)))
    return out


def _random_state(rng: random.Random) -> HouseholdState:
    size = rng.choices([1, 2, 3, 4, 5, 6], [0.15, 0.3, 0.2, 0.2, 0.1, 0.05])[0]
    state = HouseholdState(
        size=size,
        preferences=sorted(rng.sample(PREFERENCES, rng.randint(1, 3))),
        restrictions=sorted(rng.sample(list(RESTRICTION_INGREDIENTS), rng.choices([0, 1, 2], [0.45, 0.4, 0.15])[0])),
        pantry=[],
        budget=0.0,
        max_prep_time=0,
        excluded=[],
        affinity=rng.gauss(0.0, 0.35),
    )
    _new_pantry(rng, state)
    _new_constraints(rng, state)
    return state


def _new_pantry(rng: random.Random, state: HouseholdState) -> None:
    names = sorted(rng.sample(ALL_INGREDIENTS, rng.randint(4, 16)))
    state.pantry = [{"name": n, "quantity": rng.randint(1, 6), "unit": UNITS.get(n, "count")} for n in names]


def _new_constraints(rng: random.Random, state: HouseholdState) -> None:
    state.budget = float(round(rng.uniform(12.0, 40.0) * state.size * 7 / 3.0))
    state.max_prep_time = int(rng.choice([15, 20, 30, 45, 60, 90]))
    state.excluded = sorted(rng.sample(ALL_INGREDIENTS, rng.choices([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1])[0]))


def _propose(rng: random.Random, recipes: tuple[Recipe, ...], state: HouseholdState, policy: str, n_meals: int) -> list[Recipe]:
    """The serving policy's proposal: v2 avoids restricted recipes most of the time."""
    if policy == "policy-v2":
        pool = _allowed_pool(recipes, tuple(state.restrictions)) if rng.random() < 0.7 else recipes
        if len(pool) < n_meals:
            pool = recipes
    else:
        pool = recipes
    return rng.sample(pool, n_meals)


class _Emitter:
    """Collects rows for one household; state tables get a row per change."""

    def __init__(self, tables: Tables, household_id: str):
        self.t = tables
        self.hid = household_id

    def household(self, at: datetime, s: HouseholdState) -> None:
        self.t.households.append(f"{self.hid}\t{at.isoformat()}\t{s.size}\t{_json_field(s.preferences)}\t"
                                 f"{_json_field(s.restrictions)}")

    def pantry(self, at: datetime, s: HouseholdState) -> None:
        self.t.pantry.append(f"{self.hid}\t{at.isoformat()}\t{_json_field(s.pantry)}")

    def constraints(self, at: datetime, s: HouseholdState) -> None:
        self.t.constraints.append(f"{self.hid}\t{at.isoformat()}\t{s.budget:.2f}\t{s.max_prep_time}\t"
                                  f"{_json_field(s.excluded)}")

    def event(self, event_id: str, event_type: str, at: datetime, context: str | None, payload: dict | None,
              unit_id: str | None = None) -> None:
        """`context` comes encoded (one plan's events share it); `payload` is encoded here."""
        self.t.events.append(f"{event_id}\t{event_type}\t{unit_id or self.hid}\t{at.isoformat()}\t"
                             f"{NULL if context is None else context}\t"
                             f"{NULL if payload is None else _json_field(payload)}")


def simulate_household(index: int, seed: int, start: datetime, weeks: int, recipes: tuple[Recipe, ...],
                       dirty_share: float, tables: Tables) -> None:
    rng = random.Random(f"household-{seed}-{index}")
    hid = _uuid(rng)
    out = _Emitter(tables, hid)
    state = _random_state(rng)
    born = start - timedelta(days=rng.uniform(20, 400))
    out.household(born, state)
    out.pantry(born, state)
    out.constraints(born, state)
    rollout = rng.random()
    for week in range(weeks):
        plans, plan_time, changes = draw_week(rng, start + timedelta(days=7 * week))
        for at, kind in [c for c in changes if c[0] <= plan_time]:
            _apply_change(rng, out, state, kind, at)
        if plans:
            _simulate_plan(rng, out, week, weeks, plan_time, state, recipes, rollout, dirty_share)
        for at, kind in [c for c in changes if c[0] > plan_time]:
            _apply_change(rng, out, state, kind, at)


def draw_week(rng: random.Random, week_start: datetime) -> tuple[bool, datetime, list[tuple[datetime, str]]]:
    """A household's week: (whether it plans, the plan time, its state changes in time order).

    State changes land at random times in the week, some just before the plan and some just
    after it. Only those before the plan time shape the keep truth, exactly what a correct
    as-of join gives the dataset; a leaky join would see the later ones.
    """
    plans = rng.random() < 0.85
    plan_time = week_start + timedelta(seconds=rng.uniform(3600, 6.5 * 86400))
    changes = []
    if rng.random() < 0.35:
        changes.append((week_start + timedelta(seconds=rng.uniform(0, 7 * 86400)), "pantry"))
    if rng.random() < 0.1:
        changes.append((week_start + timedelta(seconds=rng.uniform(0, 7 * 86400)), "constraints"))
    if rng.random() < 0.05:
        changes.append((week_start + timedelta(seconds=rng.uniform(0, 7 * 86400)), "household"))
    changes.sort(key=lambda change: change[0])
    return plans, plan_time, changes


def _apply_change(rng: random.Random, out: _Emitter, state: HouseholdState, kind: str, at: datetime) -> None:
    if kind == "pantry":
        _new_pantry(rng, state)
        out.pantry(at, state)
    elif kind == "constraints":
        _new_constraints(rng, state)
        out.constraints(at, state)
    else:
        state.size = max(1, min(8, state.size + rng.choice([-1, 1])))
        state.preferences = sorted(rng.sample(PREFERENCES, rng.randint(1, 3)))
        out.household(at, state)


def _simulate_plan(rng: random.Random, out: _Emitter, week: int, weeks: int, plan_time: datetime,
                   state: HouseholdState, recipes: tuple[Recipe, ...], rollout: float, dirty_share: float) -> None:
    """One plan from the state in effect at `plan_time`."""
    workflow_type = rng.choices(*WORKFLOW_TYPES)[0]
    mode = rng.choices(*MODES)[0]
    policy = POLICY_VERSIONS[1] if rollout < (week + 1) / weeks else POLICY_VERSIONS[0]
    context = _json_field({"workflow_type": workflow_type, "mode": mode, "policy_version_id": policy})
    plan_id = _uuid(rng)
    days = sorted(rng.sample(range(7), rng.randint(5, 7)))
    dirty = rng.choice(DIRTY_KINDS) if rng.random() < dirty_share else None
    # A unit the app has no state for (e.g. deleted profile): its plans must be quarantined.
    unit_id = _uuid(rng) if dirty == "unknown_household" else None

    if rng.random() < 0.1:  # an earlier proposal for the same plan, replaced by a regeneration
        first = _propose(rng, recipes, state, policy, len(days))
        out.event(_uuid(rng), "plan_generated", plan_time - timedelta(minutes=rng.uniform(5, 180)), context,
                  {"plan_id": plan_id, "plan": {"meals": [
                      {"day": DAYS[d], "recipe_id": r.recipe_id, "servings": state.size} for d, r in zip(days, first)]}},
                  unit_id=unit_id)
    proposed = _propose(rng, recipes, state, policy, len(days))
    emit_plan(rng, out, plan_time, state, recipes, context, plan_id, days, proposed, workflow_type, mode, dirty, unit_id)


def emit_plan(rng: random.Random, out: _Emitter, plan_time: datetime, state: HouseholdState,
              recipes: tuple[Recipe, ...], context: str, plan_id: str, days: list[int], proposed: list[Recipe],
              workflow_type: str, mode: str, dirty: str | None = None, unit_id: str | None = None) -> list[float]:
    """A proposed plan's rows from its generation on: the `plan_generated` event, the keep truth of
    each proposed meal (`sim.keep_truth`), views, and (most of the time) the acceptance with the
    meals the household keeps by the truth model, swaps, removes or re-serves (`app.plan_edits`).
    `context` comes encoded (all of the plan's events carry it). Returns the true keep probabilities."""
    proposed_meals = [{"day": DAYS[d], "recipe_id": r.recipe_id, "servings": state.size} for d, r in zip(days, proposed)]
    if dirty != "acceptance_without_generation":
        out.event(_uuid(rng), "plan_generated", plan_time, context, {"plan_id": plan_id, "plan": {"meals": proposed_meals}},
                  unit_id=unit_id)
    p_keeps = keep_probabilities(proposed, state, workflow_type, mode)
    out.t.truth.extend([f"{plan_id}\t{recipe.recipe_id}\t{p_keep!r}" for recipe, p_keep in zip(proposed, p_keeps)])

    for _ in range(rng.randint(0, 2)):
        out.event(_uuid(rng), "plan_viewed", plan_time + timedelta(minutes=rng.uniform(1, 120)), context, {"plan_id": plan_id})
    if dirty == "unknown_event_type":
        out.event(_uuid(rng), "plan_shared", plan_time + timedelta(minutes=rng.uniform(1, 60)), context, {"plan_id": plan_id})

    if rng.random() < 0.08:  # never accepted
        return p_keeps
    accepted_at = plan_time + timedelta(minutes=min(2880.0, rng.expovariate(1 / 180.0) + 1.0))
    accepted_meals, edits = [], []
    for meal, recipe, p_keep in zip(proposed_meals, proposed, p_keeps):
        edit_at = plan_time + (accepted_at - plan_time) * rng.uniform(0.05, 0.95)
        if rng.random() < p_keep:
            if rng.random() < 0.15:
                servings = max(1, state.size + rng.choice([-1, 1, 2]))
                accepted_meals.append({**meal, "servings": servings})
                edits.append((edit_at, EDIT_SERVINGS, {"day": meal["day"], "servings": servings}))
            else:
                accepted_meals.append(dict(meal))
        elif rng.random() < 0.7:
            replacement = rng.choice(recipes)
            accepted_meals.append({**meal, "recipe_id": replacement.recipe_id})
            edits.append((edit_at, EDIT_SWAP, {"day": meal["day"], "from": recipe.recipe_id, "to": replacement.recipe_id}))
        else:
            edits.append((edit_at, EDIT_REMOVE, {"day": meal["day"], "from": recipe.recipe_id}))
    if rng.random() < 0.1 and accepted_meals:  # an edit after acceptance: must not reach the row
        meal = rng.choice(accepted_meals)
        edits.append((accepted_at + timedelta(hours=rng.uniform(1, 48)), EDIT_SERVINGS,
                      {"day": meal["day"], "servings": meal["servings"] + 1}))
    for edit_at, edit_type, details in edits:
        out.t.edits.append(f"{_uuid(rng)}\t{plan_id}\t{out.hid}\t{edit_at.isoformat()}\t{edit_type}\t"
                           f"{_json_field(details)}")

    payload: dict = {"plan_id": plan_id, "plan": {"meals": accepted_meals}}
    if dirty == "missing_plan_id":
        payload.pop("plan_id")
    elif dirty == "missing_meals":
        payload["plan"] = {}
    elif dirty == "unknown_recipe" and accepted_meals:
        payload["plan"]["meals"][0] = {**accepted_meals[0], "recipe_id": _uuid(rng)}
    acceptance_id = _uuid(rng)
    out.event(acceptance_id, "plan_accepted", accepted_at, context, payload, unit_id=unit_id)
    if dirty == "duplicate_delivery":
        out.event(acceptance_id, "plan_accepted", accepted_at, context, payload, unit_id=unit_id)
    elif dirty == "duplicate_acceptance":
        out.event(_uuid(rng), "plan_accepted", accepted_at + timedelta(minutes=rng.uniform(1, 600)), context, payload,
                  unit_id=unit_id)
    return p_keeps


TABLE_COLUMNS = {
    "app.households": "household_id, valid_from, size, preferences, restrictions",
    "app.pantry_snapshots": "household_id, valid_from, items",
    "app.constraints": "household_id, valid_from, budget, max_prep_time, excluded_ingredients",
    "app.plan_edits": 'edit_id, plan_id, household_id, "timestamp", edit_type, details',
    "sim.keep_truth": "plan_id, recipe_id, p_keep",
    "exp.events": 'event_id, event_type, unit_id, "timestamp", context, payload',
}
SOURCE_TABLES = ["app.recipes", *TABLE_COLUMNS]
# Built once after a bulk load (sorting once beats inserting random UUIDs into B-trees row by
# row); schema.sql recreates the indexes, PRIMARY_KEYS the keys (as schema.sql declares them).
SECONDARY_INDEXES = ["exp.events_type_time_idx", "exp.events_plan_idx", "exp.events_unit_type_time_idx",
                     "exp.events_time_idx", "app.plan_edits_plan_time_idx"]
PRIMARY_KEYS = {
    "app.households": ("households_pkey", "household_id, valid_from"),
    "app.pantry_snapshots": ("pantry_snapshots_pkey", "household_id, valid_from"),
    "app.constraints": ("constraints_pkey", "household_id, valid_from"),
    "app.plan_edits": ("plan_edits_pkey", "edit_id"),
    "sim.keep_truth": ("keep_truth_pkey", "plan_id, recipe_id"),
}
CHUNK_HOUSEHOLDS = 2500


def generate(households: int, weeks: int, seed: int, end: datetime, dirty_share: float,
             first_household: int = 0) -> tuple[tuple[Recipe, ...], Tables]:
    """All rows for households [first_household, first_household + households), in memory."""
    start = end - timedelta(days=7 * weeks)
    recipes = make_recipes(seed)
    tables = Tables()
    for index in range(first_household, first_household + households):
        simulate_household(index, seed, start, weeks, recipes, dirty_share, tables)
    return recipes, tables


def _copy_field(value) -> str:
    if value is None:
        return NULL
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\") if "\\" in text else text


def _tsv(rows: list[tuple]) -> str:
    """COPY text format: no quoting needed (our JSON has no raw tab or newline; backslashes
    are escaped), which makes it several times cheaper to write than CSV."""
    if not rows:
        return ""
    return "\n".join("\t".join(map(_copy_field, row)) for row in rows) + "\n"


def _lines(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _generate_chunk(job: tuple[int, int, int, int, datetime, float]) -> dict[str, str]:
    """A worker's share: CSV text per table (cheap to send back to the loading process)."""
    first, count, weeks, seed, end, dirty_share = job
    _, tables = generate(count, weeks, seed, end, dirty_share, first_household=first)
    return {
        "app.households": _lines(tables.households),
        "app.pantry_snapshots": _lines(tables.pantry),
        "app.constraints": _lines(tables.constraints),
        "app.plan_edits": _lines(tables.edits),
        "sim.keep_truth": _lines(tables.truth),
        "exp.events": _lines(tables.events),
    }


def generate_and_load(dsn: str, households: int, weeks: int, seed: int, end: datetime, dirty_share: float,
                      reset: bool, workers: int | None = None) -> dict[str, int]:
    """Generate in worker processes and COPY each chunk as it arrives, in one transaction.

    Rows are the same whatever the number of workers: each household has its own seeded stream.
    """
    from concurrent.futures import ProcessPoolExecutor

    from include.events.db import apply_schema, connect

    apply_schema(dsn)
    jobs = [(first, min(CHUNK_HOUSEHOLDS, households - first), weeks, seed, end, dirty_share)
            for first in range(0, households, CHUNK_HOUSEHOLDS)]
    counts = dict.fromkeys(SOURCE_TABLES, 0)
    with connect(dsn) as conn, conn.cursor() as cur:
        existing = cur.execute("SELECT count(*) FROM exp.events").fetchone()[0]
        if existing and not reset:
            raise SystemExit(
                f"exp.events already holds {existing:,} rows; pass --reset to replace the generated data "
                "(it truncates the source tables of this database)")
        cur.execute("TRUNCATE " + ", ".join(SOURCE_TABLES))
        # Sorting for the keys and indexes built after the load fits in memory (the default 64 MB spills).
        cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
        for index in SECONDARY_INDEXES:
            cur.execute(f"DROP INDEX IF EXISTS {index}")
        for table, (constraint, _) in PRIMARY_KEYS.items():
            cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}")
        recipes = make_recipes(seed)
        _copy_text(cur, "app.recipes", "recipe_id, name, cuisine, prep_time, cost, ingredients, tags", _tsv(
            [(r.recipe_id, r.name, r.cuisine, r.prep_time, f"{r.cost:.2f}", _dumps(sorted(r.ingredients)),
              _dumps(sorted(r.tags))) for r in recipes]))
        counts["app.recipes"] = len(recipes)
        with ProcessPoolExecutor(max_workers=workers or min(len(jobs), os.cpu_count() or 1)) as pool:
            for chunk in pool.map(_generate_chunk, jobs):
                for table, text in chunk.items():
                    _copy_text(cur, table, TABLE_COLUMNS[table], text)
                    counts[table] += text.count("\n")
        for table, (constraint, columns) in PRIMARY_KEYS.items():
            cur.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} PRIMARY KEY ({columns})")
        cur.execute(schema_sql())  # recreates the secondary indexes
        conn.commit()
    with connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE " + ", ".join(SOURCE_TABLES))
    return counts


def _copy_text(cur, table: str, columns: str, text: str) -> None:
    # FREEZE: the tables were truncated in this transaction, so rows can be written frozen and the
    # pages marked all-visible (no hint-bit writes or vacuum on the first reads).
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FREEZE)") as copy:
        copy.write(text)


def last_monday(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=midnight.weekday())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from include.core.config import settings

    parser = argparse.ArgumentParser(prog="python -m include.events.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=settings().events_dsn, help="PostgreSQL DSN (default: PLANNER_EVENTS_DSN)")
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end", type=lambda s: datetime.fromisoformat(s).replace(tzinfo=UTC), default=None,
                        help="exclusive end of the simulated time, YYYY-MM-DD (default: the last Monday 00:00 UTC)")
    parser.add_argument("--dirty-share", type=float, default=0.02, help="share of plans with one dirty kind")
    parser.add_argument("--reset", action="store_true", help="replace existing data in the source tables")
    parser.add_argument("--adopt-database", action="store_true",
                        help="allow a database this project did not create (its source tables are replaced)")
    parser.add_argument("--workers", type=int, default=None, help="generator processes (default: one per core)")
    args = parser.parse_args(argv)
    if args.households < 1 or args.weeks < 1:
        parser.error("--households and --weeks must be positive")
    if not 0.0 <= args.dirty_share <= 1.0:
        parser.error("--dirty-share must lie in [0, 1]")
    args.end = args.end or last_monday()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from include.core.local_postgres import NotOurDatabase, claim_demo_database

    try:  # with or without --reset the load truncates every source table: only in a database of ours
        args.dsn = claim_demo_database(args.dsn, adopt=args.adopt_database)
    except NotOurDatabase as refusal:
        print(f"refused: {refusal}".replace("make lifecycle ARGS=--adopt-database", "--adopt-database"),
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    counts = generate_and_load(args.dsn, args.households, args.weeks, args.seed, args.end, args.dirty_share,
                               reset=args.reset, workers=args.workers)
    print(f"generated and loaded {counts['exp.events']:,} events for {args.households:,} households over "
          f"{args.weeks} weeks ending {args.end.date()} (seed {args.seed}) in {time.perf_counter() - started:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
