"""Promotion records in PostgreSQL (`ml` schema): decisions, the current deployment, the
history of champions. A decision that moves the champion is written with its deployment and
history rows in one transaction, under an advisory lock per model that also serialises the
compare-and-set of the MLflow alias (every promotion goes through here)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources


def _sql(name: str) -> str:
    return resources.files("include.promotion").joinpath("sql", name).read_text()


def connect(dsn: str, **kwargs):
    import psycopg

    return psycopg.connect(dsn, **kwargs)


def ensure_schema(dsn: str) -> None:
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('planner.ml_schema'))")
        try:
            conn.execute(_sql("schema.sql"))
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('planner.ml_schema'))")


@contextmanager
def model_lock(dsn: str, model_name: str):
    """A transaction holding the model's promotion lock until it commits or rolls back."""
    with connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('planner.promotion'), hashtext(%s))", (model_name,))
        yield conn


@dataclass(frozen=True)
class Record:
    model_name: str
    version: str
    action: str                 # promote | rollback
    outcome: str                # promoted | rolled_back | rejected | refused | not_approved | dry_run | no_op
    previous_champion: str | None
    reasons: list[str]
    metrics: dict
    policy: dict
    approver: str | None = None
    evaluation_run_id: str | None = None
    airflow_dag_id: str | None = None
    airflow_run_id: str | None = None


def record_decision(conn, record: Record, model_uri: str | None = None) -> int:
    """Insert the decision; when it moved the champion, also the deployment and history rows.
    Runs in the caller's transaction (see `model_lock`)."""
    decision_id = conn.execute(
        "INSERT INTO ml.promotion_decisions (model_name, version, action, outcome, previous_champion, reasons, metrics,"
        " policy, approver, evaluation_run_id, airflow_dag_id, airflow_run_id)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, %s, %s) RETURNING decision_id",
        (record.model_name, record.version, record.action, record.outcome, record.previous_champion,
         json.dumps(record.reasons), json.dumps(record.metrics, default=str), json.dumps(record.policy),
         record.approver, record.evaluation_run_id, record.airflow_dag_id, record.airflow_run_id)).fetchone()[0]
    if record.outcome in ("promoted", "rolled_back"):
        conn.execute(
            "INSERT INTO ml.model_deployments (model_name, version, previous_version, model_uri, decision_id, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (model_name) DO UPDATE SET version = EXCLUDED.version,"
            " previous_version = EXCLUDED.previous_version, model_uri = EXCLUDED.model_uri,"
            " decision_id = EXCLUDED.decision_id, updated_at = now()",
            (record.model_name, record.version, record.previous_champion, model_uri, decision_id))
        conn.execute(
            "INSERT INTO ml.model_version_history (model_name, version, previous_version, change, decision_id)"
            " VALUES (%s, %s, %s, %s, %s)",
            (record.model_name, record.version, record.previous_champion, record.outcome, decision_id))
    return decision_id


def deployment(conn, model_name: str) -> dict | None:
    row = conn.execute("SELECT version, previous_version, model_uri, decision_id, updated_at FROM ml.model_deployments"
                       " WHERE model_name = %s", (model_name,)).fetchone()
    if row is None:
        return None
    return {"version": row[0], "previous_version": row[1], "model_uri": row[2], "decision_id": row[3],
            "updated_at": row[4].isoformat()}


def champions(conn, model_name: str) -> list[dict]:
    """Every change of champion, oldest first."""
    rows = conn.execute("SELECT version, previous_version, change, decision_id, changed_at FROM ml.model_version_history"
                        " WHERE model_name = %s ORDER BY history_id", (model_name,)).fetchall()
    return [{"version": r[0], "previous_version": r[1], "change": r[2], "decision_id": r[3],
             "changed_at": r[4].isoformat()} for r in rows]


def rollback_target(history: list[dict], current: str | None, requested: str | None) -> tuple[str | None, str]:
    """(version to roll back to, why) from the champion history; None when there is none. Pure."""
    ever = [h["version"] for h in history]
    if requested:
        if requested == current:
            return None, f"version {requested} is already the champion"
        if requested not in ever:
            return None, f"version {requested} was never champion: rollback only returns to a former champion"
        return requested, f"requested former champion {requested}"
    # The version the current champion replaced when it was promoted (rollbacks walk back, never forward).
    for entry in reversed(history):
        if entry["version"] == current and entry["change"] == "promoted":
            if entry["previous_version"]:
                return entry["previous_version"], f"the champion {current} replaced"
            break
    return None, f"no previous champion to roll back to (current: {current or 'none'})"


def decisions(conn, model_name: str) -> list[dict]:
    rows = conn.execute("SELECT decision_id, version, action, outcome, previous_champion, reasons, approver,"
                        " evaluation_run_id FROM ml.promotion_decisions WHERE model_name = %s ORDER BY decision_id",
                        (model_name,)).fetchall()
    keys = ("decision_id", "version", "action", "outcome", "previous_champion", "reasons", "approver",
            "evaluation_run_id")
    return [dict(zip(keys, r)) for r in rows]
