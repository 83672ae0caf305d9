"""Promotion records in PostgreSQL (`ml` schema): decisions, the current deployment, the
history of champions. A decision that moves the champion is committed 'pending' before the MLflow
alias moves and completed, with its deployment and history rows in one transaction, after it: the
alias lives outside PostgreSQL, so no single transaction can cover both, and a retry must find what
a crash left. An advisory lock per model serialises every promotion and the compare-and-set of the
alias (every promotion goes through here)."""
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
            conn.execute(_sql("canary.sql"))
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('planner.ml_schema'))")


@contextmanager
def model_lock(dsn: str, model_name: str):
    """A transaction holding the model's promotion lock until it commits or rolls back."""
    with connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('planner.promotion'), hashtext(%s))", (model_name,))
        yield conn


@contextmanager
def promotion_lock(dsn: str, model_name: str):
    """An autocommit connection holding the model's promotion lock across several short transactions
    (the same lock as `model_lock`). The lock is the session's: it goes when the process dies."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('planner.promotion'), hashtext(%s))", (model_name,))
        try:
            yield conn
        finally:
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(hashtext('planner.promotion'), hashtext(%s))", (model_name,))


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
    state: str = "complete"     # pending: a champion move not yet completed (see `complete_decision`)
    plan_key: str | None = None
    canary_id: int | None = None  # the canary this decision ends (a promotion by planner_online_eval)


def record_decision(conn, record: Record) -> int:
    """Insert the decision, nothing else: a move of the champion is recorded by `complete_decision`."""
    return conn.execute(
        "INSERT INTO ml.promotion_decisions (model_name, version, action, outcome, previous_champion, reasons, metrics,"
        " policy, approver, evaluation_run_id, airflow_dag_id, airflow_run_id, state, plan_key, canary_id)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING decision_id",
        (record.model_name, record.version, record.action, record.outcome, record.previous_champion,
         json.dumps(record.reasons), json.dumps(record.metrics, default=str), json.dumps(record.policy, default=str),
         record.approver, record.evaluation_run_id, record.airflow_dag_id, record.airflow_run_id, record.state,
         record.plan_key, record.canary_id)).fetchone()[0]


def complete_decision(conn, decision_id: int, model_uri: str) -> bool:
    """Mark the pending decision complete and write its deployment and history rows; False when it was
    not pending (already completed: nothing is written twice). Run it in one transaction."""
    row = conn.execute("UPDATE ml.promotion_decisions SET state = 'complete' WHERE decision_id = %s AND"
                       " state = 'pending' RETURNING model_name, version, previous_champion, outcome",
                       (decision_id,)).fetchone()
    if row is None:
        return False
    model_name, version, previous, outcome = row
    conn.execute(
        "INSERT INTO ml.model_deployments (model_name, version, previous_version, model_uri, decision_id, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (model_name) DO UPDATE SET version = EXCLUDED.version,"
        " previous_version = EXCLUDED.previous_version, model_uri = EXCLUDED.model_uri,"
        " decision_id = EXCLUDED.decision_id, updated_at = now()",
        (model_name, version, previous, model_uri, decision_id))
    conn.execute("INSERT INTO ml.model_version_history (model_name, version, previous_version, change, decision_id)"
                 " VALUES (%s, %s, %s, %s, %s)", (model_name, version, previous, outcome, decision_id))
    _close_canary_on_champion_change(conn, model_name, version, decision_id)
    return True


def _close_canary_on_champion_change(conn, model_name: str, version: str, decision_id: int) -> None:
    """A change of champion ends the running canary in the same transaction: 'promoted' when this decision
    promotes the canary's version by ending that canary, else 'abandoned' (its champion arm is gone)."""
    conn.execute(
        "UPDATE ml.canaries c SET ended_at = now(), end_decision_id = %(decision)s,"
        " state = CASE WHEN c.canary_version = %(version)s AND d.canary_id = c.canary_id THEN 'promoted'"
        "              ELSE 'abandoned' END,"
        " end_reason = CASE WHEN c.canary_version = %(version)s AND d.canary_id = c.canary_id"
        "                   THEN 'promoted: version ' || %(version)s || ' is the champion'"
        "                   ELSE 'the champion changed to version ' || %(version)s || ' (decision ' || %(decision)s::text"
        "                        || ') during the canary: its champion arm is gone' END"
        " FROM ml.promotion_decisions d WHERE d.decision_id = %(decision)s"
        " AND c.model_name = %(model)s AND c.state = 'running'",
        {"decision": decision_id, "version": version, "model": model_name})


