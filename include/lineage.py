"""Lineage you can query: for a model version, everything that made it and everything decided about it;
and the reverse, which versions were trained on a dataset (revision).

    python -m include.lineage version 3 [--json]            # a number or an alias (champion, challenger)
    python -m include.lineage dataset 2026-11-23 [--revision rev-...] [--json]

Read from what the phases already record, nothing else (docs/contracts.md):
- the registered version's tags (training run, dataset version / revision / digest, the training's
  and the registration's Airflow DAG runs, the evaluation run) and aliases;
- the MLflow runs: the dataset's (`planner_dataset`, found by version and digest, with the dataset
  DAG run's tags), the training's, every evaluation of the version (`planner_offline_eval`);
- the `ml` schema of the events database: every promotion decision about the version (with the
  promotion DAG run) and every change of champion it took part in. No schema yet: no decisions.

A field the records do not hold (a version registered before its tag existed, a run in another
store) is null, never guessed. Exit codes of the CLI: 0 answered, 2 unknown version or bad input.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from include.core import names
from include.core.tracking import all_pages
from include.registration.registry import run_in_store

MODEL = names.REGISTERED_MODEL_NAME
PAGE = 1000
DATASET_VERSION_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


class UnknownVersion(LookupError):
    """The registered model has no such version (or no version holds that alias)."""


# ---------------------------------------------------------------------------------------------- reading


def _client():
    from include.registration.registry import registry_client

    return registry_client()


def _value(tags: dict, key: str) -> str | None:
    """A tag's value; an absent or empty tag (written as '' before the value was known) is None."""
    value = tags.get(key)
    return value if value not in (None, "") else None


def _airflow(dag_id: str | None, run_id: str | None) -> dict | None:
    return {"dag_id": dag_id, "run_id": run_id} if run_id else None


def _version(client, reference: str):
    from mlflow.exceptions import MlflowException

    reference = str(reference).strip()
    if not reference:
        raise UnknownVersion("no version given")
    try:
        if reference.isdigit():
            return client.get_model_version(MODEL, reference)
        return client.get_model_version_by_alias(MODEL, reference)
    except MlflowException as exc:
        what = f"version {reference}" if reference.isdigit() else f"a version with alias {reference!r}"
        raise UnknownVersion(f"{MODEL} has no {what} in the registry at {_tracking_uri()}") from exc


def _tracking_uri() -> str:
    from include.core.config import settings

    return settings().mlflow_tracking_uri


def _experiment_id(client, name: str) -> str | None:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"unexpected quote in {value!r}")
    return f"'{value}'"


def _dataset_run(client, version: str | None, digest: str | None):
    """The `planner_dataset` run of that version and content digest (the dataset tracking's own lookup)."""
    if not version or not digest:
        return None
    experiment_id = _experiment_id(client, names.EXPERIMENT_DATASET)
    if experiment_id is None:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.dataset_version = {_quoted(version)} "
                                                             f"AND tags.dataset_digest = {_quoted(digest)}")
    return runs[0] if runs else None


def _evaluations(client, version: str, current_run_id: str | None) -> list[dict]:
    experiment_id = _experiment_id(client, names.EXPERIMENT_OFFLINE_EVAL)
    if experiment_id is None:
        return []
    runs = all_pages(lambda token: client.search_runs(
        [experiment_id], filter_string=f"tags.model_name = {_quoted(MODEL)} AND tags.model_version = {_quoted(version)}",
        order_by=["attributes.start_time ASC"], max_results=PAGE, page_token=token))
    found = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        baseline = _value(tags, "baseline_version")
        found.append({
            "run_id": run.info.run_id,
            "baseline_version": None if baseline in (None, "none") else baseline,
            "replay_window": _value(tags, "replay_window"),
            "replay_uri": _value(tags, "replay_uri"),
            "roc_auc": metrics.get("candidate.roc_auc"),
            "airflow_run_id": _value(tags, "airflow_run_id"),
            # only planner_offline_eval's `evaluate` task sets airflow_run_id on these runs
            "airflow": _airflow(names.DAG_OFFLINE_EVAL, _value(tags, "airflow_run_id")),
            "status": run.info.status,
            "started_at": _iso_ms(run.info.start_time),
            "current": run.info.run_id == current_run_id,  # the run the version's eval_* tags point at
        })
    return found


