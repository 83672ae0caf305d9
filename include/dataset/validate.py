"""Validation of a built version: the Great Expectations suite (a data file) on the training
rows, batch by batch (memory bounded by PLANNER_DATASET_BATCH_ROWS, not by the window), plus the
bad-share limit on quarantine. A failure names every failing check."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from include.dataset.window import Window

SUITE_FILE = "training_rows.json"


class DatasetValidationError(RuntimeError):
    """The version must not be published; the message lists what failed."""


@dataclass(frozen=True)
class Validation:
    success: bool
    failures: list[str]
    document: dict  # what goes to validation.json


def load_suite_definition() -> dict:
    return json.loads(resources.files("include.dataset").joinpath("expectations", SUITE_FILE).read_text())


def check_bad_share(counts: dict) -> str | None:
    """None when within the limit, else the failure with the counts behind it."""
    if counts["bad_share"] <= counts["max_bad_share"]:
        return None
    reasons = ", ".join(f"{r}={c}" for r, c in counts["quarantined_by_reason"].items() if c)
    return (f"bad share {counts['bad_share']:.2%} exceeds the limit {counts['max_bad_share']:.2%}: "
            f"{counts['quarantined']} quarantined ({reasons}) against {counts['rows']} rows")


# Expectations about the whole table, which one batch cannot answer: evaluated over the stream of
# batches by `_TableChecks` (with the suite's own kwargs), every other one by Great Expectations on
# each batch. See `run_expectations`.
TABLE_WIDE = ("expect_table_row_count_to_be_between", "expect_column_values_to_be_unique")
PARTIAL_LIST = 20


def _describe(kind: str, kwargs: dict, result: dict, exception: dict | None) -> str:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("batch_id",)}
    detail = {k: result[k] for k in ("observed_value", "unexpected_count", "unexpected_percent",
                                      "partial_unexpected_list") if k in result}
    if exception and exception.get("raised_exception"):
        detail["error"] = exception.get("exception_message")
    return f"{kind} {json.dumps(kwargs, default=str)} -> {json.dumps(detail, default=str)}"


def _identity(kind: str, kwargs: dict) -> tuple:
    """What an expectation checks (its type and columns): the same in the suite and in GX's result,
    whose other kwargs may have their parameters resolved."""
    columns = tuple(str(kwargs.get(k)) for k in ("column", "column_A", "column_B", "column_list"))
    return (kind, columns)


class _Merged:
    """One expectation's results over every batch: counts summed, percentages recomputed over the
    whole table, the first PARTIAL_LIST unexpected values, the first exception."""

    def __init__(self, config: dict):
        self.config, self.success, self.result, self.exception = config, True, {}, None

    def add(self, success: bool, result: dict, exception: dict | None) -> None:
        self.success = self.success and bool(success)
        for key in ("element_count", "missing_count", "unexpected_count"):
            if key in result:
                self.result[key] = self.result.get(key, 0) + int(result[key] or 0)
        if "observed_value" in result:
            self.result.setdefault("observed_value", result["observed_value"])
        if "partial_unexpected_list" in result:
            partial = self.result.setdefault("partial_unexpected_list", [])
            partial.extend(result["partial_unexpected_list"][: PARTIAL_LIST - len(partial)])
        if exception and exception.get("raised_exception") and not self.exception:
            self.exception = exception

    def document(self) -> dict:
        result = dict(self.result)
        if "unexpected_count" in result:
            total, missing = result.get("element_count", 0), result.get("missing_count", 0)
            nonmissing = total - missing
            result["unexpected_percent"] = 100 * result["unexpected_count"] / nonmissing if nonmissing else 0.0
            result["missing_percent"] = 100 * missing / total if total else 0.0
        return {"expectation_config": self.config, "success": self.success, "result": result,
                "exception_info": self.exception or {"raised_exception": False}}


class _TableChecks:
    """The table-wide expectations, over the stream of batches in file order.

    `plan_id` unique: the rows are ordered by plan_id (the build checks it), so equal plan_ids
    are neighbours and a run-length count over the stream finds every duplicate, holding one
    value between batches. Should the order ever be broken, the count is redone with a key set
    of every plan_id (only on that failure path). Counted as GX does: every row whose value
    occurs more than once is unexpected; nulls are missing, not duplicates."""

    def __init__(self, column: str = "plan_id"):
        self.column, self.rows, self.missing, self.unexpected = column, 0, 0, 0
        self.ordered, self.partial = True, []
        self._last, self._run = None, 0  # the last non-null value and how many rows carry it so far

    def add(self, table) -> None:
        self.rows += table.num_rows
        column = table[self.column].combine_chunks()
        self.missing += column.null_count
        for value in column.drop_null().to_pylist() if self.ordered else ():
            if value == self._last:
                self._run += 1
                continue
            if self._last is not None and value < self._last:
                self.ordered = False
                return
            self._close_run()
            self._last, self._run = value, 1

    def _close_run(self) -> None:
        if self._run > 1:
            self.unexpected += self._run
            self.partial.extend([self._last] * min(self._run, PARTIAL_LIST - len(self.partial)))

    def finish(self, tables) -> None:
        """`tables`: the same column again (an iterable of tables), read only if the order broke."""
        if self.ordered:
            self._close_run()
            return
        seen, repeated = set(), {}
        for table in tables:
            for value in table[self.column].drop_null().to_pylist():
                if value in seen:
                    repeated[value] = repeated.get(value, 1) + 1
                seen.add(value)
        self.unexpected = sum(repeated.values())
        self.partial = [v for v, n in repeated.items() for _ in range(n)][:PARTIAL_LIST]

    def evaluate(self, config: dict) -> tuple[bool, dict]:
        kwargs = config["kwargs"]
        if config["type"] == "expect_table_row_count_to_be_between":
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            success = (low is None or self.rows >= low) and (high is None or self.rows <= high)
            return success, {"observed_value": self.rows}
        if kwargs.get("column") != self.column:
            raise ValueError(f"a table-wide uniqueness check is implemented for {self.column} only, "
                             f"not {kwargs.get('column')!r}")
        result = {"element_count": self.rows, "missing_count": self.missing, "unexpected_count": self.unexpected,
                  "partial_unexpected_list": self.partial}
        if not self.ordered:
            result["details"] = "rows are not in plan_id order; duplicates counted with a key set"
        return self.unexpected == 0, result


def run_expectations(rows_path: Path, window: Window, batch_rows: int | None = None) -> tuple[bool, list[str], dict]:
    """The suite on `rows_path`, `batch_rows` rows at a time (default: PLANNER_DATASET_BATCH_ROWS).

    Great Expectations evaluates every row-wise expectation on each batch, as a pandas DataFrame
    of that batch only (one ephemeral context and suite for all of them); the results are merged
    (counts summed, percentages over the table). Two expectations are about the whole table and
    cannot be answered by one batch, so they are evaluated over the stream here, with the suite's
    kwargs, and reported in the same form: the row count (summed) and the uniqueness of plan_id
    (`_TableChecks`: neighbours in plan_id order, a key set if that order is broken). Memory is
    one batch, whatever the window.
    """
    import great_expectations as gx
    import pandas as pd
    from great_expectations.core import ExpectationSuite
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from include.dataset.build import iter_tables

    for name in ("great_expectations", "great_expectations._docs_decorators"):
        logging.getLogger(name).setLevel(logging.WARNING)
    definition = load_suite_definition()
    batch_wise = [e for e in definition["expectations"] if e["type"] not in TABLE_WIDE]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (context.data_sources.add_pandas("planner")
                        .add_dataframe_asset("training_rows")
                        .add_batch_definition_whole_dataframe("batch"))
    suite = context.suites.add(ExpectationSuite(name=definition["name"], expectations=batch_wise,
                                                meta=definition.get("meta")))
    parameters = {"window_start": pd.Timestamp(window.start), "window_last_instant": pd.Timestamp(window.last_instant)}
    merged = [_Merged(e) for e in batch_wise]
    table_checks = _TableChecks()
    batches = 0

    def validate(frame) -> None:
        result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format="SUMMARY", expectation_parameters=parameters)
        # GX regroups expectations by column before it validates: pair each result with its expectation
        # by what it checks, never by position (a suite edited out of column order would misname checks)
        waiting: dict[tuple, list[_Merged]] = {}
        for target in merged:
            waiting.setdefault(_identity(target.config["type"], target.config.get("kwargs", {})), []).append(target)
        for item in result.results:
            config = item.expectation_config
            queue = waiting.get(_identity(config.type, config.kwargs))
            if not queue:
                raise RuntimeError(f"Great Expectations returned a result for {config.type} {config.kwargs}, "
                                   "which is not in the suite")
            queue.pop(0).add(item.success, item.result or {}, item.exception_info)
        unanswered = [target.config["type"] for queue in waiting.values() for target in queue]
        if unanswered:
            raise RuntimeError(f"Great Expectations returned no result for {unanswered}")

    for table in iter_tables(rows_path, rows=batch_rows):
        if not table.num_rows:
            continue
        batches += 1
        table_checks.add(table)
        frame = table.to_pandas()
        del table
        validate(frame)
        del frame
    if not batches:  # an empty table: the row-wise expectations see its (empty) frame once, as before
        import pyarrow.parquet as pq

        validate(pq.read_schema(rows_path).empty_table().to_pandas())
    table_checks.finish(iter_tables(rows_path, columns=[table_checks.column], rows=batch_rows))

    results, failures = [], []
    by_position = iter(merged)
    for expectation in definition["expectations"]:
        if expectation["type"] in TABLE_WIDE:
            success, result = table_checks.evaluate(expectation)
            entry = {"expectation_config": expectation, "success": success, "result": result,
                     "exception_info": {"raised_exception": False}}
        else:
            entry = next(by_position).document()
        results.append(entry)
        if not entry["success"]:
            failures.append(_describe(expectation["type"], expectation["kwargs"], entry["result"],
                                      entry["exception_info"]))
    successful = sum(1 for r in results if r["success"])
    document = {
        "success": not failures,
        "suite_name": definition["name"],
        "statistics": {"evaluated_expectations": len(results), "successful_expectations": successful,
                       "unsuccessful_expectations": len(results) - successful,
                       "success_percent": 100 * successful / len(results) if results else None},
        "results": results,
        "meta": {"engine": f"great_expectations {gx.__version__}", "rows": table_checks.rows,
                 "batches": batches, "batch_rows": batch_rows or _default_batch_rows(),
                 "table_wide": list(TABLE_WIDE), "window_start": str(parameters["window_start"]),
                 "window_last_instant": str(parameters["window_last_instant"])},
    }
    return not failures, failures, json.loads(json.dumps(document, default=str))


def _default_batch_rows() -> int:
    from include.dataset.build import batch_rows

    return batch_rows()


def validate_version(staging: Path, window: Window, counts: dict) -> Validation:
    from include.core import names

    gx_success, failures, gx_document = run_expectations(staging / names.DATASET_TRAINING_FILE, window)
    bad_share = check_bad_share(counts)
    if bad_share:
        failures.append(bad_share)
    document = {
        "success": gx_success and bad_share is None,
        "failures": failures,
        "bad_share": {"value": counts["bad_share"], "limit": counts["max_bad_share"], "success": bad_share is None},
        "great_expectations": gx_document,
    }
    return Validation(success=document["success"], failures=failures, document=document)
