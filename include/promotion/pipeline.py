"""What the `planner_promotion` tasks do, as plain functions (no Airflow import).

decide -> (approval) -> apply, or -> record the outcome that moved nothing. The champion alias
moves only in `apply`, compare-and-set under the model's PostgreSQL lock: if the champion is not
the one the decision was made against, nothing moves and the refusal is recorded. `apply` is a
retry's to finish: whichever step a crash stopped it at, running it again with the same plan ends
with the alias, the records, the tags and Redis agreeing.
"""
from __future__ import annotations

import hashlib
import json
import logging

from include.core import names
from include.promotion import history
from include.promotion.gate import decide, gate_inputs, load_policy

log = logging.getLogger(__name__)

MODEL = names.REGISTERED_MODEL_NAME
REDIS_KEY = f"planner:champion:{MODEL}"
MOVES = ("promoted", "rolled_back")
CANARY_DAG = names.ONLINE_EVAL


class PromotionError(RuntimeError):
    """The promotion cannot go on (a missing version or evaluation, a moved champion); the message says why."""


def client():
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def _alias_version(registry, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(registry.get_model_version_by_alias(MODEL, alias).version)
    except MlflowException:
        return None


def _version(registry, reference: str):
    from mlflow.exceptions import MlflowException

    try:
        if str(reference).isdigit():
            return registry.get_model_version(MODEL, str(reference))
        return registry.get_model_version_by_alias(MODEL, str(reference))
    except MlflowException as exc:
        raise PromotionError(f"{MODEL} has no version {reference!r}") from exc


def read_report(evaluation_run_id: str) -> dict:
    """The offline evaluation's JSON report, from its MLflow run."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    client()
    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{evaluation_run_id}/{names.EVAL_REPORT_FILE}"))
    except (MlflowException, OSError) as exc:
        raise PromotionError(f"evaluation run {evaluation_run_id} has no readable {names.EVAL_REPORT_FILE}: {exc}") from exc


def _summary(version: str, champion: str | None, decision: dict, report: dict | None) -> str:
    """Markdown for the approver: what is asked, the verdict and the numbers it rests on."""
    lines = [f"**Promote {MODEL} version {version}** (champion now: {champion or 'none'})", "",
             f"Gate: **{'passed' if decision['passed'] else 'FAILED'}**", ""]
    lines += [f"- {'✔' if c['passed'] else '✘'} {c['name']}: {c['detail']}" for c in decision["checks"]]
    if report:
        models = report["models"]
        lines += ["", "| metric | candidate | champion |", "|---|---|---|"]
        for key in ("roc_auc", "accuracy", "log_loss", "plan_ranking", "latency_p95_ms"):
            new = models["candidate"].get(key)
            old = (models.get("champion") or {}).get(key)
            lines.append(f"| {key} | {new if new is None else round(new, 4)} | {old if old is None else round(old, 4)} |")
        lines += ["", f"Evaluation run `{report.get('evaluation_run_id')}` on replay window "
                      f"{report['window']['version']} ({report['counts']['examples']} meals)."]
    return "\n".join(lines)


def decide_promotion(dsn: str, model_version: str | None, evaluation_run_id: str | None,
                     require_approval: bool, dry_run: bool, rollout: str = "direct") -> dict:
    """Gate the version on its evaluation; returns the plan `apply`/`record_outcome` act on.

    `rollout`: `direct` moves the champion once the gate passes; `canary` starts a canary instead
    (outcome `canary_started`: the candidate serves a share of households, the champion stays, and
    `planner_online_eval` decides). With no champion there is nothing to compare against: the first
    model is promoted directly whatever the rollout."""
    if rollout not in ("direct", "canary"):
        raise PromotionError(f"rollout must be direct or canary, got {rollout!r}")
    history.ensure_schema(dsn)
    reconcile_pending(dsn)
    registry = client()
    version = _version(registry, model_version or names.CHALLENGER_ALIAS)
    number = str(version.version)
    champion = _alias_version(registry, names.CHAMPION_ALIAS)
    policy = load_policy()
    run_id = evaluation_run_id or version.tags.get("evaluation_run_id")
    if not run_id:
        raise PromotionError(f"version {number} has no evaluation (no evaluation_run_id tag): run "
                             f"{names.DAG_OFFLINE_EVAL} for it first")
    report = read_report(run_id)
    if str(report["model_version"]) != number:
        raise PromotionError(f"evaluation run {run_id} evaluated version {report['model_version']}, not {number}")
    candidate, champion_metrics, slices = gate_inputs(report, version.tags)
    evaluated_against = report.get("baseline_version")
    if champion and evaluated_against != champion and champion != number:
        # The evaluation did not compare against today's champion: gating on absolutes alone would let a
        # regression through, so the change checks need the current champion's numbers.
        raise PromotionError(f"version {number} was evaluated against {evaluated_against or 'no champion'} but the "
                             f"champion is now {champion}: re-run {names.DAG_OFFLINE_EVAL} for version {number}")
    decision = decide(policy, candidate, champion_metrics, slices).as_dict()
    if champion == number:
        outcome, next_step = "no_op", "record"
        decision["reasons"] = [f"version {number} is already the champion"]
    elif not decision["passed"]:
        outcome, next_step = "rejected", "record"
    elif dry_run:
        outcome, next_step = "dry_run", "record"
    else:
        outcome, next_step = "promoted", "approval" if require_approval else "apply"
    canary_spec, summary = None, _summary(number, champion, decision, report)
    if outcome == "promoted" and rollout == "canary":
        if champion is None:
            summary += "\n\nRollout `canary` asked, but there is no champion to compare against: promoted directly."
        else:
            outcome, next_step, canary_spec, why = _canary_outcome(dsn, policy, number, champion, next_step)
            decision["reasons"] = [why]
            summary = summary.replace(f"**Promote {MODEL} version {number}**", f"**Canary of {MODEL} version {number}**",
                                      1) + f"\n\n{why}"
    return {"action": "promote", "model_version": number, "expected_champion": champion, "outcome": outcome,
            "next": next_step, "decision": decision, "metrics": {"candidate": candidate, "champion": champion_metrics},
            "policy": policy, "evaluation_run_id": run_id, "summary": summary,
            "rollout": "canary" if canary_spec else "direct", "canary": canary_spec}


def _canary_outcome(dsn: str, policy: dict, number: str, champion: str, next_step: str):
    """(outcome, next, canary spec, why) of a passed gate under rollout canary."""
    from include.promotion import canary

    with history.connect(dsn) as conn:
        running = history.running_canary(conn, MODEL)
    if running and running["canary_version"] == number:
        return "no_op", "record", None, (f"version {number} is already the canary (canary {running['canary_id']}, "
                                         f"since {running['started_at']})")
    if running:
        return "refused", "record", None, (f"a canary of version {running['canary_version']} is running (canary "
                                           f"{running['canary_id']}, since {running['started_at']}): one canary at a "
                                           f"time; {CANARY_DAG} ends it")
    rules = canary.from_policy_file(policy)
    spec = {"share": float(rules["share"]), "experiment_id": canary.experiment_id(MODEL, number, rules),
            "champion_policy_version_id": canary.policy_version_id(MODEL, champion, rules),
            "canary_policy_version_id": canary.policy_version_id(MODEL, number, rules), "policy": rules,
            "started_at": None}
    why = (f"canary: version {number} serves {spec['share']:.0%} of households (experiment {spec['experiment_id']}); "
           f"version {champion} stays champion until {CANARY_DAG} decides (at least {rules['min_days']} days and "
           f"{rules['min_exposure']} meals per arm, at most {rules['max_days']} days)")
    return "canary_started", next_step, spec, why


def decide_rollback(dsn: str, model_version: str | None, require_approval: bool, dry_run: bool) -> dict:
    history.ensure_schema(dsn)
    reconcile_pending(dsn)
    registry = client()
    champion = _alias_version(registry, names.CHAMPION_ALIAS)
    with history.connect(dsn) as conn:
        past = history.champions(conn, MODEL)
    target, why = history.rollback_target(past, champion, str(model_version) if model_version else None)
    if target is not None:
        _version(registry, target)  # it must still exist in the registry
    decision = {"passed": target is not None, "reasons": [] if target else [why],
                "checks": [{"name": "rollback_target", "passed": target is not None, "detail": why}]}
    if target is None:
        outcome, next_step = "refused", "record"
    elif dry_run:
        outcome, next_step = "dry_run", "record"
    else:
        outcome, next_step = "rolled_back", "approval" if require_approval else "apply"
    return {"action": "rollback", "model_version": target or str(model_version or champion or ""),
            "expected_champion": champion, "outcome": outcome, "next": next_step, "decision": decision,
            "metrics": {}, "policy": {}, "evaluation_run_id": None,
            "summary": f"**Roll back {MODEL}** from version {champion} to {target or '(none)'}: {why}"}


def plan_key(plan: dict, airflow: dict) -> str:
    """Names one plan as one task acts on it: a retry of that task finds the record its earlier attempt left."""
    parts = [MODEL, plan["action"], plan["model_version"], plan["expected_champion"], airflow.get("dag_id"),
             airflow.get("run_id")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _record(plan: dict, outcome: str, reasons: list[str], approver: str | None, airflow: dict,
            state: str = "complete", key: str | None = None) -> history.Record:
    return history.Record(model_name=MODEL, version=plan["model_version"], action=plan["action"], outcome=outcome,
                          previous_champion=plan["expected_champion"], reasons=reasons, metrics=plan["metrics"],
                          policy=plan["policy"], approver=approver, evaluation_run_id=plan["evaluation_run_id"],
                          airflow_dag_id=airflow.get("dag_id"), airflow_run_id=airflow.get("run_id"), state=state,
                          plan_key=key, canary_id=plan.get("canary_id"))


def _refusal(plan: dict, current: str | None, pending: bool) -> str:
    expected, version = plan["expected_champion"] or "none", plan["model_version"]
    if pending:
        return (f"the champion moved while this change to version {version} was pending (expected {expected}, "
                f"found {current or 'none'}): the alias was left as it is; re-evaluate and promote again")
    if current == version:
        return (f"version {version} is already the champion, but not by this decision (expected {expected}, "
                f"found {current}): somebody else moved it; nothing was changed or recorded as deployed")
    return (f"the champion moved since the decision (expected {expected}, found {current or 'none'}): "
            f"nothing was changed; re-evaluate and promote again")


def _closed_canary(conn, plan: dict) -> str | None:
    """Why a canary's promotion must not happen: its canary was closed meanwhile (a direct promotion or a
    rollback ended it while this decision waited, e.g. for approval), so its evidence no longer stands."""
    if not plan.get("canary_id"):
        return None
    found = history.canary(conn, plan["canary_id"])
    if found is not None and found["state"] == "running":
        return None
    state = found["state"] if found else "gone"
    why = f" ({found['end_reason']})" if found and found.get("end_reason") else ""
    return (f"canary {plan['canary_id']} of version {plan['model_version']} is {state}{why}: the evidence it "
            f"gathered no longer stands, so nothing was changed; start a new canary to promote it")


def apply(dsn: str, plan: dict, approver: str | None, airflow: dict) -> dict:
    """Move the champion alias compare-and-set, record the deployment, tag the versions, publish to Redis.

    The alias is in MLflow, the records in PostgreSQL: no transaction spans both, so the decision is
    committed 'pending' first, the alias moves, then the decision is completed with its deployment and
    history rows. A retry of the same plan (same task) finds that record and resumes after the last step
    that happened; tags and Redis are redone from the record."""
    if plan["outcome"] == "canary_started":
        return _start_canary(dsn, plan, approver, airflow)
    registry = client()
    version = plan["model_version"]
    key = plan_key(plan, airflow)
    with history.promotion_lock(dsn, MODEL) as conn:
        earlier = history.plan_decision(conn, MODEL, key)
        current = _alias_version(registry, names.CHAMPION_ALIAS)
        if earlier and earlier["state"] == "complete":
            if earlier["outcome"] in MOVES and current == version:
                _tag_and_publish(registry, dsn, plan, earlier["decision_id"], earlier["changed_at"])
            return {"outcome": earlier["outcome"], "reasons": earlier["reasons"],
                    "decision_id": earlier["decision_id"], "champion": current}
        moved_by_us = earlier is not None and current == version
        closed = _closed_canary(conn, plan) if not moved_by_us else None
        if closed or (current != plan["expected_champion"] and not moved_by_us):
            reason = closed or _refusal(plan, current, pending=earlier is not None)
            with conn.transaction():
                if earlier:
                    history.abandon_decision(conn, earlier["decision_id"])
                decision_id = history.record_decision(conn, _record(plan, "refused", [reason], approver, airflow,
                                                                    key=key))
            return {"outcome": "refused", "reasons": [reason], "decision_id": decision_id, "champion": current}
        if earlier is None:
            decision_id = history.record_decision(conn, _record(plan, plan["outcome"], plan["decision"]["reasons"],
                                                                approver, airflow, state="pending", key=key))
        else:
            decision_id = earlier["decision_id"]
        if not moved_by_us:
            registry.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, version)
        with conn.transaction():
            history.complete_decision(conn, decision_id, model_uri=f"models:/{MODEL}/{version}")
        changed_at = history.plan_decision(conn, MODEL, key)["changed_at"]
        _tag_and_publish(registry, dsn, plan, decision_id, changed_at)
    return {"outcome": plan["outcome"], "reasons": plan["decision"]["reasons"], "decision_id": decision_id,
            "champion": version}


def _start_canary(dsn: str, plan: dict, approver: str | None, airflow: dict) -> dict:
    """Start the plan's canary: under the promotion lock, only while the champion (alias and deployment
    record) is still the one the decision was made against and no other canary runs; its decision and
    the running canary are committed in one transaction. No alias moves. A retry finds the decision and
    redoes the tags and Redis."""
    registry = client()
    version, key, spec = plan["model_version"], plan_key(plan, airflow), plan["canary"]
    with history.promotion_lock(dsn, MODEL) as conn:
        earlier = history.plan_decision(conn, MODEL, key)
        running = history.running_canary(conn, MODEL)
        if earlier is not None:
            if earlier["outcome"] == "canary_started" and running and \
                    running["start_decision_id"] == earlier["decision_id"]:
                _tag_canary_and_publish(registry, dsn, running)
            return {"outcome": earlier["outcome"], "reasons": earlier["reasons"], "decision_id": earlier["decision_id"],
                    "champion": plan["expected_champion"],
                    "canary_id": running["canary_id"] if running else None}
        current = _alias_version(registry, names.CHAMPION_ALIAS)
        deployed = history.deployment(conn, MODEL)
        reason = None
        if current != plan["expected_champion"]:
            reason = _refusal(plan, current, pending=False)
        elif deployed is None or deployed["version"] != current:
            reason = (f"the deployment record names version {deployed['version'] if deployed else 'none'}, not the "
                      f"champion {current}: the serving side would not route to this canary's champion arm")
        elif running:
            reason = (f"a canary of version {running['canary_version']} is running (canary {running['canary_id']}): "
                      "one canary at a time")
        if reason:
            decision_id = history.record_decision(conn, _record(plan, "refused", [reason], approver, airflow, key=key))
            return {"outcome": "refused", "reasons": [reason], "decision_id": decision_id, "champion": current,
                    "canary_id": None}
        with conn.transaction():
            decision_id = history.record_decision(conn, _record(plan, "canary_started", plan["decision"]["reasons"],
                                                                approver, airflow, key=key))
            canary_id = history.start_canary(
                conn, model_name=MODEL, champion_version=current, canary_version=version, share=spec["share"],
                experiment_id=spec["experiment_id"], champion_policy_version_id=spec["champion_policy_version_id"],
                canary_policy_version_id=spec["canary_policy_version_id"], policy=spec["policy"],
                start_decision_id=decision_id, started_at=spec.get("started_at"))
            conn.execute("UPDATE ml.promotion_decisions SET canary_id = %s WHERE decision_id = %s",
                         (canary_id, decision_id))
        _tag_canary_and_publish(registry, dsn, history.canary(conn, canary_id))
    return {"outcome": "canary_started", "reasons": plan["decision"]["reasons"], "decision_id": decision_id,
            "champion": current, "canary_id": canary_id}


def _tag_canary_and_publish(registry, dsn: str, canary: dict) -> None:
    tags = {"promotion_status": "canary", "promotion_decision_id": str(canary["start_decision_id"]),
            "canary_id": str(canary["canary_id"]), "canary_started_at": canary["started_at"]}
    for key, value in tags.items():
        registry.set_model_version_tag(MODEL, canary["canary_version"], key, value)
    publish_to_redis(dsn)


def reconcile_pending(dsn: str) -> list[str]:
    """Finish what an apply left pending and was never retried (its retries ran out, the run was cleared
    from `decide`): before anything new is decided, a pending decision whose alias move happened is
    completed (deployment, history, tags, Redis), one whose move did not happen is abandoned. Returns
    what it did, for the log."""
    registry = client()
    done = []
    with history.promotion_lock(dsn, MODEL) as conn:
        for pending in history.pending_decisions(conn, MODEL):
            current = _alias_version(registry, names.CHAMPION_ALIAS)
            if current == pending["version"]:
                with conn.transaction():
                    history.complete_decision(conn, pending["decision_id"],
                                              model_uri=f"models:/{MODEL}/{pending['version']}")
                changed_at = history.plan_decision(conn, MODEL, pending["plan_key"])["changed_at"]
                plan = {"model_version": pending["version"], "action": pending["action"],
                        "expected_champion": pending["previous_champion"]}
                _tag_and_publish(registry, dsn, plan, pending["decision_id"], changed_at)
                done.append(f"completed decision {pending['decision_id']} (version {pending['version']} is the "
                            "champion; an interrupted apply had not recorded it)")
            else:
                with conn.transaction():
                    history.abandon_decision(conn, pending["decision_id"])
                done.append(f"abandoned decision {pending['decision_id']} (version {pending['version']} never "
                            f"became champion; the champion is {current or 'none'})")
    for line in done:
        log.warning("%s", line)
    return done


def _tag_and_publish(registry, dsn: str, plan: dict, decision_id: int, changed_at: str) -> None:
    """From the record, so that redoing it after a crash writes the same values."""
    version = plan["model_version"]
    status = "champion (rollback)" if plan["action"] == "rollback" else "champion"
    tags = {"promotion_status": status, "promotion_decision_id": str(decision_id), "promoted_at": changed_at}
    for key, value in tags.items():
        registry.set_model_version_tag(MODEL, version, key, value)
    if plan["expected_champion"]:
        registry.set_model_version_tag(MODEL, plan["expected_champion"], "promotion_status",
                                       f"replaced by {version}")
    _tag_abandoned_canaries(registry, dsn, decision_id)
    publish_to_redis(dsn)


def _tag_abandoned_canaries(registry, dsn: str, decision_id: int) -> None:
    """A canary this champion change ended as abandoned says so in the registry and its MLflow run
    ends, as a rolled-back one does (the record alone changed in the completion's transaction)."""
    from include.promotion.online import _close_run

    with history.connect(dsn) as conn:
        ended = [c for c in history.canaries(conn, MODEL)
                 if c["end_decision_id"] == decision_id and c["state"] == "abandoned"]
    for canary in ended:
        registry.set_model_version_tag(MODEL, canary["canary_version"], "promotion_status", "canary abandoned")
        registry.set_model_version_tag(MODEL, canary["canary_version"], "canary_end_reason",
                                       (canary["end_reason"] or "")[:4900])
        _close_run(canary["mlflow_run_id"], "abandoned", canary["end_reason"] or "")


def record_outcome(dsn: str, plan: dict, outcome: str, reasons: list[str], approver: str | None,
                   airflow: dict) -> dict:
    """Record a decision that moved nothing (rejected, not approved, dry run, no-op, refused)."""
    with history.model_lock(dsn, MODEL) as conn:
        decision_id = history.record_decision(conn, _record(plan, outcome, reasons, approver, airflow))
    if outcome == "rejected":
        registry = client()
        registry.set_model_version_tag(MODEL, plan["model_version"], "promotion_status", "rejected")
        registry.set_model_version_tag(MODEL, plan["model_version"], "promotion_reasons",
                                       json.dumps(reasons)[:4900])
        registry.set_model_version_tag(MODEL, plan["model_version"], "promotion_decision_id", str(decision_id))
    publish_to_redis(dsn)  # idempotent: keeps the fast copy equal to the record
    return {"outcome": outcome, "reasons": reasons, "decision_id": decision_id, "champion": plan["expected_champion"]}


def publish_to_redis(dsn: str) -> bool:
    """Copy the recorded deployment to Redis when REDIS_URL is set (the serving side reads it there)."""
    import os

    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        return False
    import redis

    with history.connect(dsn) as conn:
        current = history.deployment(conn, MODEL)
    if current is None:
        return False
    redis.Redis.from_url(url, socket_timeout=5).set(REDIS_KEY, json.dumps({"model_name": MODEL, **current}))
    return True