def pending_decisions(conn, model_name: str) -> list[dict]:
    """Decisions an interrupted apply left pending, oldest first."""
    rows = conn.execute("SELECT decision_id, version, action, previous_champion, plan_key FROM ml.promotion_decisions"
                        " WHERE model_name = %s AND state = 'pending' ORDER BY decision_id", (model_name,)).fetchall()
    return [{"decision_id": r[0], "version": r[1], "action": r[2], "previous_champion": r[3], "plan_key": r[4]}
            for r in rows]


def abandon_decision(conn, decision_id: int) -> None:
    """A pending decision whose move will not happen (the champion moved elsewhere meanwhile)."""
    conn.execute("UPDATE ml.promotion_decisions SET state = 'abandoned' WHERE decision_id = %s AND state = 'pending'",
                 (decision_id,))


def plan_decision(conn, model_name: str, plan_key: str) -> dict | None:
    """The decision a plan's earlier attempt left (pending or complete; an abandoned one is over), with
    when its change of champion was recorded (None while pending or for a decision that moved nothing)."""
    row = conn.execute(
        "SELECT d.decision_id, d.outcome, d.state, d.reasons, h.changed_at FROM ml.promotion_decisions d"
        " LEFT JOIN ml.model_version_history h ON h.decision_id = d.decision_id"
        " WHERE d.model_name = %s AND d.plan_key = %s AND d.state <> 'abandoned'",
        (model_name, plan_key)).fetchone()
    if row is None:
        return None
    return {"decision_id": row[0], "outcome": row[1], "state": row[2], "reasons": row[3],
            "changed_at": row[4].isoformat() if row[4] else None}


def deployment(conn, model_name: str) -> dict | None:
    """The champion the serving side should load and, while one runs, the canary (else None) it routes a
    share of households to: what Redis holds and `include.serving.consumer` reads."""
    from include.promotion.canary import policy_version_id

    row = conn.execute(_sql("deployment.sql"), (model_name,)).fetchone()
    if row is None:
        return None
    canary = None
    if row[5] is not None:
        canary = {"canary_id": row[5], "version": row[6], "model_uri": row[7], "policy_version_id": row[8],
                  "share": row[9], "experiment_id": row[10], "started_at": row[11].isoformat(),
                  "champion_version": row[12], "champion_policy_version_id": row[13]}
    champion_policy = canary["champion_policy_version_id"] if canary and canary["champion_version"] == row[0] \
        else policy_version_id(model_name, row[0])
    return {"version": row[0], "previous_version": row[1], "model_uri": row[2], "decision_id": row[3],
            "updated_at": row[4].isoformat(), "policy_version_id": champion_policy, "canary": canary}


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
    """Every decision, oldest first; `state` tells a pending or abandoned move of the champion from a done one."""
    rows = conn.execute("SELECT decision_id, version, action, outcome, previous_champion, reasons, approver,"
                        " evaluation_run_id, state FROM ml.promotion_decisions WHERE model_name = %s"
                        " ORDER BY decision_id", (model_name,)).fetchall()
    keys = ("decision_id", "version", "action", "outcome", "previous_champion", "reasons", "approver",
            "evaluation_run_id", "state")
    return [dict(zip(keys, r)) for r in rows]


CANARY_COLUMNS = ("canary_id", "model_name", "champion_version", "canary_version", "champion_model_uri",
                  "canary_model_uri", "champion_policy_version_id", "canary_policy_version_id", "experiment_id",
                  "share", "policy", "state", "started_at", "ended_at", "end_reason", "start_decision_id",
                  "end_decision_id", "mlflow_run_id")


def _canary(row) -> dict | None:
    if row is None:
        return None
    canary = dict(zip(CANARY_COLUMNS, row))
    for key in ("started_at", "ended_at"):
        canary[key] = canary[key].isoformat() if canary[key] else None
    return canary


def running_canary(conn, model_name: str) -> dict | None:
    return _canary(conn.execute(f"SELECT {', '.join(CANARY_COLUMNS)} FROM ml.canaries WHERE model_name = %s"
                                " AND state = 'running'", (model_name,)).fetchone())


