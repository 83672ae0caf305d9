"""Extraction spread over workers: one part per plan_id range, staged on the storage root, then
assembled in plan_id order into the version's files (plain functions, no Airflow import).

`planner_dataset` maps `extract_range` over the ranges of `plan_ranges` (one Airflow task per
range, on whichever worker) and then runs `assemble_parts` once; `build_dataset` calls the same
functions in-process. A part never relies on a disk shared between workers: it is written
through fsspec under the storage root (a local path or an object-storage URL),

    <root>/datasets/planner/_staging/<version>-<12 hex of the run key>/range-<i>-of-<n>/
        rows.parquet  quarantine.parquet  recipe_ids.json  _PART.json (written last)

The run key is the DAG run (`<dag_id>/<run_id>`), so a retried or cleared part rewrites only its
own key, and another run's parts are never in the way. `_PART.json` (the marker) names the run,
the window, the range, the attempt that wrote it and each file's sha256 and size; an attempt
removes its marker before it writes anything. The assembler takes exactly the expected ranges,
each with a marker of this run, window and range, written by the attempt the caller recorded as
the part's successful one (its XCom), and files with the marker's digests: anything else (a
missing or stale part, a part of another run, an extra entry) stops it before a file of the
version is written.

Range boundaries are a pure function of the range count (`window.partition_bounds`), and the
assembled `training.parquet` has row groups of exactly `build.TRAINING_ROW_GROUP_ROWS` rows (each
one contiguous chunk) whatever the range count or the driver's batch sizes: the same database
and window give the same bytes for any number of ranges.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
from pathlib import Path

from include.core import storage
from include.core.hashing import file_sha256
from include.dataset.window import Window, partition_bounds

log = logging.getLogger(__name__)

MARKER = "_PART.json"
ROWS = "rows.parquet"
QUARANTINE = "quarantine.parquet"
RECIPE_IDS = "recipe_ids.json"
PART_FILES = (ROWS, QUARANTINE, RECIPE_IDS)
MARKER_FORMAT = 1
MAX_RANGES = 64


class PartsError(RuntimeError):
    """The staged parts are not exactly this run's complete parts: nothing may be assembled."""


def run_token(run_key: str) -> str:
    return hashlib.sha256(run_key.encode()).hexdigest()[:12]


def parts_uri(window: Window, run_key: str, root: str | None = None) -> str:
    """Where the parts of one run of one version are staged (a `_staging/<version>-<12 hex>` entry,
    the layout local staging directories have, so local pruning and retention know it)."""
    return storage.join(storage.datasets_root(root), storage.STAGING_DIR, f"{window.version}-{run_token(run_key)}")


def range_name(index: int, count: int) -> str:
    return f"range-{index:04d}-of-{count:04d}"


def plan_ranges(window: Window, count: int, run_key: str, staging_uri: str | None = None) -> list[dict]:
    """The specs of the run's parts, in plan_id order: JSON-able, one per mapped task."""
    if not 1 <= int(count) <= MAX_RANGES:
        raise ValueError(f"the number of plan_id ranges must be 1..{MAX_RANGES}, got {count}")
    staging_uri = staging_uri or parts_uri(window, run_key)
    return [{"window": window.as_dict(), "index": index, "count": int(count), "low": low, "high": high,
             "run_key": run_key, "parts_uri": staging_uri}
            for index, (low, high) in enumerate(partition_bounds(int(count)))]


def window_of(spec: dict) -> Window:
    from datetime import datetime

    window = spec["window"]
    return Window(version=window["version"], start=datetime.fromisoformat(window["start"]),
                  end=datetime.fromisoformat(window["end"]))


def range_label(spec: dict) -> str:
    return f"{spec['index'] + 1}/{spec['count']} [{spec['low'] or 'start'}, {spec['high'] or 'end'})"


def _expected_marker(spec: dict) -> dict:
    window = spec["window"]
    return {"format": MARKER_FORMAT, "run_key": spec["run_key"], "version": window["version"],
            "window_start": window["start"], "window_end": window["end"], "index": spec["index"],
            "count": spec["count"], "low": spec["low"], "high": spec["high"]}


def extract_range(dsn: str, spec: dict) -> dict:
    """Extract one plan_id range into its own staging key (idempotent: a retry rewrites the same
    key and nothing else), marker last. Returns {"index", "attempt", "rows", "quarantined"}."""
    import pyarrow.parquet as pq

    from include.dataset.build import extract_partition

    window = window_of(spec)
    fs, path = storage.filesystem(storage.join(spec["parts_uri"], range_name(spec["index"], spec["count"])))
    marker_path = storage.join(path, MARKER)
    try:
        fs.rm_file(marker_path)  # first: until this attempt's marker is written, the part is not finished
    except FileNotFoundError:
        pass
    attempt = uuid.uuid4().hex[:16]
    local = storage.is_local(spec["parts_uri"])
    with tempfile.TemporaryDirectory(prefix="planner-part-") as scratch:
        if local:
            target = Path(path)
            target.mkdir(parents=True, exist_ok=True)
        else:
            target = Path(scratch)
        extracted = extract_partition(dsn, window, spec["low"], spec["high"], target,
                                      compression="none" if local else "zstd")
        for name, produced in ((ROWS, extracted["rows"]), (QUARANTINE, extracted["quarantine"])):
            produced.replace(target / name)
        (target / RECIPE_IDS).write_text(json.dumps(sorted(extracted["recipe_ids"])) + "\n")
        files = {name: {"sha256": file_sha256(target / name), "size": (target / name).stat().st_size}
                 for name in PART_FILES}
        rows = pq.ParquetFile(target / ROWS).metadata.num_rows
        quarantined = pq.ParquetFile(target / QUARANTINE).metadata.num_rows
        if not local:
            for name in PART_FILES:
                fs.put_file(str(target / name), storage.join(path, name))
    marker = {**_expected_marker(spec), "attempt": attempt, "files": files, "rows": rows, "quarantined": quarantined}
    fs.pipe_file(marker_path, json.dumps(marker, indent=2, sort_keys=True).encode())
    log.info("part %s of %s: %s rows, %s quarantined (attempt %s)", range_label(spec), window.version, rows,
             quarantined, attempt)
    return {"index": spec["index"], "attempt": attempt, "rows": rows, "quarantined": quarantined}


