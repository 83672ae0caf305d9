"""A dataset version's profile: the binned counts of its main inputs, read batch-wise from its published Parquet
files with pyarrow (never the whole table in memory: one record batch of `BATCH_ROWS` rows at a time).

| feature | from | bins |
|---|---|---|
| household_size | `household_size` | 1, 2, 3, 4, 5, 6+ |
| workflow_type, mode | the columns | each value (null: `(null)`) |
| budget_bucket | `budget` (weekly) | <50, 50-100, 100-150, 150-200, 200-300, 300-400, 400+ |
| pantry_size | `n_pantry_items` | 0-3, 4-7, 8-11, 12-15, 16-19, 20+ |
| keep_rate | `proposed_plan`, `target` | the row's share of proposed meals kept (same recipe on the same day, as the labels): 0-0.2, ..., 0.8-1 |
| quarantine_reason | `quarantine.parquet` `reject_reason`, and the rows | `(row)` for a training row, each reject reason |
"""
from __future__ import annotations

import json
from bisect import bisect_right

from include.core import names

BATCH_ROWS = 10_000
FORMAT = 1
NUMERIC_BINS = {  # feature: (column, lower edges, labels)
    "household_size": ("household_size", [1, 2, 3, 4, 5, 6], ["1", "2", "3", "4", "5", "6+"]),
    "budget_bucket": ("budget", [0, 50, 100, 150, 200, 300, 400],
                      ["<50", "50-100", "100-150", "150-200", "200-300", "300-400", "400+"]),
    "pantry_size": ("n_pantry_items", [0, 4, 8, 12, 16, 20], ["0-3", "4-7", "8-11", "12-15", "16-19", "20+"]),
}
CATEGORICAL = {"workflow_type": "workflow_type", "mode": "mode"}
KEEP_EDGES, KEEP_LABELS = [0.2, 0.4, 0.6, 0.8], ["0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1"]
FEATURES = ["household_size", "workflow_type", "mode", "budget_bucket", "pantry_size", "keep_rate",
            "quarantine_reason"]
ROW = "(row)"
NULL = "(null)"


def numeric_bin(value, edges: list[float], labels: list[str]) -> str:
    """The label of the bin holding `value` (below the first edge: the first bin); null: `(null)`."""
    if value is None:
        return NULL
    return labels[max(0, bisect_right(edges, value) - 1)]


def keep_share(proposed_plan: str | None, target: str | None) -> float | None:
    """The share of the row's proposed meals that the accepted plan kept (include/core/features.py's labels)."""
    from include.core.features import kept_flags

    if not proposed_plan or not target:
        return None
    proposed = json.loads(proposed_plan)
    meals = proposed.get("meals", []) if isinstance(proposed, dict) else proposed
    if not meals:
        return None
    flags = kept_flags(meals, target)
    return sum(flags) / len(flags)


def keep_bin(share: float | None) -> str:
    return NULL if share is None else KEEP_LABELS[bisect_right(KEEP_EDGES, share)]


def _add(counts: dict[str, int], label: str, n: int = 1) -> None:
    counts[label] = counts.get(label, 0) + n


def _batches(fs, file: str, columns: list[str]):
    import pyarrow.parquet as pq

    with fs.open(file, "rb") as handle:
        reader = pq.ParquetFile(handle)
        present = [c for c in columns if c in reader.schema_arrow.names]
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=present):
            yield {name: batch.column(name).to_pylist() for name in present}


def profile(uri: str) -> dict:
    """{format, uri, content_uri, revision, digest, rows, quarantined, features: {feature: {bin: count}},
    missing: [features whose columns the version does not have]} of the dataset version or revision at `uri`
    (a version follows its `_PUBLISHED` pointer)."""
    from include.core import storage

    content = storage.published_content(uri)
    if content is None:
        raise FileNotFoundError(f"{uri}: no published dataset there")
    fs, path = storage.filesystem(content["uri"])
    training = f"{path.rstrip('/')}/{names.DATASET_TRAINING_FILE}"
    quarantine = f"{path.rstrip('/')}/{names.DATASET_QUARANTINE_FILE}"
    features: dict[str, dict[str, int]] = {name: {} for name in FEATURES}
    columns = [c for c, _, _ in NUMERIC_BINS.values()] + list(CATEGORICAL.values()) + ["proposed_plan", "target"]
    seen: set[str] = set()
    rows = 0
    for batch in _batches(fs, training, columns):
        seen.update(batch)
        n = len(next(iter(batch.values()))) if batch else 0
        rows += n
        for feature, (column, edges, labels) in NUMERIC_BINS.items():
            for value in batch.get(column, ()):
                _add(features[feature], numeric_bin(value, edges, labels))
        for feature, column in CATEGORICAL.items():
            for value in batch.get(column, ()):
                _add(features[feature], NULL if value in (None, "") else str(value))
        if "proposed_plan" in batch and "target" in batch:
            for plan, target in zip(batch["proposed_plan"], batch["target"]):
                _add(features["keep_rate"], keep_bin(keep_share(plan, target)))
    quarantined = 0
    if fs.exists(quarantine):
        for batch in _batches(fs, quarantine, ["reject_reason"]):
            for reason in batch.get("reject_reason", ()):
                _add(features["quarantine_reason"], reason or NULL)
                quarantined += 1
    if rows:
        features["quarantine_reason"][ROW] = rows
    needed = {**{f: [c] for f, (c, _, _) in NUMERIC_BINS.items()}, **{f: [c] for f, c in CATEGORICAL.items()},
              "keep_rate": ["proposed_plan", "target"]}
    missing = sorted(f for f, cols in needed.items() if not set(cols) <= seen) if rows else []
    for feature in missing:
        features.pop(feature, None)
    revision, digest = content["revision"], content["digest"]
    if not revision and storage.rsplit_name(content["uri"]).startswith(storage.REVISION_PREFIX):
        revision = storage.rsplit_name(content["uri"])  # a revision's own location was given
        revision_file = f"{path.rstrip('/')}/{storage.REVISION_FILE}"
        if fs.exists(revision_file):
            digest = json.loads(fs.cat_file(revision_file)).get("digest", "")
    version_uri = content["uri"].rstrip("/").rsplit("/", 1)[0] if revision else content["uri"]
    return {"format": FORMAT, "uri": uri, "content_uri": content["uri"], "version_uri": version_uri,
            "version": storage.rsplit_name(version_uri), "revision": revision, "digest": digest, "rows": rows,
            "quarantined": quarantined, "features": features, "missing": missing}