def _iso_ms(millis: int | None) -> str | None:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(millis / 1000, UTC).isoformat() if millis else None


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _promotion_records(dsn: str, version: str) -> tuple[list[dict], list[dict]]:
    """(decisions about the version, changes of champion it took part in), oldest first; both empty
    while the `ml` schema does not exist (no promotion has run against this database)."""
    from include.promotion.history import connect

    with connect(dsn, connect_timeout=10) as conn:
        if conn.execute("SELECT to_regclass('ml.promotion_decisions')").fetchone()[0] is None:
            return [], []
        rows = conn.execute(
            "SELECT decision_id, action, outcome, state, reasons, approver, airflow_dag_id, airflow_run_id,"
            " decided_at, previous_champion, evaluation_run_id FROM ml.promotion_decisions"
            " WHERE model_name = %s AND version = %s ORDER BY decision_id", (MODEL, version)).fetchall()
        decisions = [{"decision_id": r[0], "action": r[1], "outcome": r[2], "state": r[3], "reasons": r[4],
                      "approver": r[5], "airflow": _airflow(r[6], r[7]), "decided_at": _iso(r[8]),
                      "previous_champion": r[9], "evaluation_run_id": r[10]} for r in rows]
        history = []
        if conn.execute("SELECT to_regclass('ml.model_version_history')").fetchone()[0] is not None:
            rows = conn.execute(
                "SELECT history_id, version, previous_version, change, decision_id, changed_at"
                " FROM ml.model_version_history WHERE model_name = %s AND (version = %s OR previous_version = %s)"
                " ORDER BY history_id", (MODEL, version, version)).fetchall()
            history = [{"history_id": r[0], "version": r[1], "previous_version": r[2], "change": r[3],
                        "decision_id": r[4], "changed_at": _iso(r[5])} for r in rows]
    return decisions, history


# ---------------------------------------------------------------------------------------------- the API


def version_lineage(version: str, dsn: str | None = None) -> dict:
    """The lineage document of one version (a number or an alias); UnknownVersion when there is none.

    `dsn`: the events database holding the `ml` schema (default: settings().events_dsn). If it cannot
    be reached, `promotion` and `champion_history` are null and `warnings` says why.
    """
    from include.core.config import settings

    client = _client()
    found = _version(client, version)
    number = str(found.version)
    tags = dict(found.tags or {})

    training_mlflow_run = _value(tags, "mlflow_training_run_id")
    training_run = run_in_store(client, training_mlflow_run)
    run_tags = training_run.data.tags if training_run is not None else {}
    if run_tags.get("training_run_id") != _value(tags, "training_run_id"):
        run_tags = {}  # not this training run's (a copied directory): none of its tags speak for this version
    # the trainer records its Airflow DAG run in the manifest (-> version tags) and its MLflow run
    training_dag = _value(tags, "airflow_training_dag_id") or _value(run_tags, "airflow_dag_id")
    training_airflow = _value(tags, "airflow_training_run_id") or _value(run_tags, "airflow_run_id")

    dataset_version, digest = _value(tags, "dataset_version"), _value(tags, "dataset_digest")
    dataset_run = _dataset_run(client, dataset_version, digest)
    dataset_tags = dataset_run.data.tags if dataset_run is not None else {}

    warnings: list[str] = []
    try:
        decisions, champion_history = _promotion_records(dsn or settings().events_dsn, number)
    except Exception as exc:  # noqa: BLE001 - psycopg's errors: the registry half is still worth answering
        decisions = champion_history = None
        warnings.append(f"promotion records not read (events database unreachable): {str(exc).strip()[:300]}")

    return {
        "model": MODEL,
        "version": number,
        "aliases": sorted(getattr(found, "aliases", None) or []),
        "promotion_status": _value(tags, "promotion_status"),
        "training": {
            "training_run_id": _value(tags, "training_run_id"),
            "mlflow_run_id": training_mlflow_run,
            "airflow": _airflow(training_dag, training_airflow),
            "model_path": _value(tags, "model_path"),
            "training_cutoff": _value(tags, "training_cutoff"),
            "val_auc": float(tags["val_auc"]) if _value(tags, "val_auc") else None,
        },
        "dataset": {
            "version": dataset_version,
            "uri": _value(tags, "dataset_uri"),
            "revision": _value(tags, "dataset_revision"),
            "revision_uri": _value(tags, "dataset_revision_uri"),
            "digest": digest,
            "mlflow_run_id": dataset_run.info.run_id if dataset_run is not None else None,
            "airflow": _airflow(_value(dataset_tags, "airflow_dag_id"), _value(dataset_tags, "airflow_run_id")),
        },
        "registration": {
            "airflow": _airflow(_value(tags, "airflow_registration_dag_id"),
                                _value(tags, "airflow_registration_run_id")),
            "created_at": _iso_ms(found.creation_timestamp),
            "serving_package": _value(tags, "serving_package"),
        },
        "evaluations": _evaluations(client, number, _value(tags, "evaluation_run_id")),
        "promotion": decisions,
        "champion_history": champion_history,
        "warnings": warnings,
    }


