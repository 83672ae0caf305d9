"""Validation of a built version: the Great Expectations suite (a data file) on the training
rows, plus the bad-share limit on quarantine. A failure names every failing check."""
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


def _describe(result) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    observed = result.result or {}
    detail = {k: observed[k] for k in ("observed_value", "unexpected_count", "unexpected_percent",
                                        "partial_unexpected_list") if k in observed}
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail["error"] = result.exception_info.get("exception_message")
    return f"{config.type} {json.dumps(kwargs, default=str)} -> {json.dumps(detail, default=str)}"


def run_expectations(rows_path: Path, window: Window) -> tuple[bool, list[str], dict]:
    import great_expectations as gx
    import pandas as pd
    from great_expectations.core import ExpectationSuite

    for name in ("great_expectations", "great_expectations._docs_decorators"):
        logging.getLogger(name).setLevel(logging.WARNING)
    frame = pd.read_parquet(rows_path)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (context.data_sources.add_pandas("planner")
                        .add_dataframe_asset("training_rows")
                        .add_batch_definition_whole_dataframe("whole"))
    definition = load_suite_definition()
    suite = context.suites.add(ExpectationSuite(name=definition["name"], expectations=definition["expectations"],
                                                meta=definition.get("meta")))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format="SUMMARY", expectation_parameters={
        "window_start": pd.Timestamp(window.start), "window_last_instant": pd.Timestamp(window.last_instant)})
    failures = [_describe(r) for r in result.results if not r.success]
    return bool(result.success), failures, json.loads(json.dumps(result.to_json_dict(), default=str))


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
