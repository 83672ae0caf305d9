"""What the `planner_dataset` tasks do, as plain functions (no Airflow import).

The extraction is spread over workers (`include/dataset/parts.py`: one part per plan_id range,
staged on the storage root); `assemble_validate_publish` is one unit on purpose: the version's
staging directory never leaves the worker that assembled it, and whatever fails before the
publish leaves the published versions as they were. `build_validate_publish` is the same in one
process (the parts on local disk), for tests, benchmarks and scripts.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime

from include.core import names, storage
from include.dataset import parts as range_parts
from include.dataset.build import build_dataset
from include.dataset.validate import DatasetValidationError, validate_version
from include.dataset.window import Window, resolve_window

log = logging.getLogger(__name__)

STAGING_MAX_AGE_S = 2 * 86400


def window_from_params(end_date: str | None, lookback_days: int, run_end: datetime | None) -> Window:
    return resolve_window(end_date or None, int(lookback_days), run_end)


def prune_staging(final_uri: str, max_age_s: float = STAGING_MAX_AGE_S) -> None:
    """Drop staging directories left by failed builds once they are old enough to be uninteresting."""
    if not storage.is_local(final_uri):
        return
    staging_root = storage.local_path(final_uri).parent / storage.STAGING_DIR
    if not staging_root.is_dir():
        return
    cutoff = time.time() - max_age_s
    for entry in staging_root.iterdir():
        if entry.is_dir() and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)


def build_validate_publish(dsn: str, window: Window, max_bad_share: float, parts: int = 2) -> dict:
    """Build the version into staging, validate it, publish it atomically as an immutable revision
    (the same content again is a no-op; other content a new revision beside the old ones).

    Raises DatasetValidationError (nothing published, staging kept for inspection) when a
    check fails. Returns what the next task and the Asset event need.
    """
    return _validate_publish(window, lambda staging: build_dataset(dsn, window, staging, max_bad_share=max_bad_share,
                                                                   parts=parts))


def assemble_validate_publish(dsn: str, window: Window, specs: list[dict], extracted: list[dict] | None,
                              max_bad_share: float) -> dict:
    """Assemble the run's staged parts (exactly the planned ones, each finished by the attempt
    `extracted` records), validate and publish like `build_validate_publish`; then remove the
    run's parts (after a publish, and after a failed validation, which is final). Raises
    range_parts.PartsError (nothing published, parts kept) when the parts are not this run's complete ones."""
    try:
        published = _validate_publish(window, lambda staging: range_parts.assemble_parts(
            dsn, window, specs, staging, max_bad_share, extracted=extracted))
    except DatasetValidationError:
        range_parts.remove_parts(specs[0]["parts_uri"])
        raise
    range_parts.remove_parts(specs[0]["parts_uri"])
    return published


def _validate_publish(window: Window, build) -> dict:
    final_uri = storage.dataset_uri(window.version)
    prune_staging(final_uri)
    staging = storage.new_staging_dir(final_uri)
    try:
        counts = build(staging)
    except BaseException:
        storage.discard_staging(staging)
        raise
    log.info("built %s: %s rows, %s quarantined, bad share %.2f%%", window.version, counts["rows"],
             counts["quarantined"], 100 * counts["bad_share"])
    validation = validate_version(staging, window, counts)
    (staging / names.DATASET_VALIDATION_FILE).write_text(json.dumps(validation.document, indent=2, default=str) + "\n")
    if not validation.success:
        raise DatasetValidationError(
            f"dataset {window.version} failed validation; nothing was published (staging kept at {staging}):\n  - "
            + "\n  - ".join(validation.failures))
    published = storage.publish_revision(staging, final_uri)
    log.info("%s revision %s of dataset %s (%s)", "published" if published["created"] else "kept",
             published["revision"], window.version,
             "new content" if published["created"] else "identical content: nothing written")
    return {"version": window.version, "uri": final_uri, "rows": counts["rows"], "counts": counts,
            "revision": published["revision"], "revision_uri": published["revision_uri"],
            "digest": published["digest"], "created": published["created"]}