def versions_trained_on(dataset_version: str, revision: str | None = None) -> list[dict]:
    """Every version trained on the dataset version, lowest first; with `revision` (a revision name
    `rev-...`, its URI, or the full content digest) only those trained on that revision. Versions
    registered before revisions were tagged have no revision and match no revision."""
    if not re.match(DATASET_VERSION_PATTERN, dataset_version or ""):
        raise ValueError(f"a dataset version is YYYY-MM-DD, got {dataset_version!r}")
    client = _client()
    versions = all_pages(lambda token: client.search_model_versions(
        f"name = {_quoted(MODEL)} and tags.dataset_version = {_quoted(dataset_version)}",
        max_results=PAGE, page_token=token))
    found = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        tags = dict(version.tags or {})
        if revision and revision not in (tags.get("dataset_revision"), tags.get("dataset_revision_uri"),
                                         tags.get("dataset_digest")):
            continue
        found.append({"model": MODEL, "version": str(version.version),
                      "training_run_id": _value(tags, "training_run_id"),
                      "mlflow_training_run_id": _value(tags, "mlflow_training_run_id"),
                      "dataset_version": _value(tags, "dataset_version"),
                      "dataset_revision": _value(tags, "dataset_revision"),
                      "dataset_digest": _value(tags, "dataset_digest"),
                      "aliases": sorted(getattr(version, "aliases", None) or []),
                      "promotion_status": _value(tags, "promotion_status"),
                      "created_at": _iso_ms(version.creation_timestamp)})
    return found


# ---------------------------------------------------------------------------------------------- the CLI


def _run_ref(airflow: dict | None) -> str:
    return f"{airflow['dag_id'] or '?'} / {airflow['run_id']}" if airflow else "-"


def _or_dash(value) -> str:
    return "-" if value in (None, "") else str(value)


