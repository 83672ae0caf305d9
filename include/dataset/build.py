"""Build one dataset version into a staging directory: extract, split rows from quarantine,
write Parquet, count, summarise. Validation and publication are separate steps.

Extraction is one SQL statement per plan_id range (`sql/candidate_rows.sql`), fetched as
Arrow through ADBC, each range into part files of its own (`include/dataset/parts.py`: in
`planner_dataset` one mapped task per range, staged on the storage root; in `build_dataset`
concurrently in-process). The parts are assembled in range order, so the rows come out sorted
by plan_id, in row groups of `TRAINING_ROW_GROUP_ROWS` rows whatever the number of ranges.
Everything read back (parts, quarantine, the summary's columns) is read in batches of
`PLANNER_DATASET_BATCH_ROWS` rows (`iter_tables`): memory follows that setting, not the window.
"""
from __future__ import annotations

import functools
import json
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from include.core import names
from include.dataset import schema
from include.dataset.summary import render_summary
from include.dataset.window import Window

USED_EVENT_TYPES = ("plan_generated", "plan_accepted")
ROW_GROUP_SIZE = 50_000
# training.parquet's row groups: exactly this many rows each (the last fewer), whatever the ranges and
# the driver's batches; small enough that assembling holds little more than one group in memory.
TRAINING_ROW_GROUP_ROWS = 10_000


def sql_text(name: str) -> str:
    return resources.files("include.dataset").joinpath("sql", name).read_text()


def libpq_uri(dsn: str) -> str:
    """ADBC wants a plain libpq URI (no SQLAlchemy driver suffix such as +psycopg)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        raise ValueError(f"expected a postgresql:// URI, got {dsn!r}")
    return "postgresql://" + rest if scheme.split("+")[0] in ("postgresql", "postgres") else dsn


def arrow_connect(dsn: str):
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(libpq_uri(dsn))
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    return conn


def bind_settings(conn, settings: dict[str, object]) -> None:
    """Bind values to session settings (`set_config`), read by statements that must stream."""
    keys = list(settings)
    calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(keys)))
    values: list[str] = []
    for key in keys:
        value = settings[key]
        values += [key, value.isoformat() if hasattr(value, "isoformat") else str(value)]
    with conn.cursor() as cur:
        cur.execute(f"SELECT {calls}", tuple(values))
        cur.fetchall()


def fetch_arrow(dsn: str, sql: str, params: tuple = (), session: dict[str, object] | None = None):
    """Run one statement on its own connection and return the whole result as an Arrow table."""
    conn = arrow_connect(dsn)
    try:
        if session:
            bind_settings(conn, session)
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetch_arrow_table()
    finally:
        conn.close()


def fetch_window_counts(dsn: str, window: Window) -> dict:
    table = fetch_arrow(dsn, sql_text("window_counts.sql"), (window.start, window.end),
                        session=extraction_session_settings())
    per_type = {row["event_type"]: row for row in table.to_pylist()}
    return {
        "events_by_type": {t: {"events": r["events"], "deliveries": r["deliveries"]} for t, r in per_type.items()},
        "duplicate_deliveries": sum(r["deliveries"] - r["events"] for r in per_type.values()),
        "acceptances_with_plan_id": per_type.get("plan_accepted", {}).get("events_with_plan_id", 0),
        "generated_never_accepted": next(iter(per_type.values()), {}).get("generated_never_accepted", 0),
        "unused_event_types": {t: r["events"] for t, r in per_type.items() if t not in USED_EVENT_TYPES},
    }


def _conform(table, fields):
    """Exactly the contract's columns and types, without driver metadata."""
    import pyarrow as pa

    target = schema.arrow_schema(fields)
    columns = [table.column(f.name).cast(f.type) for f in target]
    return pa.Table.from_arrays(columns, schema=target)


