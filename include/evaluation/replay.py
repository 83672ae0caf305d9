"""The replay set: later logged events the model never saw, as dataset rows.

Rows come from `include.dataset.build`, the code that builds training datasets (one source
of truth for rows and as-of joins). The window defaults to the held-out days of the
candidate's training dataset, `[training cutoff, dataset end)` (docs/contracts.md, offline
evaluation); any window that reaches into a model's training window, or any replayed plan_id
that was in its training rows, ends the evaluation (leakage).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from include.core import names, storage
from include.dataset.window import Window

log = logging.getLogger(__name__)

REPLAY_MAX_BAD_SHARE = 1.0  # quarantined events are counted in the report, never a reason to stop evaluating


class EvaluationError(RuntimeError):
    """The evaluation cannot go on; the message says why (nothing is tagged)."""


@dataclass(frozen=True)
class TrainingWindow:
    """What a model was trained on, from its version's tags."""
    model_version: str
    dataset_version: str     # YYYY-MM-DD: the dataset's exclusive end
    dataset_uri: str         # the revision it trained on (the version's URI for models from before revisions)
    cutoff: datetime         # rows accepted before this were training rows
    dataset_digest: str = ""  # the revision's content digest, checked before its rows are read

    @classmethod
    def from_tags(cls, version: str, tags: dict) -> TrainingWindow:
        missing = [k for k in ("dataset_version", "dataset_uri", "training_cutoff") if not tags.get(k)]
        if missing:
            raise EvaluationError(f"model version {version} lacks the tags {missing}: it was not registered by "
                                  f"{names.DAG_REGISTRATION}, so its training window is unknown")
        return cls(version, tags["dataset_version"], tags.get("dataset_revision_uri") or tags["dataset_uri"],
                   datetime.fromisoformat(tags["training_cutoff"]).astimezone(UTC), tags.get("dataset_digest", ""))


def _midnight(value: str | date) -> datetime:
    day = value if isinstance(value, date) else date.fromisoformat(str(value))
    return datetime.combine(day, time(0), tzinfo=UTC)


def replay_window(training: TrainingWindow, start: str | None = None, end: str | None = None) -> Window:
    """The window to replay: given dates (YYYY-MM-DD, end exclusive) or the dataset's held-out days."""
    try:
        first = _midnight(start) if start else training.cutoff
        last = _midnight(end) if end else _midnight(training.dataset_version)
    except ValueError as exc:
        raise EvaluationError(f"replay window dates must be YYYY-MM-DD: {exc}") from exc
    if last <= first:
        raise EvaluationError(f"the replay window [{first.date()}, {last.date()}) is empty: its end must come "
                              "after its start (a model trained with holdout_days=0 has no held-out days: "
                              "give a later window)")
    return Window(version=f"{first.date()}_{last.date()}", start=first, end=last)


def window_overlaps(window: Window, training: TrainingWindow) -> bool:
    """Whether the replay window reaches before the model's training cutoff (its training rows)."""
    return window.start < training.cutoff


def build_replay_set(dsn: str, window: Window, parts: int = 2) -> dict:
    """Build the window's rows with the dataset code and publish them (a rebuild replaces them)."""
    from include.dataset.build import build_dataset

    final_uri = storage.replay_uri(window.version)
    staging = storage.new_staging_dir(final_uri)
    try:
        counts = build_dataset(dsn, window, staging, max_bad_share=REPLAY_MAX_BAD_SHARE, parts=parts)
    except BaseException:
        storage.discard_staging(staging)
        raise
    uri = storage.publish_dir(staging, final_uri)
    log.info("replay set %s: %s rows, %s quarantined", window.version, counts["rows"], counts["quarantined"])
    return {"uri": uri, "window": window.as_dict(), "rows": counts["rows"], "quarantined": counts["quarantined"]}


def exact_content(uri: str):
    """(filesystem, path) of a model's training data exactly as it was read: a revision, or a version from
    before revisions, in place (complete by its own `_SUCCESS`), never through a pointer a later rebuild
    switched; anything else through its pointer."""
    fs, path = storage.filesystem(uri)
    if fs.isfile(storage.join(path, names.SUCCESS_MARKER)):
        return fs, path
    return storage.published(uri)


def plan_ids(dataset_uri: str, before=None) -> set[str]:
    """plan_ids of a published dataset's rows (accepted before `before`, when given)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = exact_content(dataset_uri)
    rows_file = storage.join(path, names.DATASET_TRAINING_FILE)
    if not fs.isfile(rows_file):
        raise EvaluationError(f"the training dataset {dataset_uri} is gone ({names.DATASET_TRAINING_FILE} missing): "
                              "the leakage check cannot be made")
    table = pq.read_table(rows_file, columns=["plan_id", "accepted_at"], filesystem=fs)
    if before is not None:
        table = table.filter(pc.less(table["accepted_at"], before))
    return set(table["plan_id"].to_pylist())


def leakage_problems(window: Window, replayed: set[str], trainings: list[tuple[TrainingWindow, set[str]]]) -> list[str]:
    """Every way the replay set touches a model's training data; empty when it does not."""
    problems = []
    for training, trained_on in trainings:
        if window_overlaps(window, training):
            problems.append(f"the replay window [{window.start.date()}, {window.end.date()}) overlaps the training "
                            f"window of version {training.model_version} (rows of dataset "
                            f"{training.dataset_version} accepted before {training.cutoff.isoformat()})")
        shared = sorted(replayed & trained_on)
        if shared:
            problems.append(f"{len(shared)} replayed plan_ids were training rows of version "
                            f"{training.model_version} (e.g. {', '.join(shared[:3])})")
    return problems


def load_replay_rows(uri: str, max_rows: int | None = None):
    """The replay rows (plan_id order) with the columns scoring and slicing need, as pandas."""
    import pyarrow.parquet as pq

    fs, path = storage.published(uri)
    columns = ["plan_id", "household_id", "accepted_at", "input", "target", "workflow_type", "mode",
               "policy_version_id", "household_size"]
    table = pq.read_table(storage.join(path, names.DATASET_TRAINING_FILE), columns=columns, filesystem=fs)
    if max_rows:
        table = table.slice(0, int(max_rows))
    return table.to_pandas()


def replay_summary(uri: str) -> dict:
    fs, path = storage.published(uri)
    return json.loads(fs.cat_file(storage.join(path, names.DATASET_COUNTS_FILE)))