def check_parts(specs: list[dict], extracted: list[dict] | None) -> list[dict]:
    """The markers of exactly the expected parts, each finished by the attempt `extracted` records
    for it (the mapped tasks' results); raises PartsError otherwise. Reads only markers."""
    if not specs:
        raise PartsError("no parts were planned")
    staging_uri = specs[0]["parts_uri"]
    if any(s["parts_uri"] != staging_uri or s["run_key"] != specs[0]["run_key"] for s in specs):
        raise PartsError("the planned parts do not share one run and staging location")
    if [s["index"] for s in specs] != list(range(len(specs))) or any(s["count"] != len(specs) for s in specs):
        raise PartsError("the planned parts are not ranges 0..n-1 of n")
    attempts = None
    if extracted is not None:
        attempts = {}
        for item in extracted:
            if not isinstance(item, dict) or "index" not in item or "attempt" not in item:
                raise PartsError(f"a part's result is missing or malformed: {item!r} (did every part succeed?)")
            attempts[item["index"]] = item["attempt"]
        if sorted(attempts) != list(range(len(specs))):
            raise PartsError(f"results for parts {sorted(attempts)}, expected 0..{len(specs) - 1}")
    fs, path = storage.filesystem(staging_uri)
    expected_names = {range_name(s["index"], s["count"]) for s in specs}
    found = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)} if fs.isdir(path) else set()
    if found != expected_names:
        missing, extra = sorted(expected_names - found), sorted(found - expected_names)
        raise PartsError(f"{staging_uri} does not hold exactly this run's {len(specs)} parts"
                         + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    markers = []
    for spec in specs:
        name = range_name(spec["index"], spec["count"])
        try:
            marker = json.loads(fs.cat_file(storage.join(path, name, MARKER)))
        except FileNotFoundError:
            raise PartsError(f"part {name} has no {MARKER}: it did not finish (or is being rewritten)") from None
        expected = _expected_marker(spec)
        wrong = {k: marker.get(k) for k, v in expected.items() if marker.get(k) != v}
        if wrong:
            raise PartsError(f"part {name} was not written for this run, window and range: {wrong} "
                             f"(expected {({k: expected[k] for k in wrong})})")
        if attempts is not None and marker.get("attempt") != attempts[spec["index"]]:
            raise PartsError(f"part {name} was written by attempt {marker.get('attempt')}, not by the attempt "
                             f"{attempts[spec['index']]} that succeeded: a stale part is never assembled")
        if sorted(marker.get("files") or {}) != sorted(PART_FILES):
            raise PartsError(f"part {name}'s marker lists {sorted(marker.get('files') or {})}, not {list(PART_FILES)}")
        markers.append(marker)
    return markers


def _local_part(fs, remote_dir: str, name: str, expected: dict, scratch: Path, local: bool) -> Path:
    """The part file as a local path (in place on a local root, downloaded otherwise), checked
    against its marker's size and sha256."""
    if local:
        file = Path(remote_dir) / name
    else:
        file = scratch / remote_dir.rstrip("/").rsplit("/", 1)[-1] / name
        file.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(storage.join(remote_dir, name), str(file))
    if not file.is_file() or file.stat().st_size != expected["size"] or file_sha256(file) != expected["sha256"]:
        raise PartsError(f"{storage.join(remote_dir, name)} does not hold the bytes its marker names "
                         "(rewritten after its marker?)")
    return file


def assemble_parts(dsn: str, window: Window, specs: list[dict], staging: Path, max_bad_share: float,
                   extracted: list[dict] | None = None, window_counts: dict | None = None) -> dict:
    """Check the parts (`check_parts`), then write every data file of the version into the local
    `staging` directory from them, in plan_id order; returns the counts. Validation and
    publication are the caller's."""
    from include.dataset.build import fetch_window_counts, write_version_files

    for spec in specs:
        if spec["window"]["start"] != window.as_dict()["start"] or spec["window"]["end"] != window.as_dict()["end"]:
            raise PartsError(f"part {spec['index']} was planned for another window than {window.as_dict()}")
    markers = check_parts(specs, extracted)
    fs, path = storage.filesystem(specs[0]["parts_uri"])
    local = storage.is_local(specs[0]["parts_uri"])
    with tempfile.TemporaryDirectory(prefix="planner-assemble-") as scratch:
        rows_parts, quarantine_parts, recipe_ids = [], [], set()
        for spec, marker in zip(specs, markers):
            part_dir = storage.join(path, range_name(spec["index"], spec["count"]))
            files = {name: _local_part(fs, part_dir, name, marker["files"][name], Path(scratch), local)
                     for name in PART_FILES}
            rows_parts.append(files[ROWS])
            quarantine_parts.append(files[QUARANTINE])
            recipe_ids.update(json.loads(files[RECIPE_IDS].read_text()))
        if window_counts is None:
            window_counts = fetch_window_counts(dsn, window)
        return write_version_files(dsn, window, staging, max_bad_share, rows_parts, quarantine_parts, recipe_ids,
                                   window_counts)


def remove_parts(staging_uri: str) -> None:
    """Remove one run's staged parts (nothing else: only its own `<version>-<token>` entry)."""
    fs, path = storage.filesystem(staging_uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