def extract_partition(dsn: str, window: Window, low: str, high: str, part_dir: Path, rows_out=None,
                      compression: str = "none") -> dict:
    """Stream one plan_id range into row and quarantine part files (bounded memory).

    With `rows_out` (an open ParquetWriter) the training rows go there instead of a part file.
    `compression` is the rows part's (a local part is read once and rewritten: not worth
    compressing; one that travels through object storage is). Returns the part paths (rows:
    None when written to `rows_out`) and the recipe ids the range's plans mention.
    """
    import contextlib

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows_path = None if rows_out is not None else part_dir / f"rows-{low or 'start'}.parquet"
    quarantine_path = part_dir / f"quarantine-{low or 'start'}.parquet"
    recipe_ids: set[str] = set()
    conn = arrow_connect(dsn)
    try:
        with conn.cursor() as cur, contextlib.ExitStack() as stack:
            if rows_out is None:
                rows_out = stack.enter_context(pq.ParquetWriter(
                    rows_path, schema.arrow_schema(schema.TRAINING_FIELDS), compression=compression))
            quarantine_out = stack.enter_context(
                pq.ParquetWriter(quarantine_path, schema.arrow_schema(schema.QUARANTINE_FIELDS)))
            bind_settings(conn, {**extraction_session_settings(),
                                 "planner.window_start": window.start, "planner.window_end": window.end,
                                 "planner.plan_id_from": low, "planner.plan_id_to": high})
            cur.execute(sql_text("candidate_rows.sql"))
            last_plan_id = None
            for batch in cur.fetch_record_batch():
                table = pa.Table.from_batches([batch])
                good = pc.is_null(table["reject_reason"])
                rows = _conform(table.filter(good), schema.TRAINING_FIELDS)
                last_plan_id = _check_plan_id_order(rows["plan_id"], last_plan_id)
                rows_out.write_table(rows)
                quarantine_out.write_table(_conform(table.filter(pc.invert(good)), schema.QUARANTINE_FIELDS))
                recipe_ids.update(_mentioned_recipe_ids(rows))
    finally:
        conn.close()
    return {"rows": rows_path, "quarantine": quarantine_path, "recipe_ids": recipe_ids}


def extraction_session_settings() -> dict[str, str]:
    """Settings of an extraction session: enough work_mem for its sorts and CTEs, and no
    parallel query, so the statement's output order is its nested loop's (see candidate_rows.sql)."""
    from include.core.config import settings

    return {"work_mem": settings().extract_work_mem, "max_parallel_workers_per_gather": "0"}


class ExtractionOrderError(RuntimeError):
    """The candidate rows did not come out in plan_id order: nothing may be published."""


def _check_plan_id_order(plan_ids, previous: str | None) -> str | None:
    """Training rows must arrive in strictly increasing plan_id (C collation, i.e. byte) order."""
    import pyarrow.compute as pc

    if len(plan_ids) == 0:
        return previous
    first = plan_ids[0].as_py()
    increasing = len(plan_ids) < 2 or pc.all(pc.less(plan_ids[:-1], plan_ids[1:])).as_py()
    if not increasing or (previous is not None and not previous < first):
        raise ExtractionOrderError("candidate rows came out of plan_id order; the build stops and "
                                   "publishes nothing (is parallel query forced on this server?)")
    return plan_ids[-1].as_py()


def _mentioned_recipe_ids(rows) -> set[str]:
    """Recipe ids of both plans of training rows (their meals are checked: objects with a string
    recipe_id). Typed decoders read only the meals and skip the rest of each document."""
    proposed, target = _plan_decoders()
    found = set()
    for text in rows["proposed_plan"].to_pylist():
        found.update(meal.recipe_id.lower() for meal in proposed.decode(text).meals)
    for text in rows["target"].to_pylist():
        found.update(meal.recipe_id.lower() for meal in target.decode(text).accepted_plan.meals)
    return found


