"""The models page's documents, read from what the phases recorded (docs/contracts.md), nothing else:

- the registry: every version of the model, its tags (dataset version / revision / digest, training
  run, validation metrics, the Airflow runs of training and registration, the evaluation's headline
  `eval_*` tags and `evaluation_run_id`, the promotion tags) and the `champion` alias;
- MLflow runs: the evaluations (`planner_offline_eval`: the share of the oracle, the evaluation's
  Airflow run) and the dataset runs (`planner_dataset`: rows, quarantine counts by reason, the dataset
  DAG run, the drift against the previous version that include/drift logged), one search per experiment
  whatever the number of versions;
- the `ml` schema: every promotion decision (outcome, reasons, approver, the promotion DAG run), the
  changes of champion (promotions and rollbacks) and the current deployment.

Nothing is recomputed: a number the phases did not record is null (a ratio of two recorded numbers,
such as a reason's share of the quarantine, is the only arithmetic). Costs: one registry search (paged
by 1000), one run search per experiment, three queries on PostgreSQL.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime

from include.core import names
from include.core.tracking import all_pages

MODEL = names.REGISTERED_MODEL_NAME
PAGE = 1000
DATASET_VERSION_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
QUARANTINE_PREFIX = "quarantined_"  # the dataset run's metric per reject reason (include/dataset/tracking.py)
DRIFT_PREFIX = "drift.psi."  # the dataset run's PSI per input against the previous version (include/drift/tracking.py)


class NotFound(LookupError):
    """No such model, version or dataset version in the records."""


# ------------------------------------------------------------------------------------------- small helpers


def _value(tags: dict, key: str) -> str | None:
    value = tags.get(key)
    return value if value not in (None, "") else None


def _number(tags: dict, key: str) -> float | None:
    value = _value(tags, key)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _airflow(dag_id: str | None, run_id: str | None) -> dict | None:
    return {"dag_id": dag_id, "run_id": run_id} if run_id else None


def _iso_ms(millis: int | None) -> str | None:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat() if millis else None


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"unexpected quote in {value!r}")
    return f"'{value}'"


# ------------------------------------------------------------------------------------------- reading


def read_versions(client) -> list:
    """Every registered version of the model, lowest first."""
    versions = all_pages(lambda token: client.search_model_versions(
        f"name = {_quoted(MODEL)}", max_results=PAGE, page_token=token))
    return sorted(versions, key=lambda v: int(v.version))


def read_aliases(client) -> dict[str, list[str]]:
    """{version: [aliases]} from the registered model (a version search does not carry them); empty while
    the model is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(MODEL)
    except MlflowException:
        return {}
    found: dict[str, list[str]] = {}
    for alias, version in (getattr(model, "aliases", None) or {}).items():
        found.setdefault(str(version), []).append(alias)
    return {version: sorted(aliases) for version, aliases in found.items()}


def read_runs(client, experiment_name: str, filter_string: str = "") -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return all_pages(lambda token: client.search_runs([experiment.experiment_id], filter_string=filter_string,
                                                   order_by=["attributes.start_time ASC"], max_results=PAGE,
                                                   page_token=token))


def read_promotion_records(dsn: str | None) -> tuple[dict | None, list[str]]:
    """({decisions, history, deployment}, warnings); None (and a warning) when the database cannot be
    read. No `ml` schema yet (no promotion has run against this database): empty records."""
    if not dsn:
        return None, ["no events database configured: promotion records not read"]
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            if conn.execute("SELECT to_regclass('ml.promotion_decisions')").fetchone()[0] is None:
                return {"decisions": [], "history": [], "deployment": None}, []
            rows = conn.execute(
                "SELECT decision_id, version, action, outcome, state, previous_champion, reasons, approver,"
                " evaluation_run_id, airflow_dag_id, airflow_run_id, decided_at FROM ml.promotion_decisions"
                " WHERE model_name = %s ORDER BY decision_id", (MODEL,)).fetchall()
            decisions = [{"decision_id": r[0], "version": r[1], "action": r[2], "outcome": r[3], "state": r[4],
                          "previous_champion": r[5], "reasons": r[6], "approver": r[7], "evaluation_run_id": r[8],
                          "airflow": _airflow(r[9], r[10]), "decided_at": _iso(r[11])} for r in rows]
            rows = conn.execute(
                "SELECT history_id, version, previous_version, change, decision_id, changed_at"
                " FROM ml.model_version_history WHERE model_name = %s ORDER BY history_id", (MODEL,)).fetchall()
            history = [{"history_id": r[0], "version": r[1], "previous_version": r[2], "change": r[3],
                        "decision_id": r[4], "changed_at": _iso(r[5])} for r in rows]
            row = conn.execute("SELECT version, previous_version, model_uri, decision_id, updated_at"
                               " FROM ml.model_deployments WHERE model_name = %s", (MODEL,)).fetchone()
            deployment = ({"version": row[0], "previous_version": row[1], "model_uri": row[2],
                           "decision_id": row[3], "updated_at": _iso(row[4])} if row else None)
    except psycopg.Error as exc:
        return None, [f"promotion records not read (events database unreachable): {str(exc).strip()[:300]}"]
    return {"decisions": decisions, "history": history, "deployment": deployment}, []


