"""The leakage check reads each model's training rows exactly as the model read them: its own
revision, or for a model trained before revisions the files directly under the version, even
after a rebuild points the version at new content."""
from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from include.core import names, storage
from include.evaluation.replay import plan_ids


def _rows(directory, *ids: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    at = datetime(2026, 11, 20, tzinfo=UTC)
    pq.write_table(pa.table({"plan_id": list(ids), "accepted_at": [at] * len(ids)}),
                   directory / names.DATASET_TRAINING_FILE)


def test_a_model_from_before_revisions_keeps_reading_its_own_rows_after_a_rebuild(tmp_path):
    version = tmp_path / "datasets" / "planner" / "2026-11-23"
    _rows(version, "P-old-1", "P-old-2")  # published before revisions: files and _SUCCESS under the version
    (version / names.SUCCESS_MARKER).write_text("")
    assert plan_ids(str(version)) == {"P-old-1", "P-old-2"}

    staging = storage.new_staging_dir(str(version))
    _rows(staging, "P-new-1")
    rebuilt = storage.publish_revision(staging, str(version))
    assert storage.resolve(str(version)) == rebuilt["revision_uri"]  # readers of the version see the rebuild

    assert plan_ids(str(version)) == {"P-old-1", "P-old-2"}  # the old model's tags name the version itself
    assert plan_ids(rebuilt["revision_uri"]) == {"P-new-1"}