@functools.cache
def _plan_decoders():
    import msgspec

    meal = msgspec.defstruct("Meal", [("recipe_id", str)])
    plan = msgspec.defstruct("Plan", [("meals", list[meal])])
    target = msgspec.defstruct("Target", [("accepted_plan", plan)])
    return msgspec.json.Decoder(plan), msgspec.json.Decoder(target)


def training_writer(destination: Path):
    import pyarrow.parquet as pq

    return pq.ParquetWriter(destination, schema.arrow_schema(schema.TRAINING_FIELDS), compression="zstd")


class RowGroups:
    """Writes tables to an open writer in row groups of exactly `size` rows (the last one
    smaller), each one contiguous chunk: the file's bytes depend on the rows alone, not on how
    they arrived (ranges, driver batches, the batch setting). Checks plan_id order across
    everything written (unless `ordered=False`). Holds at most `size` rows plus one table added."""

    def __init__(self, out, size: int = TRAINING_ROW_GROUP_ROWS, ordered: bool = True):
        self.out, self.size, self.ordered = out, size, ordered
        self.pending: list = []
        self.pending_rows = 0
        self.rows = 0
        self.last_plan_id: str | None = None

    def add(self, table) -> None:
        if not table.num_rows:
            return
        if self.ordered:
            self.last_plan_id = _check_plan_id_order(table["plan_id"], self.last_plan_id)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        while self.pending_rows >= self.size:
            self._flush(self.size)

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        combined = pa.concat_tables(self.pending)
        group, rest = combined.slice(0, rows).combine_chunks(), combined.slice(rows)
        self.pending, self.pending_rows, combined = ([rest] if rest.num_rows else []), rest.num_rows, None
        self.out.write_table(group, row_group_size=self.size)


def batch_rows() -> int:
    """Rows per batch wherever the dataset phase reads a table back (`PLANNER_DATASET_BATCH_ROWS`)."""
    from include.core.config import settings

    return settings().dataset_batch_rows


