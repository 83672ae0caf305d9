"""Example building as tables: labels, the leak-free context, the household split, the cutoff."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.core.features import context_text, meal_text
from include.training.examples import (
    DatasetError,
    examples_from_rows,
    is_validation_household,
    split_by_household,
    training_cutoff,
)

RECIPES = {
    "r1": {"recipe_id": "r1", "cuisine": "italian", "prep_time": 20, "cost": 4.0,
           "ingredients": ["rice", "cheese"], "tags": ["quick"]},
    "r2": {"recipe_id": "r2", "cuisine": "thai", "prep_time": 60, "cost": 9.0,
           "ingredients": ["shrimp", "noodles"], "tags": ["spicy"]},
}
CONTEXT = {"household": {"id": "h1", "size": 2, "preferences": ["quick"], "restrictions": ["dairy-free"]},
           "pantry": {"items": [{"name": "rice", "quantity": 1, "unit": "kg"}]},
           "constraints": {"budget": 70, "max_prep_time": 30, "excluded_ingredients": ["shrimp"]},
           "workflow_type": "pantry-first", "mode": "autopilot", "previous_plan": None,
           "proposed_plan": {"meals": [{"day": "monday", "recipe_id": "r1", "servings": 2},
                                       {"day": "tuesday", "recipe_id": "r2", "servings": 2}]}}


def _row(accepted_meals, household="h1", plan="p1"):
    return {"plan_id": plan, "household_id": household, "input": json.dumps(CONTEXT),
            "target": json.dumps({"accepted_plan": {"meals": accepted_meals}, "user_edits": []})}


@pytest.mark.parametrize(("accepted", "labels"), [
    ([{"day": "monday", "recipe_id": "r1"}, {"day": "tuesday", "recipe_id": "r2"}], [1, 1]),
    ([{"day": "monday", "recipe_id": "r1"}], [1, 0]),                             # tuesday removed
    ([{"day": "monday", "recipe_id": "r2"}, {"day": "tuesday", "recipe_id": "r1"}], [0, 0]),  # swapped days
    ([], [0, 0]),
])
def test_a_proposed_meal_is_kept_when_the_same_recipe_stays_on_the_same_day(accepted, labels):
    assert [e.label for e in examples_from_rows([_row(accepted)], RECIPES)] == labels


def test_derived_tokens_come_from_the_context_only():
    quick, spicy = meal_text(RECIPES["r1"], CONTEXT).split(), meal_text(RECIPES["r2"], CONTEXT).split()
    assert "excludedhitno" in quick and "excludedhityes" in spicy
    assert "prepover0" in quick and "prepover5" in spicy  # 10 min under the limit; 30 over it
    assert "overlap5" in quick and "overlap0" in spicy  # tenths of the ingredients in the pantry
    assert "costratio0" in quick and "prefmatch1" in quick
    # each restriction paired with each ingredient, one word piece per pair: the model learns which clash
    assert {"dairyfreexcheese", "dairyfreexrice"} <= set(quick)
    assert "conflictsnone" in meal_text(RECIPES["r1"], {**CONTEXT, "household": {**CONTEXT["household"],
                                                                                "restrictions": []}}).split()


def test_every_value_is_a_token_that_names_its_field():
    """The model has no segment embeddings: rice in the pantry and rice in the recipe must be
    different tokens, not the same word at another position."""
    from include.training.modeling import train_tokenizer

    context, meal = context_text(CONTEXT), meal_text(RECIPES["r1"], CONTEXT)
    assert {"restrictiondairyfree", "pantryrice"} <= set(context.split())
    assert "ingredientrice" in meal.split() and "rice" not in (context + " " + meal).split()
    tokenizer = train_tokenizer([meal, context])
    tokens = tokenizer.tokenize(context, meal)
    assert {"pantryrice", "ingredientrice", "dairyfreexcheese"} <= set(tokens)
    assert not [token for token in tokens if token.startswith("##")]  # each word one piece, none split


def test_a_vocabulary_too_small_for_the_words_says_how_many_it_dropped(caplog):
    from include.training.modeling import train_tokenizer

    texts = [context_text(CONTEXT), meal_text(RECIPES["r1"], CONTEXT), meal_text(RECIPES["r2"], CONTEXT)]
    report = {}
    train_tokenizer(texts, report=report)
    assert report["tokenizer_words_dropped"] == 0 and report["tokenizer_words"] > 20
    words = report["tokenizer_words"]
    tokenizer = train_tokenizer(texts, vocab_size=len(train_tokenizer(texts)) - 3, report=report)
    assert report == {"tokenizer_words": words - 3, "tokenizer_words_dropped": 3}
    assert "the 3 rarest" in caplog.text and len(tokenizer.tokenize(texts[0] + " " + texts[1])) > len(
        (texts[0] + " " + texts[1]).split())  # the dropped words are spelled in pieces


def test_an_unknown_recipe_is_a_dataset_error():
    row = _row([])
    row["input"] = json.dumps({**CONTEXT, "proposed_plan": {"meals": [{"day": "monday", "recipe_id": "r9"}]}})
    with pytest.raises(DatasetError, match="r9"):
        examples_from_rows([row], RECIPES)


def test_households_never_straddle_the_split_and_the_split_is_stable():
    rows = [_row([], household=f"h{i}", plan=f"p{i}-{j}") for i in range(200) for j in range(3)]
    train, val = split_by_household(examples_from_rows(rows, RECIPES), 0.2, seed=7)
    assert not {e.household_id for e in train} & {e.household_id for e in val}
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3
    assert [is_validation_household(f"h{i}", 0.2, 7) for i in range(50)] == \
        [is_validation_household(f"h{i}", 0.2, 7) for i in range(50)]
    with pytest.raises(DatasetError):
        split_by_household([], 1.0, 7)


def test_training_cutoff_holds_out_the_last_days_of_the_version():
    assert training_cutoff("2026-11-23", 7) == datetime(2026, 11, 16, tzinfo=UTC)
    assert training_cutoff("2026-11-23", 0) == datetime(2026, 11, 23, tzinfo=UTC)
    with pytest.raises(DatasetError):
        training_cutoff("2026-11-23", -1)


def test_the_column_wise_examples_are_the_row_wise_ones_in_the_same_order_and_split():
    """What the trainer builds (Arrow columns, split while built, in small record batches) equals
    `examples_from_rows` + `split_by_household`, example for example."""
    import pyarrow as pa

    from include.training.examples import example_columns, split_columns, split_example_columns

    accepted = [[{"day": "monday", "recipe_id": "r1"}], [], [{"day": "tuesday", "recipe_id": "r2"}]]
    rows = [_row(accepted[(i + j) % 3], household=f"h{i}", plan=f"p{i}-{j}") for i in range(60) for j in range(3)]
    train, val = split_by_household(examples_from_rows(rows, RECIPES), 0.2, seed=7)
    table = pa.Table.from_pylist(rows)
    for columns in (split_example_columns(table, RECIPES, 0.2, seed=7, batch_rows=7),
                    split_columns(example_columns(table, RECIPES, 0.2, seed=7, batch_rows=7))):
        for expected, built in zip((train, val), columns):
            assert built.contexts.to_pylist() == [e.context for e in expected]
            assert built.meals.to_pylist() == [e.meal for e in expected]
            assert built.recipe_ids.to_pylist() == [e.recipe_id for e in expected]
            assert built.labels.tolist() == [e.label for e in expected]
    with pytest.raises(DatasetError, match="recipe r9"):
        bad = dict(CONTEXT, proposed_plan={"meals": [{"day": "monday", "recipe_id": "r9", "servings": 1}]})
        split_example_columns(pa.Table.from_pylist([{**_row([]), "input": json.dumps(bad)}]), RECIPES, 0.2, 7)