def render_version(doc: dict) -> str:
    """Short, aligned text of a lineage document."""
    training, dataset, registration = doc["training"], doc["dataset"], doc["registration"]
    aliases = f" (aliases: {', '.join(doc['aliases'])})" if doc["aliases"] else ""
    rows = [
        ("training run", _or_dash(training["training_run_id"])),
        ("  mlflow run", _or_dash(training["mlflow_run_id"])),
        ("  airflow", _run_ref(training["airflow"])),
        ("  model path", _or_dash(training["model_path"])),
        ("dataset", f"{_or_dash(dataset['version'])}  revision {_or_dash(dataset['revision'])}"),
        ("  digest", _or_dash(dataset["digest"])),
        ("  uri", _or_dash(dataset["revision_uri"] or dataset["uri"])),
        ("  mlflow run", _or_dash(dataset["mlflow_run_id"])),
        ("  airflow", _run_ref(dataset["airflow"])),
        ("registration", _run_ref(registration["airflow"])),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{doc['model']} version {doc['version']}{aliases}"
             + (f": {doc['promotion_status']}" if doc["promotion_status"] else "")]
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    lines.append(f"  evaluations ({len(doc['evaluations'])})")
    for e in doc["evaluations"]:
        auc = f"{e['roc_auc']:.4f}" if e["roc_auc"] is not None else "-"
        lines.append(f"    {e['run_id']}  vs {e['baseline_version'] or 'none':<4}  window {_or_dash(e['replay_window'])}"
                     f"  roc_auc {auc}  airflow {_or_dash(e['airflow_run_id'])}" + ("  (current)" if e["current"] else ""))
    if doc["promotion"] is None:
        lines.append("  promotion decisions: not read")
    else:
        lines.append(f"  promotion decisions ({len(doc['promotion'])})")
        for d in doc["promotion"]:
            reasons = f"  reasons: {'; '.join(map(str, d['reasons']))}" if d["reasons"] else ""
            lines.append(f"    #{d['decision_id']:<4} {d['action']:<8} {d['outcome']:<12} {d['state']:<9} "
                         f"{_or_dash(d['decided_at'])}  airflow {_run_ref(d['airflow'])}"
                         f"  approver {_or_dash(d['approver'])}{reasons}")
    if doc["champion_history"]:
        lines.append(f"  champion history ({len(doc['champion_history'])})")
        for h in doc["champion_history"]:
            lines.append(f"    {h['changed_at']}  {h['change']:<11} {_or_dash(h['previous_version'])} -> {h['version']}"
                         f"  (decision {h['decision_id']})")
    lines += [f"  warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines)


def render_versions(dataset_version: str, revision: str | None, found: list[dict]) -> str:
    what = f"dataset {dataset_version}" + (f" revision {revision}" if revision else "")
    if not found:
        return f"no version of {MODEL} was trained on {what}"
    lines = [f"{MODEL} versions trained on {what}:"]
    for v in found:
        status = ", ".join(v["aliases"]) or v["promotion_status"] or ""
        lines.append(f"  {v['version']:>4}  {_or_dash(v['training_run_id'])}  {_or_dash(v['dataset_revision'])}"
                     f"  {status}".rstrip())
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.lineage", description="Lineage of planner model versions.")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("version", help="everything that made a version and everything decided about it")
    one.add_argument("version", help="a version number or an alias (champion, challenger)")
    one.add_argument("--events-dsn", default=None, help="the database of the ml schema (default PLANNER_EVENTS_DSN)")
    one.add_argument("--json", action="store_true", help="the document as JSON")
    back = commands.add_parser("dataset", help="which versions were trained on a dataset version (revision)")
    back.add_argument("dataset_version", help="YYYY-MM-DD")
    back.add_argument("--revision", default=None, help="rev-<digest>, its URI or the digest")
    back.add_argument("--json", action="store_true", help="the list as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import logging

    from include.core.config import apply_offline_env

    apply_offline_env()  # before MLflow loads

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the store's migration chatter is not the answer
    args = parse_args(argv)
    try:
        if args.command == "version":
            doc = version_lineage(args.version, dsn=args.events_dsn)
            print(json.dumps(doc, indent=2, default=str) if args.json else render_version(doc))
        else:
            found = versions_trained_on(args.dataset_version, args.revision)
            print(json.dumps(found, indent=2) if args.json else render_versions(args.dataset_version, args.revision,
                                                                                 found))
    except (UnknownVersion, ValueError) as exc:
        print(f"lineage: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
