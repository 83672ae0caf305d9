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


@dataclass
class ExampleColumns:
    """The examples of a dataset, column-wise: texts in Arrow string arrays (one buffer each, no
    Python object per example), labels and the validation split in NumPy. Memory is about the
    size of the texts, so it holds at a million rows where a list of `Example`s does not."""

    contexts: object        # pyarrow.ChunkedArray of str
    meals: object           # pyarrow.ChunkedArray of str
    recipe_ids: object      # pyarrow.ChunkedArray of str
    labels: object          # numpy int64
    is_validation: object   # numpy bool

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, mask) -> ExampleColumns:
        import numpy as np
        import pyarrow as pa

        index = pa.array(np.flatnonzero(mask))
        return ExampleColumns(self.contexts.take(index), self.meals.take(index), self.recipe_ids.take(index),
                              self.labels[mask], self.is_validation[mask])

    def text_chunks(self, size: int = 8192):
        """(contexts, meals) as lists of at most `size` strings each, in example order."""
        for start in range(0, len(self), size):
            yield (self.contexts.slice(start, size).to_pylist(), self.meals.slice(start, size).to_pylist())


class _ColumnsBuilder:
    """Appends examples batch by batch into Arrow chunks (one side of the split)."""

    def __init__(self):
        self.contexts, self.meals, self.recipe_ids, self.labels, self.validation = [], [], [], [], []
        self._batch: tuple[list, list, list, list, list] = ([], [], [], [], [])

    def add(self, context: str, meal: str, recipe_id: str, label: int, validation: bool) -> None:
        for column, value in zip(self._batch, (context, meal, recipe_id, label, validation)):
            column.append(value)

    def flush(self) -> None:
        import numpy as np
        import pyarrow as pa

        contexts, meals, recipe_ids, labels, validation = self._batch
        if contexts:
            self.contexts.append(pa.array(contexts, pa.string()))
            self.meals.append(pa.array(meals, pa.string()))
            self.recipe_ids.append(pa.array(recipe_ids, pa.string()))
            self.labels.append(np.asarray(labels, dtype=np.int64))
            self.validation.append(np.asarray(validation, dtype=bool))
        self._batch = ([], [], [], [], [])

    def build(self) -> ExampleColumns:
        import numpy as np
        import pyarrow as pa

        self.flush()
        return ExampleColumns(pa.chunked_array(self.contexts, pa.string()), pa.chunked_array(self.meals, pa.string()),
                              pa.chunked_array(self.recipe_ids, pa.string()),
                              np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64),
                              np.concatenate(self.validation) if self.validation else np.zeros(0, bool))


def _build_columns(table, recipes: dict[str, dict], val_share: float, seed: int, batch_rows: int,
                   split: bool) -> list[ExampleColumns]:
    if not 0 < val_share < 1:
        raise DatasetError(f"val_share must lie in (0, 1), got {val_share}")
    sides = [_ColumnsBuilder(), _ColumnsBuilder()] if split else [_ColumnsBuilder()]
    is_validation: dict[str, bool] = {}
    for batch in table.select(["plan_id", "household_id", "input", "target"]).to_batches(max_chunksize=batch_rows):
        columns = batch.to_pydict()
        for plan_id, household_id, row_input, row_target in zip(
                columns["plan_id"], columns["household_id"], columns["input"], columns["target"]):
            context, proposed = proposed_meals(row_input)
            ctx = context_text(context)
            if household_id not in is_validation:
                is_validation[household_id] = is_validation_household(household_id, val_share, seed)
            validation = is_validation[household_id]
            side = sides[int(validation)] if split else sides[0]
            for meal, label in zip(proposed, kept_flags(proposed, row_target)):
                recipe_id = meal["recipe_id"].lower()
                recipe = recipes.get(recipe_id)
                if recipe is None:
                    raise DatasetError(f"plan {plan_id}: recipe {meal['recipe_id']} is not in recipes.parquet")
                side.add(ctx, meal_text(recipe, context), recipe_id, label, validation)
        for side in sides:
            side.flush()
    return [side.build() for side in sides]


def example_columns(table, recipes: dict[str, dict], val_share: float, seed: int,
                    batch_rows: int = 2048) -> ExampleColumns:
    """`examples_from_rows` over an Arrow table, one record batch at a time (same examples, same
    order), with each example's side of the household split."""
    return _build_columns(table, recipes, val_share, seed, batch_rows, split=False)[0]


def split_example_columns(table, recipes: dict[str, dict], val_share: float, seed: int,
                          batch_rows: int = 2048) -> tuple[ExampleColumns, ExampleColumns]:
    """(training, validation) examples built straight into their side: no copy of the texts."""
    train, val = _build_columns(table, recipes, val_share, seed, batch_rows, split=True)
    return train, val


def split_columns(examples: ExampleColumns) -> tuple[ExampleColumns, ExampleColumns]:
    """(training, validation) examples: a household is on one side only."""
    return examples.take(~examples.is_validation), examples.take(examples.is_validation)


def shuffled_label_columns(examples: ExampleColumns, seed: int) -> ExampleColumns:
    """The same examples with their labels permuted (the negative control of `shuffled_labels`)."""
    import random
    from dataclasses import replace

    import numpy as np

    labels = examples.labels.tolist()
    random.Random(seed).shuffle(labels)
    return replace(examples, labels=np.asarray(labels, dtype=np.int64))
