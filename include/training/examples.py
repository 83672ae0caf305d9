"""Dataset rows -> labelled examples, and the household split. Pure functions.

A proposed meal is *kept* when the accepted plan has the same recipe on the same day. The
texts the model reads come from `include.core.features`, the contract it shares with the
registered model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from include.core.features import context_text, kept_flags, meal_text, proposed_meals

REQUIRED_COLUMNS = ("plan_id", "household_id", "accepted_at", "input", "target")


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
    """Rows accepted at or after this instant are held out for offline replay (docs/contracts.md, held-out days)."""
    if holdout_days < 0:
        raise DatasetError(f"holdout_days must be >= 0, got {holdout_days}")
    end = datetime.combine(datetime.strptime(dataset_version, "%Y-%m-%d").date(), time(0), tzinfo=UTC)
    return end - timedelta(days=holdout_days)


def examples_from_rows(rows: list[dict], recipes: dict[str, dict]) -> list[Example]:
    """One example per proposed meal of each row, in row order then meal order."""
    examples = []
    for row in rows:
        context, meals = proposed_meals(row["input"])
        ctx = context_text(context)
        for meal, label in zip(meals, kept_flags(meals, row["target"])):
            recipe = recipes.get(meal["recipe_id"].lower())
            if recipe is None:
                raise DatasetError(f"plan {row['plan_id']}: recipe {meal['recipe_id']} is not in recipes.parquet")
            examples.append(Example(row["plan_id"], row["household_id"], meal["recipe_id"].lower(), ctx,
                                    meal_text(recipe, context), label))
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


def shuffled_labels(examples: list[Example], seed: int) -> list[Example]:
    """The same examples with their labels permuted: a control that must learn nothing."""
    import random
    from dataclasses import replace

    labels = [e.label for e in examples]
    random.Random(seed).shuffle(labels)
    return [replace(e, label=label) for e, label in zip(examples, labels)]
