"""Validation decides publication: the GX suite on the rows and the bad-share limit. A failed
check names itself, and nothing is published."""
from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from include.core import names, storage
from include.dataset.pipeline import build_validate_publish
from include.dataset.validate import DatasetValidationError, check_bad_share, validate_version
from include.dataset.window import resolve_window
from tests.dataset.world import END, SECOND, World

WINDOW = resolve_window("2026-11-23", 28)
MID = END - timedelta(days=10)


@pytest.fixture(autouse=True)
def _own_storage_root(storage_root):
    return storage_root


@pytest.fixture()
def built(clean_source):
    world = World(clean_source)
    hid = world.household(MID - timedelta(days=100))
    for i in range(5):
        world.plan(hid, MID + i * SECOND, MID + i * SECOND + timedelta(minutes=3))
    return world.build()


def _rewrite(path, column: str, values) -> None:
    table = pq.read_table(path / names.DATASET_TRAINING_FILE)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, path / names.DATASET_TRAINING_FILE)


def test_a_good_build_passes_and_the_result_is_recorded(built):
    validation = validate_version(built.path, WINDOW, built.counts)
    assert validation.success, validation.failures
    assert validation.document["great_expectations"]["statistics"]["unsuccessful_expectations"] == 0
    assert validation.document["great_expectations"]["statistics"]["evaluated_expectations"] >= 20


@pytest.mark.parametrize(("column", "corrupt", "expectation"), [
    ("accepted_at", lambda v: [v[0] + timedelta(days=60)] + v[1:], "expect_column_values_to_be_between"),
    ("plan_id", lambda v: [v[1]] + v[1:], "expect_column_values_to_be_unique"),
    ("input", lambda v: ["{not json"] + v[1:], "expect_column_values_to_be_json_parseable"),
    ("pantry_valid_from", lambda v: [v[0] + timedelta(days=365)] + v[1:],
     "expect_column_pair_values_a_to_be_greater_than_b"),
    ("household_size", lambda v: [0] + v[1:], "expect_column_values_to_be_between"),
])
def test_a_broken_row_fails_validation_naming_the_expectation(built, column, corrupt, expectation):
    values = pq.read_table(built.path / names.DATASET_TRAINING_FILE, columns=[column])[column].to_pylist()
    _rewrite(built.path, column, corrupt(values))
    validation = validate_version(built.path, WINDOW, built.counts)
    assert not validation.success
    assert any(f.startswith(expectation) and column in f for f in validation.failures), validation.failures


def test_results_are_paired_with_their_expectations_whatever_the_suite_order(built, monkeypatch):
    # GX validates grouped by column: a suite out of column order must still name the check that failed
    from include.dataset import validate

    definition = validate.load_suite_definition()
    expectations = list(definition["expectations"])
    columns = [e.get("kwargs", {}).get("column") for e in expectations]
    split = next(i for i, c in enumerate(columns) if c and columns.count(c) > 1)  # a column with several checks
    expectations.append(expectations.pop(split))  # ... one of them now last, apart from the others
    shuffled = {**definition, "expectations": expectations}
    monkeypatch.setattr(validate, "load_suite_definition", lambda: shuffled)
    column = columns[split]
    values = pq.read_table(built.path / names.DATASET_TRAINING_FILE, columns=["household_size"])["household_size"]
    _rewrite(built.path, "household_size", [0] + values.to_pylist()[1:])

    validation = validate_version(built.path, WINDOW, built.counts)

    assert not validation.success and column != "household_size"
    assert validation.failures and all(f.startswith("expect_column_values_to_be_between") and "household_size" in f
                                       for f in validation.failures), validation.failures


def test_bad_share_over_the_limit_fails_with_the_counts():
    counts = {"bad_share": 0.25, "max_bad_share": 0.05, "quarantined": 2, "rows": 6,
              "quarantined_by_reason": {"invalid_plan_id": 2, "invalid_meals": 0}}
    message = check_bad_share(counts)
    assert "25.00%" in message and "5.00%" in message and "invalid_plan_id=2" in message
    assert "invalid_meals" not in message
    assert check_bad_share({**counts, "bad_share": 0.05}) is None


def test_failed_validation_publishes_nothing(clean_source):
    world = World(clean_source)
    hid = world.household(MID - timedelta(days=100))
    world.plan(hid, MID, MID + SECOND)
    world.event("plan_accepted", hid, MID, {"plan": {}})  # one bad of two candidates: 50%

    with pytest.raises(DatasetValidationError, match="bad share 50.00% exceeds the limit 5.00%"):
        build_validate_publish(clean_source, WINDOW, max_bad_share=0.05)
    assert not storage.is_complete(storage.dataset_uri(WINDOW.version))
    assert not storage.local_path(storage.dataset_uri(WINDOW.version)).exists()


def test_an_empty_window_fails_validation_and_publishes_nothing(clean_source):
    with pytest.raises(DatasetValidationError, match="expect_table_row_count_to_be_between"):
        build_validate_publish(clean_source, resolve_window("2020-01-06", 7), max_bad_share=0.05)
    assert not storage.local_path(storage.dataset_uri("2020-01-06")).exists()


def test_publish_writes_every_contract_file_and_success_last(clean_source):
    world = World(clean_source)
    hid = world.household(MID - timedelta(days=100))
    world.plan(hid, MID, MID + SECOND)
    published = build_validate_publish(clean_source, WINDOW, max_bad_share=0.05)
    path = storage.local_path(published["revision_uri"])
    assert storage.resolve(published["uri"]) == published["revision_uri"]
    assert sorted(p.name for p in path.iterdir()) == sorted([
        names.DATASET_TRAINING_FILE, names.DATASET_QUARANTINE_FILE, names.DATASET_RECIPES_FILE,
        names.DATASET_SCHEMA_FILE, names.DATASET_SUMMARY_FILE, names.DATASET_VALIDATION_FILE,
        names.DATASET_COUNTS_FILE, storage.REVISION_FILE, names.SUCCESS_MARKER])
    success_time = (path / names.SUCCESS_MARKER).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= success_time for p in path.iterdir())
    assert json.loads((path / names.DATASET_VALIDATION_FILE).read_text())["success"] is True
    recipes = pq.read_table(path / names.DATASET_RECIPES_FILE)
    assert sorted(recipes["recipe_id"].to_pylist()) == sorted(world.recipes[:3])
    schema_doc = json.loads((path / names.DATASET_SCHEMA_FILE).read_text())
    assert [f["name"] for f in schema_doc["files"]["training.parquet"]["fields"]] == \
        pq.read_schema(path / names.DATASET_TRAINING_FILE).names
    assert pc.all(pc.is_valid(pq.read_table(path / names.DATASET_TRAINING_FILE)["input"])).as_py()