def canary(conn, canary_id: int) -> dict | None:
    return _canary(conn.execute(f"SELECT {', '.join(CANARY_COLUMNS)} FROM ml.canaries WHERE canary_id = %s",
                                (canary_id,)).fetchone())


def canaries(conn, model_name: str) -> list[dict]:
    rows = conn.execute(f"SELECT {', '.join(CANARY_COLUMNS)} FROM ml.canaries WHERE model_name = %s"
                        " ORDER BY canary_id", (model_name,)).fetchall()
    return [_canary(r) for r in rows]


def start_canary(conn, *, model_name: str, champion_version: str, canary_version: str, share: float,
                 experiment_id: str, champion_policy_version_id: str, canary_policy_version_id: str, policy: dict,
                 start_decision_id: int, started_at=None) -> int:
    """Insert the running canary (run it in the transaction that records its start decision)."""
    return conn.execute(
        "INSERT INTO ml.canaries (model_name, champion_version, canary_version, champion_model_uri, canary_model_uri,"
        " champion_policy_version_id, canary_policy_version_id, experiment_id, share, policy, start_decision_id,"
        " started_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, coalesce(%s, now()))"
        " RETURNING canary_id",
        (model_name, champion_version, canary_version, f"models:/{model_name}/{champion_version}",
         f"models:/{model_name}/{canary_version}", champion_policy_version_id, canary_policy_version_id,
         experiment_id, share, json.dumps(policy), start_decision_id, started_at)).fetchone()[0]


def end_canary(conn, canary_id: int, state: str, reason: str, decision_id: int | None) -> bool:
    """Close a running canary without a change of champion ('rolled_back' or 'abandoned'); False when it
    was not running (already closed: nothing is written twice)."""
    row = conn.execute("UPDATE ml.canaries SET state = %s, end_reason = %s, end_decision_id = %s, ended_at = now()"
                       " WHERE canary_id = %s AND state = 'running' RETURNING canary_id",
                       (state, reason, decision_id, canary_id)).fetchone()
    return row is not None


def set_canary_run(conn, canary_id: int, mlflow_run_id: str) -> None:
    conn.execute("UPDATE ml.canaries SET mlflow_run_id = %s WHERE canary_id = %s AND mlflow_run_id IS NULL",
                 (mlflow_run_id, canary_id))


LOOK_COLUMNS = ("look_id", "canary_id", "look_key", "day", "window_start", "window_end", "action", "reason",
                "statistic", "p_value", "lift", "ci_low", "ci_high", "arms", "other", "airflow_dag_id",
                "airflow_run_id", "looked_at")


def record_look(conn, look: dict) -> dict:
    """Insert a look once per `look_key` (a retry of the same task finds it) and return the stored one."""
    conn.execute(
        "INSERT INTO ml.canary_looks (canary_id, look_key, day, window_start, window_end, action, reason, statistic,"
        " p_value, lift, ci_low, ci_high, arms, other, airflow_dag_id, airflow_run_id)"
        " VALUES (%(canary_id)s, %(look_key)s, %(day)s, %(window_start)s, %(window_end)s, %(action)s, %(reason)s,"
        " %(statistic)s, %(p_value)s, %(lift)s, %(ci_low)s, %(ci_high)s, %(arms)s::jsonb, %(other)s::jsonb,"
        " %(airflow_dag_id)s, %(airflow_run_id)s) ON CONFLICT (canary_id, look_key) DO NOTHING",
        {**look, "arms": json.dumps(look["arms"]), "other": json.dumps(look.get("other") or {})})
    return looks(conn, look["canary_id"], look_key=look["look_key"])[0]


def looks(conn, canary_id: int, look_key: str | None = None) -> list[dict]:
    """The canary's looks, oldest first (or the one of `look_key`)."""
    where, params = "canary_id = %s", [canary_id]
    if look_key is not None:
        where, params = where + " AND look_key = %s", params + [look_key]
    rows = conn.execute(f"SELECT {', '.join(LOOK_COLUMNS)} FROM ml.canary_looks WHERE {where} ORDER BY look_id",
                        params).fetchall()
    out = []
    for row in rows:
        look = dict(zip(LOOK_COLUMNS, row))
        for key in ("window_start", "window_end", "looked_at"):
            look[key] = look[key].isoformat()
        out.append(look)
    return out