# ------------------------------------------------------------------------------------------- documents


def _dataset_entry(run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    rows, quarantined = metrics.get("rows"), metrics.get("quarantined")
    by_reason = {key[len(QUARANTINE_PREFIX):]: int(value) for key, value in sorted(metrics.items())
                 if key.startswith(QUARANTINE_PREFIX)}
    total = (rows or 0) + (quarantined or 0)
    return {
        "version": _value(tags, "dataset_version"),
        "revision": _value(tags, "dataset_revision"),
        "digest": _value(tags, "dataset_digest"),
        "uri": _value(tags, "dataset_uri"),
        "revision_uri": _value(tags, "dataset_revision_uri"),
        "rows": int(rows) if rows is not None else None,
        "quarantined": int(quarantined) if quarantined is not None else None,
        "bad_share": metrics.get("bad_share"),
        "quarantined_by_reason": by_reason,
        # a reason's share of everything the build looked at (rows + quarantined), as bad_share is
        "quarantine_share_by_reason": {k: (n / total if total else None) for k, n in by_reason.items()},
        "duplicate_deliveries": _int(metrics.get("duplicate_deliveries")),
        "duplicate_acceptances": _int(metrics.get("duplicate_acceptances")),
        "generated_never_accepted": _int(metrics.get("generated_never_accepted")),
        "drift": _drift(tags, metrics),
        "mlflow_run_id": run.info.run_id,
        "mlflow_experiment_id": run.info.experiment_id,
        "airflow": _airflow(_value(tags, "airflow_dag_id"), _value(tags, "airflow_run_id")),
        "logged_at": _iso_ms(run.info.start_time),
    }


def _drift(tags: dict, metrics: dict) -> dict | None:
    """The drift `include.drift.tracking.log_drift` recorded in the dataset run (against the previous version):
    its status, the features over their limit, each feature's PSI; None where none was recorded."""
    status = _value(tags, "drift_status")
    if status is None:
        return None

    def split(key: str) -> list[str]:
        return [x for x in (tags.get(key) or "").split(",") if x]

    return {"status": status, "previous_version": _value(tags, "drift_previous_version"),
            "previous_revision": _value(tags, "drift_previous_revision"),
            "over_threshold": split("drift_over_threshold"), "warnings": split("drift_warnings"),
            "max_psi": metrics.get("drift.max_psi"), "error": _value(tags, "drift_error"),
            "psi": {key[len(DRIFT_PREFIX):]: value for key, value in sorted(metrics.items())
                    if key.startswith(DRIFT_PREFIX)}}


def _int(value) -> int | None:
    return int(value) if value is not None else None


def _evaluation_entry(run, current_run_id: str | None) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    baseline = _value(tags, "baseline_version")
    share = metrics.get("comparison.auc_share_of_oracle")
    oracle, candidate = metrics.get("oracle.roc_auc"), metrics.get("candidate.roc_auc")
    if share is None and oracle and candidate is not None:
        share = candidate / oracle  # both recorded by the evaluation: their ratio is what it would have logged
    return {
        "run_id": run.info.run_id,
        "mlflow_experiment_id": run.info.experiment_id,
        "baseline_version": None if baseline in (None, "none") else baseline,
        "replay_window": _value(tags, "replay_window"),
        "roc_auc": candidate,
        "log_loss": metrics.get("candidate.log_loss"),
        "latency_p95_ms": metrics.get("candidate.latency_p95_ms"),
        "oracle_roc_auc": oracle,
        "share_of_oracle": share,
        "examples": _int(metrics.get("counts.examples")),
        "airflow": _airflow(names.DAG_OFFLINE_EVAL, _value(tags, "airflow_run_id")),
        "status": run.info.status,
        "started_at": _iso_ms(run.info.start_time),
        "current": run.info.run_id == current_run_id,
    }


def _gate(decisions: list[dict], tags: dict) -> dict | None:
    """The gate's outcome for the version: its latest promote decision (the `ml` record); without the
    records, what the promotion tags say."""
    promotes = [d for d in decisions if d["action"] == "promote" and d["state"] != "abandoned"]
    if promotes:
        last = promotes[-1]
        return {key: last[key] for key in ("decision_id", "outcome", "state", "reasons", "approver", "airflow",
                                           "decided_at", "previous_champion", "evaluation_run_id")}
    if _value(tags, "promotion_status") == "rejected":
        import json

        try:
            reasons = json.loads(tags.get("promotion_reasons") or "[]")
        except ValueError:
            reasons = [tags["promotion_reasons"]]
        return {"decision_id": _value(tags, "promotion_decision_id"), "outcome": "rejected", "state": None,
                "reasons": reasons, "approver": None, "airflow": None, "decided_at": None,
                "previous_champion": None, "evaluation_run_id": _value(tags, "evaluation_run_id")}
    return None


def _version_entry(version, evaluations: list, datasets: dict, decisions: list[dict], aliases: list[str]) -> dict:
    tags = dict(version.tags or {})
    number = str(version.version)
    current_run = _value(tags, "evaluation_run_id")
    evals = [_evaluation_entry(run, current_run) for run in evaluations]
    current = next((e for e in evals if e["current"]), None)
    dataset_key = (_value(tags, "dataset_version"), _value(tags, "dataset_digest"))
    dataset_run = datasets.get(dataset_key)
    dataset = {"version": dataset_key[0], "revision": _value(tags, "dataset_revision"), "digest": dataset_key[1],
               "uri": _value(tags, "dataset_uri"), "revision_uri": _value(tags, "dataset_revision_uri"),
               "rows": None, "quarantined": None, "bad_share": None, "quarantined_by_reason": {},
               "quarantine_share_by_reason": {}, "mlflow_run_id": None, "mlflow_experiment_id": None,
               "airflow": None, "drift": None}
    if dataset_run is not None:
        entry = _dataset_entry(dataset_run)
        dataset.update({k: entry[k] for k in ("rows", "quarantined", "bad_share", "quarantined_by_reason",
                                              "quarantine_share_by_reason", "mlflow_run_id", "mlflow_experiment_id",
                                              "airflow", "drift")})
    mine = [d for d in decisions if d["version"] == number]
    return {
        "version": number,
        "aliases": aliases,
        "created_at": _iso_ms(version.creation_timestamp),
        "promotion_status": _value(tags, "promotion_status"),
        "promoted_at": _value(tags, "promoted_at"),
        "dataset": dataset,
        "training": {
            "training_run_id": _value(tags, "training_run_id"),
            "mlflow_run_id": _value(tags, "mlflow_training_run_id"),
            "airflow": _airflow(_value(tags, "airflow_training_dag_id"), _value(tags, "airflow_training_run_id")),
            "training_cutoff": _value(tags, "training_cutoff"),
            "model_path": _value(tags, "model_path"),
            "val_auc": _number(tags, "val_auc"),
            "val_loss": _number(tags, "val_loss"),
            "val_accuracy": _number(tags, "val_accuracy"),
            "baseline_val_auc": _number(tags, "baseline_val_auc"),
        },
        "registration": {
            "airflow": _airflow(_value(tags, "airflow_registration_dag_id"),
                                _value(tags, "airflow_registration_run_id")),
            "serving_package": _value(tags, "serving_package"),
        },
        # the headline figures as the version's eval_* tags hold them (what promotion gated on)
        "evaluation": None if current_run is None else {
            "run_id": current_run,
            "mlflow_experiment_id": current["mlflow_experiment_id"] if current else None,
            "roc_auc": _number(tags, "eval_roc_auc"),
            "log_loss": _number(tags, "eval_log_loss"),
            "accuracy": _number(tags, "eval_accuracy"),
            "latency_p95_ms": _number(tags, "eval_latency_p95_ms"),
            "share_of_oracle": current["share_of_oracle"] if current else None,
            "examples": int(tags["eval_examples"]) if _value(tags, "eval_examples") else None,
            "replay_window": _value(tags, "eval_replay_window"),
            "baseline_version": (None if _value(tags, "eval_baseline_version") in (None, "none")
                                 else tags["eval_baseline_version"]),
            "airflow": current["airflow"] if current else None,
        },
        "evaluations": evals,
        "gate": _gate(mine, tags),
        "decisions": mine,
    }


def _champion(champion: str | None, records: dict | None, versions: list[dict]) -> dict | None:
    if champion is None:
        return None
    since, decision_id, change = None, None, None
    for entry in (records or {}).get("history", []):
        if entry["version"] == champion:
            since, decision_id, change = entry["changed_at"], entry["decision_id"], entry["change"]
    if since is None:  # no records: the promotion tag of the version
        tags_entry = next((v for v in versions if v["version"] == champion), None)
        since = tags_entry["promoted_at"] if tags_entry else None
    deployment = (records or {}).get("deployment")
    return {"version": champion, "since": since, "change": change, "decision_id": decision_id,
            "deployment": deployment}


def _timeline(records: dict | None) -> list[dict]:
    """Every change of champion, oldest first, with the decision behind it (who approved, which run)."""
    if not records:
        return []
    by_id = {d["decision_id"]: d for d in records["decisions"]}
    timeline = []
    for entry in records["history"]:
        decision = by_id.get(entry["decision_id"], {})
        timeline.append({**entry, "action": decision.get("action"), "approver": decision.get("approver"),
                         "reasons": decision.get("reasons"), "airflow": decision.get("airflow")})
    return timeline


def model_document(client, dsn: str | None) -> dict:
    """`{model, champion, versions, promotions, decisions, warnings}` of the registered model."""
    versions = read_versions(client)
    aliases = read_aliases(client)
    champion = next((v for v, names_ in aliases.items() if names.CHAMPION_ALIAS in names_), None)
    evaluations: dict[str, list] = {}
    for run in read_runs(client, names.EXPERIMENT_OFFLINE_EVAL, f"tags.model_name = {_quoted(MODEL)}"):
        evaluations.setdefault(run.data.tags.get("model_version"), []).append(run)
    datasets = {}
    for run in read_runs(client, names.EXPERIMENT_DATASET):  # oldest first: a rebuild's newer run wins
        datasets[(_value(run.data.tags, "dataset_version"), _value(run.data.tags, "dataset_digest"))] = run
    records, warnings = read_promotion_records(dsn)
    decisions = records["decisions"] if records else []
    entries = [_version_entry(v, evaluations.get(str(v.version), []), datasets, decisions,
                              aliases.get(str(v.version), [])) for v in versions]
    return {"model": MODEL, "champion": _champion(champion, records, entries), "versions": entries,
            "promotions": _timeline(records), "decisions": decisions,
            "records_read": records is not None, "warnings": warnings}


def version_document(client, dsn: str | None, number: str) -> dict:
    """One version's entry, with the champion and the changes of champion it took part in."""
    return version_entry(model_document(client, dsn), number)


def version_entry(doc: dict, number: str) -> dict:
    """One version's document out of the model document."""
    if not str(number).isdigit():
        raise NotFound(f"a version is a number, got {number!r}")
    entry = next((v for v in doc["versions"] if v["version"] == str(int(number))), None)
    if entry is None:
        raise NotFound(f"{MODEL} has no version {number}")
    mine = [p for p in doc["promotions"] if entry["version"] in (p["version"], p["previous_version"])]
    return {"model": MODEL, **entry, "champion": doc["champion"], "promotions": mine, "warnings": doc["warnings"],
            **({"read_at": doc["read_at"]} if "read_at" in doc else {})}


def dataset_document(client, version: str) -> dict:
    """A dataset version: each revision's MLflow run (rows, quarantine by reason, the dataset DAG run) and
    the model versions trained on it."""
    if not DATASET_VERSION_PATTERN.match(version or ""):
        raise ValueError(f"a dataset version is YYYY-MM-DD, got {version!r}")
    revisions = [_dataset_entry(run) for run in
                 read_runs(client, names.EXPERIMENT_DATASET, f"tags.dataset_version = {_quoted(version)}")]
    trained, aliases = [], read_aliases(client)
    found = all_pages(lambda token: client.search_model_versions(
        f"name = {_quoted(MODEL)} and tags.dataset_version = {_quoted(version)}", max_results=PAGE, page_token=token))
    for v in sorted(found, key=lambda v: int(v.version)):
        tags = dict(v.tags or {})
        if tags.get("dataset_version") == version:
            trained.append({"version": str(v.version), "dataset_revision": _value(tags, "dataset_revision"),
                            "dataset_digest": _value(tags, "dataset_digest"),
                            "training_run_id": _value(tags, "training_run_id"),
                            "aliases": aliases.get(str(v.version), []),
                            "promotion_status": _value(tags, "promotion_status")})
    if not revisions and not trained:
        raise NotFound(f"no dataset version {version} in the records (no {names.EXPERIMENT_DATASET} run, "
                       f"no {MODEL} version trained on it)")
    return {"dataset": names.DATASET_NAME, "version": version, "revisions": revisions, "model_versions": trained}