def iter_tables(path: Path, columns: list[str] | None = None, rows: int | None = None, filesystem=None):
    """A Parquet file as tables of at most `rows` rows (default: the batch setting), in file order:
    the one way the dataset phase reads a file it wrote, so nothing holds a whole table.

    One row group at a time, so a table is at most `rows` rows and at most one row group: a
    reader over every row group at once holds far more than one of them, and its high-water mark
    grows with the file (reading the 1M-event world's four parts: 289 MB of Arrow memory at most,
    against 52 MB one row group at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path, filesystem=filesystem) if filesystem is not None else pq.ParquetFile(path)
    with source:
        for group in range(source.num_row_groups):
            for batch in source.iter_batches(batch_size=rows or batch_rows(), row_groups=[group], columns=columns,
                                             use_threads=False):
                yield pa.Table.from_batches([batch])


def append_parquet(parts: list[Path], out) -> int:
    """Append part files in order to an open writer, in row groups of TRAINING_ROW_GROUP_ROWS rows,
    reading each part batch by batch; returns the rows written."""
    groups = RowGroups(out)
    for part in parts:
        for table in iter_tables(part):
            groups.add(table)
    groups.close()
    return groups.rows


QUARANTINE_ORDER = [("reject_reason", "ascending"), ("event_id", "ascending")]


def _quarantine_key(reason, event_id) -> tuple:
    """Python's order of the quarantine sort key, as Arrow's sort_by (byte order, nulls last)."""
    return (reason is None, reason or "", event_id is None, event_id or "")


class _SortedRun:
    """One sorted run file, read `rows` at a time, with the sort keys of its current table."""

    def __init__(self, path: Path, rows: int):
        self.tables = iter_tables(path, rows=rows)
        self.table, self.keys, self.position = None, [], 0
        self.advance()

    def advance(self) -> bool:
        for table in self.tables:
            if table.num_rows:
                self.table, self.position = table, 0
                self.keys = [_quarantine_key(r, e) for r, e in zip(table["reject_reason"].to_pylist(),
                                                                   table["event_id"].to_pylist())]
                return True
        self.table, self.keys = None, []
        return False


def quarantine_outcome(table, outcome: dict | None = None) -> dict:
    """Add one quarantine table's figures to `outcome` (by reason; the acceptances among them
    that had a valid plan_id, which count towards duplicate_acceptances)."""
    import pyarrow.compute as pc

    outcome = outcome or {"quarantined": 0, "by_reason": {reason: 0 for reason in schema.REJECT_REASONS},
                          "first_acceptances": 0}
    for item in table.group_by("reject_reason").aggregate([("event_id", "count")]).to_pylist():
        outcome["by_reason"][item["reject_reason"]] = (outcome["by_reason"].get(item["reject_reason"], 0)
                                                       + item["event_id_count"])
    outcome["first_acceptances"] += int(pc.sum(pc.and_(
        pc.equal(table["event_type"], "plan_accepted"),
        pc.not_equal(table["reject_reason"], "invalid_plan_id"))).as_py() or 0)
    outcome["quarantined"] += table.num_rows
    return outcome


def write_quarantine(parts: list[Path], destination: Path, rows: int | None = None) -> dict:
    """quarantine.parquet sorted by (reject_reason, event_id), by an external merge sort: each
    part is cut into sorted runs of at most `rows` rows (spilled to a scratch directory), then
    the runs are merged, reading each `rows / runs` rows at a time. The same bytes as sorting the
    concatenated parts in memory (ties keep the parts' order, as Arrow's stable sort does), in
    row groups of ROW_GROUP_SIZE rows. Returns the figures of `quarantine_outcome`."""
    import heapq
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows or batch_rows()
    target = schema.arrow_schema(schema.QUARANTINE_FIELDS)
    outcome = quarantine_outcome(target.empty_table())
    with tempfile.TemporaryDirectory(prefix="planner-quarantine-") as scratch:
        runs: list[Path] = []
        for part in parts:
            for table in iter_tables(part, rows=rows):
                if not table.num_rows:
                    continue
                quarantine_outcome(table, outcome)
                runs.append(Path(scratch) / f"run-{len(runs):06d}.parquet")
                pq.write_table(table.sort_by(QUARANTINE_ORDER), runs[-1], compression="none")
        readers = [_SortedRun(run, max(1, rows // max(1, len(runs)))) for run in runs]
        heap = [(reader.keys[0], index) for index, reader in enumerate(readers) if reader.table is not None]
        heapq.heapify(heap)
        with pq.ParquetWriter(destination, target, compression="zstd") as out:
            groups = RowGroups(out, size=ROW_GROUP_SIZE, ordered=False)
            pieces: list = []  # (reader, table, start, stop): slices of the runs' current tables, in merged order
            pending = 0
            while heap:
                _, index = heapq.heappop(heap)
                reader = readers[index]
                if pieces and pieces[-1][0] == index and pieces[-1][1] is reader.table \
                        and pieces[-1][3] == reader.position:
                    pieces[-1][3] += 1
                else:
                    pieces.append([index, reader.table, reader.position, reader.position + 1])
                pending += 1
                reader.position += 1
                if reader.position < len(reader.keys) or reader.advance():
                    heapq.heappush(heap, (reader.keys[reader.position], index))
                if pending >= rows or not heap:
                    groups.add(pa.concat_tables([t.slice(a, b - a) for _, t, a, b in pieces]))
                    pieces, pending = [], 0
            groups.close()
            if not groups.rows:  # as pyarrow writes an empty table: one row group of no rows
                out.write_table(target.empty_table(), row_group_size=ROW_GROUP_SIZE)
    return outcome


def count_outcomes(n_rows: int, quarantine: dict, window_counts: dict, max_bad_share: float) -> dict:
    """The counts of the version from its row count and the quarantine's figures (`quarantine_outcome`)."""
    quarantined = quarantine["quarantined"]
    first_acceptances = n_rows + quarantine["first_acceptances"]
    candidates = n_rows + quarantined
    bad_share = quarantined / candidates if candidates else 0.0
    return {
        **window_counts,
        "rows": n_rows,
        "quarantined": quarantined,
        "quarantined_by_reason": dict(quarantine["by_reason"]),
        "duplicate_acceptances": max(0, window_counts["acceptances_with_plan_id"] - first_acceptances),
        "bad_share": round(bad_share, 6),
        "max_bad_share": max_bad_share,
    }


