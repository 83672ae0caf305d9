"""Memory bounded by the batch setting, not by the window (issue 20): after the extraction, every
step of a version (assembly, quarantine, summary, Great Expectations, publish, log_dataset) reads
the files back only through `ParquetFile.iter_batches` in batches of PLANNER_DATASET_BATCH_ROWS
rows; no whole-table read (`pq.read_table`, `pandas.read_parquet`, `ParquetFile.read`, a whole row
group) ever touches a part or a version file, and Great Expectations never sees a DataFrame of
more rows than a batch. The bytes published are the same for any batch size.

The figures at 1M and 4M events (peak RSS, seconds per million events) are `bench/dataset_scale.py`'s."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from include.core import storage
from include.dataset.pipeline import build_validate_publish
from include.dataset.window import resolve_window

BATCH = 150
WATCHED = ("training.parquet", "quarantine.parquet", "rows.parquet", "quarantine-")


def _watched(source) -> bool:
    name = str(getattr(source, "path", source)).rsplit("/", 1)[-1]
    return any(name == w or name.startswith(w) for w in WATCHED)


@pytest.fixture()
def reads(monkeypatch):
    """Records every batched read and refuses every whole-table read of a dataset file."""
    seen = {"batch_sizes": [], "batch_rows": [], "gx_frames": [], "whole": []}

    def refuse(kind, original):
        def wrapper(source, *args, **kwargs):
            if _watched(source):
                seen["whole"].append((kind, str(source)))
                raise AssertionError(f"whole-table read of {source} ({kind})")
            return original(source, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(pq, "read_table", refuse("pq.read_table", pq.read_table))
    monkeypatch.setattr(pd, "read_parquet", refuse("pandas.read_parquet", pd.read_parquet))
    original_iter, original_read, original_group = (pq.ParquetFile.iter_batches, pq.ParquetFile.read,
                                                    pq.ParquetFile.read_row_group)

    def iter_batches(self, batch_size=65536, *args, **kwargs):
        seen["batch_sizes"].append(batch_size)
        for batch in original_iter(self, batch_size, *args, **kwargs):
            seen["batch_rows"].append(batch.num_rows)
            yield batch

    def whole(kind, original):
        def wrapper(self, *args, **kwargs):
            seen["whole"].append((kind, "a ParquetFile"))
            raise AssertionError(f"whole-table read through ParquetFile.{kind}")
        return wrapper

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    monkeypatch.setattr(pq.ParquetFile, "read", whole("read", original_read))
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", whole("read_row_group", original_group))

    from great_expectations.core.batch_definition import BatchDefinition

    original_batch = BatchDefinition.get_batch

    def get_batch(self, *args, **kwargs):
        frame = (kwargs.get("batch_parameters") or {}).get("dataframe")
        if frame is not None:
            seen["gx_frames"].append(len(frame))
        return original_batch(self, *args, **kwargs)

    monkeypatch.setattr(BatchDefinition, "get_batch", get_batch)
    return seen


def test_every_step_reads_in_batches_of_the_setting_and_the_bytes_do_not_change(
        training_events_dsn, published_dataset, storage_root, fresh_mlflow, monkeypatch, reads):
    from include.dataset.tracking import log_dataset_version

    monkeypatch.setenv("PLANNER_DATASET_BATCH_ROWS", str(BATCH))
    published = build_validate_publish(training_events_dsn, resolve_window("2026-11-23", 28), max_bad_share=0.05,
                                       parts=3)
    run_id = log_dataset_version(published["uri"], published["counts"])

    assert run_id and published["rows"] > 5 * BATCH  # many batches: a whole-table read would show
    assert reads["whole"] == []
    assert reads["batch_sizes"] and max(reads["batch_sizes"]) <= BATCH, reads["batch_sizes"]
    assert max(reads["batch_rows"]) <= BATCH
    assert len(reads["gx_frames"]) >= published["rows"] // BATCH and max(reads["gx_frames"]) <= BATCH
    # the same bytes as the session's build with the default batch size and 2 ranges
    assert published["digest"] == storage.published_content(published_dataset)["digest"]


def test_a_duplicate_plan_id_across_two_batches_fails_validation(tmp_path):
    """Uniqueness spans the table: a plan_id repeated on both sides of a batch boundary is found."""
    import pyarrow as pa

    from include.dataset import schema
    from include.dataset.validate import run_expectations

    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(10)]
    ids[5] = ids[4]  # rows 4 and 5: the last of batch one and the first of batch two (batches of 5)
    target = schema.arrow_schema(schema.TRAINING_FIELDS)
    table = pa.table({f.name: pa.array(ids, f.type) if f.name == "plan_id" else pa.nulls(10, f.type) for f in target},
                     schema=target)
    pq.write_table(table, tmp_path / "training.parquet")
    success, failures, document = run_expectations(tmp_path / "training.parquet",
                                                   resolve_window("2026-11-23", 28), batch_rows=5)
    assert not success and document["meta"]["batches"] == 2
    unique = [f for f in failures if f.startswith("expect_column_values_to_be_unique")]
    assert unique and '"unexpected_count": 2' in unique[0], failures
