"""Drift in MLflow: `log_drift` compares a dataset version with the previous one and records the report in the
version's `planner_dataset` run, which the models page reads (it computes nothing itself).

What one call records in the dataset run (docs: README, "Drift"):

- metrics `drift.psi.<feature>` (one per compared input) and `drift.max_psi`;
- tags `drift_status` (`ok` / `warn` / `alert`, or `no_previous` for the first version), `drift_previous_version`,
  `drift_previous_revision`, `drift_previous_digest`, `drift_over_threshold` and `drift_warnings` (comma-separated
  features);
- `drift_status` `error` and `drift_error` when the comparison broke (the phase goes on; `raise_errors` to fail);
- the artifact `drift_report.json` (`include.drift.compare.compare_versions`' report, with each bin's shares).

Called again for the same pair (a retry, a rebuild with the same content) it records nothing new and sends no
second alert. When a feature is over its alert limit and alerts are configured (include/alerts/), it sends the
drift alert.
"""
from __future__ import annotations

import json
import re

from include.core import names

REPORT_FILE = "drift_report.json"
METRIC_PREFIX = "drift.psi."
VERSION_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def previous_version_uri(current_uri: str) -> str | None:
    """The dataset version published before the one at `current_uri` (a version or one of its revisions): the
    greatest complete version whose name is lower, or None."""
    from include.core import storage

    base = current_uri.rstrip("/")
    if storage.rsplit_name(base).startswith(storage.REVISION_PREFIX):
        base = base.rsplit("/", 1)[0]
    version, parent = storage.rsplit_name(base), base.rsplit("/", 1)[0]
    fs, path = storage.filesystem(parent)
    children = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.isdir(path) else []
    for name in sorted((c for c in children if VERSION_PATTERN.match(c) and c < version), reverse=True):
        if storage.is_complete(storage.join(parent, name)):
            return storage.join(parent, name)
    return None


def run_record(report: dict) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of a drift report in the dataset's MLflow run (what the models page reads)."""
    metrics = {METRIC_PREFIX + feature: float(entry["psi"]) for feature, entry in report["features"].items()}
    if report.get("max_psi") is not None:
        metrics["drift.max_psi"] = float(report["max_psi"])
    tags = {"drift_status": report["status"], "drift_previous_version": report["previous"]["version"] or "",
            "drift_previous_revision": report["previous"].get("revision") or "",
            "drift_previous_digest": report["previous"].get("digest") or "",
            "drift_over_threshold": ",".join(report["over_threshold"]),
            "drift_warnings": ",".join(report.get("warnings", []))}
    return metrics, tags


def _dataset_run(client, version: str, digest: str):
    from include.core.tracking import ensure_experiment

    experiment_id = ensure_experiment(names.EXPERIMENT_DATASET)
    runs = client.search_runs([experiment_id], filter_string=f"tags.dataset_version = '{version}' "
                                                             f"AND tags.dataset_digest = '{digest}'")
    return runs[0] if runs else None


def log_drift(current_uri: str, previous_uri: str | None = None, *, run_id: str | None = None,
              context=None, thresholds: dict | None = None, raise_errors: bool = False) -> dict | None:
    """`_log_drift`, but a comparison that breaks (an unreadable previous version, ...) does not fail the
    dataset's phase unless `raise_errors`: it is printed, tagged `drift_status` = `error` with `drift_error`
    on the run, and None is returned."""
    try:
        return _log_drift(current_uri, previous_uri, run_id=run_id, context=context, thresholds=thresholds)
    except Exception as exc:
        if raise_errors:
            raise
        message = f"{type(exc).__name__}: {exc}"[:500]
        print(f"drift NOT compared ({message})")
        if run_id:
            try:
                import mlflow

                mlflow.MlflowClient().set_tag(run_id, "drift_status", "error")
                mlflow.MlflowClient().set_tag(run_id, "drift_error", message)
            except Exception as tag_error:  # noqa: BLE001 - the registry itself is down: the print above says it
                print(f"drift error not recorded either: {tag_error}")
        return None


def _log_drift(current_uri: str, previous_uri: str | None = None, *, run_id: str | None = None,
               context=None, thresholds: dict | None = None) -> dict | None:
    """Compare the dataset at `current_uri` (the version or its revision's location) with `previous_uri` (default:
    the version published before it, `previous_version_uri`), log the report into the current revision's MLflow
    run (`run_id`, default: the `planner_dataset` run of that revision), alert when a feature is over its limit.
    `context`: the Airflow task context, for the alert's links. Returns the report (None for a first version)."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    from include.core.tracking import configure_mlflow
    from include.drift.compare import compare_versions
    from include.drift.profile import profile

    configure_mlflow()
    client = mlflow.MlflowClient()
    current = profile(current_uri)
    if run_id is None:
        run = _dataset_run(client, current["version"], current["digest"])
        if run is None:
            raise LookupError(f"no {names.EXPERIMENT_DATASET} run of {current['version']} {current['revision']}: "
                              "log the dataset version first")
        run_id = run.info.run_id
    previous_uri = previous_uri or previous_version_uri(current_uri)
    if previous_uri is None:
        client.set_tag(run_id, "drift_status", "no_previous")
        print(f"drift: {current['version']} is the first dataset version: nothing to compare with")
        return None
    report = compare_versions(profile(previous_uri), current, thresholds)
    tags = client.get_run(run_id).data.tags
    already = (tags.get("drift_previous_digest") == (report["previous"]["digest"] or "")
               and tags.get("drift_previous_version") == report["previous"]["version"] and "drift_status" in tags
               and tags["drift_status"] != "no_previous")
    print(f"drift of {current['version']} against {report['previous']['version']}: {report['status']} "
          f"(max PSI {report['max_psi']}); over threshold: {report['over_threshold'] or 'none'}")
    for feature, entry in report["features"].items():
        print(f"  {feature}: PSI {entry['psi']:.4f} ({entry['status']}; warn {entry['warn']}, alert {entry['alert']})")
    if already:
        print(f"drift: already recorded in run {run_id}; nothing logged again")
        return report
    import time

    now = int(time.time() * 1000)
    metrics, tags = run_record(report)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_text(run_id, json.dumps(report, indent=2, sort_keys=True), REPORT_FILE)
    if report["over_threshold"]:
        from include.alerts import notify_drift

        notify_drift(report, run_id=run_id, context=context)
    return report