def write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_SIZE)


def referenced_recipes(dsn: str, recipe_ids: set[str]):
    """The recipe catalogue restricted to the recipes the version's plans mention."""
    import pyarrow as pa
    import pyarrow.compute as pc

    recipes = _conform(fetch_arrow(dsn, sql_text("recipes.sql")), schema.RECIPE_FIELDS)
    return recipes.filter(pc.is_in(recipes["recipe_id"], value_set=pa.array(sorted(recipe_ids), type=pa.string())))


SUMMARY_COLUMNS = ["household_id", "accepted_at", "workflow_type", "mode", "policy_version_id",
                   "has_previous_plan", "n_user_edits", "n_proposed_meals", "n_accepted_meals"]


def write_version_files(dsn: str, window: Window, staging: Path, max_bad_share: float, rows_parts: list[Path],
                        quarantine_parts: list[Path], recipe_ids: set[str], window_counts: dict) -> dict:
    """Every data file of the version from its parts (in plan_id order) into `staging`; the counts.

    Memory is bounded by the batch setting (`PLANNER_DATASET_BATCH_ROWS`), not by the window:
    the rows are appended batch by batch, the quarantine is merge-sorted from runs of that size,
    and the summary is accumulated over batches of the written file."""
    from include.dataset.summary import SummaryStats

    with training_writer(staging / names.DATASET_TRAINING_FILE) as training_out:
        n_rows = append_parquet(rows_parts, training_out)
    quarantine = write_quarantine(quarantine_parts, staging / names.DATASET_QUARANTINE_FILE)
    write_parquet(referenced_recipes(dsn, recipe_ids), staging / names.DATASET_RECIPES_FILE)

    stats = SummaryStats()
    for table in iter_tables(staging / names.DATASET_TRAINING_FILE, columns=SUMMARY_COLUMNS):
        stats.add(table)
    counts = {"window": window.as_dict(), **count_outcomes(n_rows, quarantine, window_counts, max_bad_share)}
    (staging / names.DATASET_COUNTS_FILE).write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
    (staging / names.DATASET_SCHEMA_FILE).write_text(schema.schema_document(window.version, window.as_dict()))
    (staging / names.DATASET_SUMMARY_FILE).write_text(render_summary(window, counts, stats))
    return counts


def build_dataset(dsn: str, window: Window, staging: Path, max_bad_share: float, parts: int = 2) -> dict:
    """Write every data file of the version into `staging`; returns the counts.

    The same per-range and assemble functions as `planner_dataset`'s mapped tasks, in-process:
    the plan_id ranges run concurrently, each on its own connection, into parts under
    `staging/_parts` (removed before returning), assembled in range order (= plan_id order).
    Validation decides afterwards whether the version may be published.
    """
    from include.dataset import parts as ranges

    part_root = staging / "_parts"
    part_root.mkdir()
    specs = ranges.plan_ranges(window, parts, run_key=f"in-process/{uuid.uuid4().hex}", staging_uri=str(part_root))
    try:
        with ThreadPoolExecutor(max_workers=len(specs) + 1) as pool:
            counts_future = pool.submit(fetch_window_counts, dsn, window)
            futures = [pool.submit(ranges.extract_range, dsn, spec) for spec in specs]
            extracted = [future.result() for future in futures]
            window_counts = counts_future.result()
        return ranges.assemble_parts(dsn, window, specs, staging, max_bad_share, extracted=extracted,
                                     window_counts=window_counts)
    finally:
        shutil.rmtree(part_root, ignore_errors=True)
