"""Dataset rows -> (context text, proposed meal text) -> kept examples. Pure functions.

A proposed meal is *kept* when the accepted plan has the same recipe on the same day. The
context is only what the row's `input` holds (the state as of the plan time), so nothing
learned here can come from after the plan. Derived tokens (pantry overlap, prep time and
cost against the constraints, preference matches, excluded ingredients) are computed from
that same context, as the serving side can.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

REQUIRED_COLUMNS = ("plan_id", "household_id", "accepted_at", "input", "target")
RECIPE_COLUMNS = ("recipe_id", "cuisine", "prep_time", "cost", "ingredients", "tags")


class DatasetError(ValueError):
    """The dataset cannot be trained on; the message says why."""


@dataclass(frozen=True)
class Example:
    plan_id: str
    household_id: str
    recipe_id: str
    context: str
    meal: str
    label: int


def training_cutoff(dataset_version: str, holdout_days: int) -> datetime:
    """Rows accepted at or after this instant are held out for offline replay (DESIGN §3)."""
    if holdout_days < 0:
        raise DatasetError(f"holdout_days must be >= 0, got {holdout_days}")
    end = datetime.combine(datetime.strptime(dataset_version, "%Y-%m-%d").date(), time(0), tzinfo=UTC)
    return end - timedelta(days=holdout_days)


def _words(values) -> str:
    return " ".join(str(v).replace(" ", "_") for v in values)


def _bucket(value: float, edges: list[float]) -> int:
    return sum(value > edge for edge in edges)


def context_text(context: dict) -> str:
    household, constraints = context["household"], context["constraints"]
    pantry = sorted(item["name"] for item in context["pantry"]["items"])
    return (f"workflow {context.get('workflow_type')} mode {context.get('mode')} "
            f"size {household.get('size')} prefers {_words(household.get('preferences') or [])} "
            f"restrictions {_words(household.get('restrictions') or []) or 'none'} "
            f"budget {_bucket(float(constraints.get('budget') or 0), [50, 100, 150, 200, 300])} "
            f"maxprep {constraints.get('max_prep_time')} "
            f"excluded {_words(constraints.get('excluded_ingredients') or []) or 'none'} "
            f"pantry {_words(pantry)}")


def meal_text(recipe: dict, context: dict) -> str:
    household, constraints = context["household"], context["constraints"]
    ingredients = set(recipe["ingredients"])
    tags = set(recipe["tags"]) | {recipe["cuisine"]}
    pantry = {item["name"] for item in context["pantry"]["items"]}
    size = household.get("size") or 1
    per_meal_budget = float(constraints.get("budget") or 0) / 7 or 1.0
    cost_ratio = float(recipe["cost"]) * size / per_meal_budget
    prep_over = (recipe["prep_time"] or 0) - (constraints.get("max_prep_time") or 0)
    excluded_hits = ingredients & set(constraints.get("excluded_ingredients") or [])
    return (f"cuisine {recipe['cuisine']} tags {_words(sorted(tags))} ingredients {_words(sorted(ingredients))} "
            f"pantry_overlap {round(4 * len(ingredients & pantry) / max(len(ingredients), 1))} "
            f"prep_over {_bucket(prep_over, [0, 10, 20, 40])} cost_ratio {_bucket(cost_ratio, [0.8, 1.0, 1.3, 1.8])} "
            f"pref_match {len(tags & set(household.get('preferences') or []))} "
            f"excluded_hit {'yes' if excluded_hits else 'no'}")


def examples_from_rows(rows: list[dict], recipes: dict[str, dict]) -> list[Example]:
    """One example per proposed meal of each row, in row order then meal order."""
    examples = []
    for row in rows:
        context = json.loads(row["input"])
        accepted = json.loads(row["target"])["accepted_plan"]["meals"]
        kept = {(m["day"], m["recipe_id"]) for m in accepted}
        ctx = context_text(context)
        for meal in context["proposed_plan"]["meals"]:
            recipe = recipes.get(meal["recipe_id"].lower())
            if recipe is None:
                raise DatasetError(f"plan {row['plan_id']}: recipe {meal['recipe_id']} is not in recipes.parquet")
            examples.append(Example(row["plan_id"], row["household_id"], meal["recipe_id"].lower(), ctx,
                                    meal_text(recipe, context), int((meal["day"], meal["recipe_id"]) in kept)))
    return examples


def is_validation_household(household_id: str, val_share: float, seed: int) -> bool:
    """A stable hash split: a household is on one side only, whatever the row order."""
    digest = hashlib.sha256(f"{seed}:{household_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_share


def split_by_household(examples: list[Example], val_share: float, seed: int) -> tuple[list[Example], list[Example]]:
    if not 0 < val_share < 1:
        raise DatasetError(f"val_share must lie in (0, 1), got {val_share}")
    train, val = [], []
    for example in examples:
        (val if is_validation_household(example.household_id, val_share, seed) else train).append(example)
    return train, val


def recipe_index(recipe_rows: list[dict]) -> dict[str, dict]:
    index = {}
    for row in recipe_rows:
        index[row["recipe_id"].lower()] = {**row, "ingredients": json.loads(row["ingredients"]),
                                           "tags": json.loads(row["tags"])}
    return index
