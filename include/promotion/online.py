"""What the `planner_online_eval` tasks do, as plain functions (no Airflow import): look at the running
canary from its logged events, decide, and promote or roll back.

    canary = find_canary(dsn)                      # the running canary, or None
    plan = take_look(dsn, canary, as_of, airflow)  # rows -> per-arm figures -> canary.decide -> ml + MLflow
    conclude(dsn, plan, approver, airflow)         # promote (compare-and-set) | roll back

**Rows.** The canary period's events become rows through the dataset code
(`include.dataset.build.build_dataset`, the same rules as a dataset version or a replay set): one row
per plan whose first acceptance lies in `[midnight of the start, as_of)`, kept when its plan was
generated at or after the canary's start. Each row is counted for the arm that served it: its
`policy_version_id` (the generation's `context.policy_version_id`) against the two arms' ids
recorded at the start. Rows of any other id are counted apart (`other`), as are rows whose household
`include.serving.assignment` puts in the other arm (`misrouted`: the serving side routed it wrongly).
Plans generated but never accepted make no row; `sql/canary_plans.sql` counts them per arm for the
acceptance rate.

**Per arm** (cumulative since the start): `meals` (proposed meals of accepted plans), `kept` (kept =
the same recipe on the same day in the accepted plan, `include.core.features.kept_flags`, the
training label), `kept_share`, `households` and the per-household sums of the cluster-robust
variance, `plans` (accepted), `edits`, `edits_per_plan`, `plans_generated`, `plans_accepted`,
`acceptance_rate`.

**Decision.** `include.promotion.canary.decide` on the kept share, with the canary's own policy (the
one recorded when it started) and the previous look (running p-value and confidence sequence):
promote, continue, or roll back, with min_days / min_exposure / max_days. Promote moves the champion
through `pipeline.apply` (compare-and-set under the promotion lock; its completion closes the canary
in the same transaction); if the champion moved during the canary the move is refused and the canary
is closed as abandoned. Roll back closes the canary; the champion is unchanged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from datetime import UTC, datetime, time, timedelta
from importlib import resources
from pathlib import Path

from include.core import names
from include.promotion import history
from include.promotion.canary import ArmCounts, CanaryLook, Decision, decide, validate_policy

log = logging.getLogger(__name__)

MODEL = names.REGISTERED_MODEL_NAME
DAG_ID = names.ONLINE_EVAL
EXPERIMENT = names.ONLINE_EVAL
ARMS = ("champion", "canary")
ROW_COLUMNS = ["plan_id", "household_id", "generated_at", "policy_version_id", "input", "target", "n_user_edits"]


class OnlineEvalError(RuntimeError):
    """The look cannot be taken; the message says why."""


def find_canary(dsn: str) -> dict | None:
    """The running canary (after finishing what an interrupted promotion left pending), or None."""
    from include.promotion.pipeline import reconcile_pending

    history.ensure_schema(dsn)
    reconcile_pending(dsn)
    with history.connect(dsn) as conn:
        return history.running_canary(conn, MODEL)


def look_end(as_of: str | None, run_end: datetime | None = None) -> datetime:
    """The look's (exclusive) end: midnight UTC of `as_of` (YYYY-MM-DD), else of the run's time (default now)."""
    if as_of:
        try:
            day = datetime.fromisoformat(str(as_of)).date()
        except ValueError as exc:
            raise OnlineEvalError(f"as_of must be YYYY-MM-DD, got {as_of!r}") from exc
    else:
        day = (run_end or datetime.now(UTC)).astimezone(UTC).date()
    return datetime.combine(day, time(0), tzinfo=UTC)


def _sql(name: str) -> str:
    return resources.files("include.promotion").joinpath("sql", name).read_text()


def _empty_arm() -> dict:
    return {"meals": 0, "kept": 0, "households": 0, "sum_kept_sq": 0, "sum_meals_sq": 0, "sum_kept_meals": 0,
            "plans": 0, "edits": 0, "plans_generated": 0, "plans_accepted": 0}


def arm_figures(dsn: str, canary: dict, end: datetime) -> tuple[dict, dict]:
    """(per-arm figures, what was counted apart) of the canary's events up to `end`."""
    from include.core.features import kept_flags, proposed_meals
    from include.dataset.build import build_dataset, fetch_arrow, iter_tables
    from include.dataset.window import resolve_window
    from include.serving.assignment import in_canary

    started = datetime.fromisoformat(canary["started_at"]).astimezone(UTC)
    first_day = datetime.combine(started.date(), time(0), tzinfo=UTC)
    arm_of = {canary["champion_policy_version_id"]: "champion", canary["canary_policy_version_id"]: "canary"}
    arms = {arm: _empty_arm() for arm in ARMS}
    other = {"policy_version_ids": {}, "misrouted": 0, "generated_before_start": 0}
    if end <= started:
        return _finish(arms), other
    window = resolve_window(end.date().isoformat(), max(1, (end - first_day).days))
    per_household: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="online-eval-") as scratch:
        staging = Path(scratch) / "rows"
        staging.mkdir()
        build_dataset(dsn, window, staging, max_bad_share=1.0)
        # batch by batch: the period is up to max_days of all traffic, not only the canary's
        for row in (row for table in iter_tables(staging / names.DATASET_TRAINING_FILE, columns=ROW_COLUMNS)
                    for row in table.to_pylist()):
            generated_at = row["generated_at"]
            if generated_at.tzinfo is None:
                generated_at = generated_at.replace(tzinfo=UTC)
            if generated_at < started:
                other["generated_before_start"] += 1
                continue
            arm = arm_of.get(row["policy_version_id"])
            if arm is None:
                key = str(row["policy_version_id"])
                other["policy_version_ids"][key] = other["policy_version_ids"].get(key, 0) + 1
                continue
            if (arm == "canary") != in_canary(row["household_id"], canary["experiment_id"], canary["share"]):
                other["misrouted"] += 1
            _, proposed = proposed_meals(row["input"])
            kept = sum(kept_flags(proposed, row["target"]))
            figures = arms[arm]
            figures["meals"] += len(proposed)
            figures["kept"] += kept
            figures["plans"] += 1
            figures["edits"] += int(row["n_user_edits"] or 0)
            counts = per_household.setdefault((arm, row["household_id"]), [0, 0])
            counts[0] += len(proposed)
            counts[1] += kept
    for (arm, _), (meals, kept) in per_household.items():
        figures = arms[arm]
        figures["households"] += 1
        figures["sum_kept_sq"] += kept * kept
        figures["sum_meals_sq"] += meals * meals
        figures["sum_kept_meals"] += kept * meals
    plans = fetch_arrow(dsn, _sql("canary_plans.sql"), (started, end))
    for entry in plans.to_pylist():
        arm = arm_of.get(entry["policy_version_id"])
        if arm is not None:
            arms[arm]["plans_generated"] += int(entry["plans_generated"])
            arms[arm]["plans_accepted"] += int(entry["plans_accepted"])
    return _finish(arms), other


def _finish(arms: dict) -> dict:
    for figures in arms.values():
        figures["kept_share"] = figures["kept"] / figures["meals"] if figures["meals"] else None
        figures["edits_per_plan"] = figures["edits"] / figures["plans"] if figures["plans"] else None
        figures["acceptance_rate"] = (figures["plans_accepted"] / figures["plans_generated"]
                                      if figures["plans_generated"] else None)
    return arms


def counts_of(figures: dict) -> ArmCounts:
    if not figures["households"]:
        return ArmCounts(figures["meals"], figures["kept"])
    return ArmCounts(figures["meals"], figures["kept"], figures["households"], figures["sum_kept_sq"],
                     figures["sum_meals_sq"], figures["sum_kept_meals"])


def _previous(look: dict | None) -> Decision | None:
    if look is None:
        return None
    return Decision(look["action"], look["reason"], look["statistic"], look["p_value"], look["lift"],
                    (look["ci_low"], look["ci_high"]), look["day"])


def look_key(canary: dict, end: datetime, airflow: dict) -> str:
    parts = [canary["canary_id"], end.isoformat(), airflow.get("dag_id"), airflow.get("run_id")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def take_look(dsn: str, canary: dict, end: datetime, airflow: dict, track: bool = True) -> dict:
    """Count both arms up to `end`, decide, record the look (once per task run) and log it to MLflow.
    Returns the plan `conclude` acts on."""
    started = datetime.fromisoformat(canary["started_at"]).astimezone(UTC)
    day = max(0, (end - started) // timedelta(days=1))
    key = look_key(canary, end, airflow)
    with history.connect(dsn) as conn:
        earlier = history.looks(conn, canary["canary_id"])
    done = [look for look in earlier if look["look_key"] == key]
    if done:
        look = done[0]
    else:
        policy = validate_policy(canary["policy"])
        arms, other = arm_figures(dsn, canary, end)
        before = [look for look in earlier if datetime.fromisoformat(look["window_end"]) < end]
        previous = _previous(before[-1] if before else None)
        decision = decide(CanaryLook(day, counts_of(arms["champion"]), counts_of(arms["canary"])), policy, previous)
        with history.connect(dsn, autocommit=True) as conn:
            look = history.record_look(conn, {
                "canary_id": canary["canary_id"], "look_key": key, "day": day,
                "window_start": started, "window_end": end, "action": decision.action, "reason": decision.reason,
                "statistic": decision.statistic, "p_value": decision.p_value_always_valid, "lift": decision.lift,
                "ci_low": decision.ci[0], "ci_high": decision.ci[1], "arms": arms, "other": other,
                "airflow_dag_id": airflow.get("dag_id"), "airflow_run_id": airflow.get("run_id")})
    log.info("canary %s day %s: %s (%s)", canary["canary_id"], day, look["action"], look["reason"])
    run_id = track_look(dsn, canary, look) if track else canary.get("mlflow_run_id")
    look = {k: (None if isinstance(v, float) and not _finite(v) else v) for k, v in look.items()}  # XCom is JSON
    return {"canary": canary, "look": look, "action": look["action"], "reason": look["reason"],
            "mlflow_run_id": run_id, "summary": summary(canary, look)}


def summary(canary: dict, look: dict) -> str:
    """Markdown for the log and the approver: the verdict and the figures of both arms."""
    lines = [f"**Canary {canary['canary_id']}: {MODEL} version {canary['canary_version']} against champion "
             f"{canary['champion_version']}** ({canary['share']:.0%} of households, since {canary['started_at']})",
             "", f"Day {look['day']}: **{look['action']}**: {look['reason']}", "",
             "| arm | meals | kept share | plans accepted / generated | acceptance rate | edits per plan | households |",
             "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        f = look["arms"][arm]
        lines.append(f"| {arm} | {f['meals']} | {_fmt(f['kept_share'])} | {f['plans_accepted']} / "
                     f"{f['plans_generated']} | {_fmt(f['acceptance_rate'])} | {_fmt(f['edits_per_plan'], 2)} | "
                     f"{f['households']} |")
    other = look.get("other") or {}
    if other.get("policy_version_ids") or other.get("misrouted"):
        lines += ["", f"Counted apart: other policy_version_ids {other.get('policy_version_ids')}, "
                      f"{other.get('misrouted', 0)} rows served by the arm their household is not in."]
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))


def track_look(dsn: str, canary: dict, look: dict) -> str:
    """Log the look to the canary's MLflow run (one run per canary, created by its first look): per-arm
    figures as metrics at step = day, the decision, every look as JSON and a plot of both arms over time."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from include.core.tracking import ensure_experiment

    experiment_id = ensure_experiment(EXPERIMENT)
    client = mlflow.MlflowClient()
    with history.connect(dsn, autocommit=True) as conn:
        run_id = history.canary(conn, canary["canary_id"])["mlflow_run_id"]
        if run_id is None:
            run = client.create_run(experiment_id, run_name=f"canary-{canary['canary_id']}-v{canary['canary_version']}"
                                                            f"-vs-v{canary['champion_version']}",
                                    tags={"model_name": MODEL, "canary_id": str(canary["canary_id"]),
                                          "canary_version": canary["canary_version"],
                                          "champion_version": canary["champion_version"],
                                          "experiment_id": canary["experiment_id"]})
            history.set_canary_run(conn, canary["canary_id"], run.info.run_id)
            run_id = history.canary(conn, canary["canary_id"])["mlflow_run_id"]
            params = {"share": canary["share"], "started_at": canary["started_at"],
                      "champion_policy_version_id": canary["champion_policy_version_id"],
                      "canary_policy_version_id": canary["canary_policy_version_id"],
                      **{f"policy.{k}": v for k, v in canary["policy"].items()}}
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        every = history.looks(conn, canary["canary_id"])
    if client.get_run(run_id).data.tags.get("last_look_id") == str(look["look_id"]):
        return run_id  # a retry of a look already logged
    stamp, step = int(datetime.now(UTC).timestamp() * 1000), int(look["day"])
    values = {"lift": look["lift"], "p_value_always_valid": look["p_value"], "statistic": look["statistic"],
              "ci_low": look["ci_low"], "ci_high": look["ci_high"]}
    for arm in ARMS:
        for key in ("meals", "kept", "kept_share", "households", "plans_generated", "plans_accepted",
                    "acceptance_rate", "edits_per_plan"):
            values[f"{arm}.{key}"] = look["arms"][arm][key]
    metrics = [Metric(k, float(v), stamp, step) for k, v in values.items() if _finite(v)]
    client.log_batch(run_id, metrics=metrics,
                     tags=[RunTag("last_action", look["action"]), RunTag("last_look_day", str(step))])
    with tempfile.TemporaryDirectory(prefix="online-eval-") as scratch:
        directory = Path(scratch)
        (directory / "canary_looks.json").write_text(json.dumps({"canary": canary, "looks": every}, indent=2,
                                                                default=str))
        client.log_artifact(run_id, str(directory / "canary_looks.json"))
        plot = write_plot(canary, every, directory / "plots")
        if plot is not None:
            client.log_artifact(run_id, str(plot), "plots")
    client.set_tag(run_id, "last_look_id", str(look["look_id"]))  # last: a crash before it logs the look again
    return run_id


def write_plot(canary: dict, looks: list[dict], directory: Path) -> Path | None:
    """Kept share of both arms by day, and the lift with its running confidence sequence (PNG)."""
    try:
        import matplotlib
    except ImportError:  # the plot is a courtesy; the numbers are logged anyway
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    days = [look["day"] for look in looks]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for arm, version in (("champion", canary["champion_version"]), ("canary", canary["canary_version"])):
        shares = [look["arms"][arm]["kept_share"] for look in looks]
        top.plot(days, [float("nan") if s is None else s for s in shares], marker="o", label=f"{arm} (v{version})")
    top.set(ylabel="share of proposed meals kept", title=f"Canary {canary['canary_id']}: both arms since the start")
    top.legend(loc="best")
    bottom.plot(days, [look["lift"] for look in looks], marker="o", color="black", label="lift (canary - champion)")
    low = [look["ci_low"] if _finite(look["ci_low"]) else float("nan") for look in looks]
    high = [look["ci_high"] if _finite(look["ci_high"]) else float("nan") for look in looks]
    bottom.fill_between(days, low, high, alpha=0.25, label="running confidence sequence")
    bottom.axhline(0.0, color="grey", linestyle=":")
    bottom.set(xlabel="day of the canary", ylabel="lift")
    bottom.legend(loc="best")
    fig.tight_layout()
    path = directory / "arms_over_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def promotion_needs_approval(dsn: str, canary: dict, requested: bool | None) -> bool:
    """Whether a promoting look waits for a person: as asked (the DAG's Param), else as the canary's start
    did. A canary whose start a person approved has its champion move approved too, so that under the
    default `rollout: canary` an approver who approved a canary never finds a champion moved without them."""
    if requested is not None:
        return bool(requested)
    with history.connect(dsn) as conn:
        row = conn.execute("SELECT approver FROM ml.promotion_decisions WHERE decision_id = %s",
                           (canary["start_decision_id"],)).fetchone()
    return bool(row and row[0])


def _close_run(run_id: str | None, outcome: str, reason: str) -> None:
    if not run_id:
        return
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    client = mlflow.MlflowClient()
    client.set_tag(run_id, "outcome", outcome)
    client.set_tag(run_id, "end_reason", reason[:4900])
    client.set_terminated(run_id, "FINISHED")


def _promotion_plan(plan: dict) -> dict:
    canary, look = plan["canary"], plan["look"]
    return {"action": "promote", "model_version": canary["canary_version"],
            "expected_champion": canary["champion_version"], "outcome": "promoted", "next": "apply",
            "decision": {"passed": True, "reasons": [look["reason"]], "checks": []},
            "metrics": {"online": look["arms"], "look_id": look["look_id"], "day": look["day"]},
            "policy": canary["policy"], "evaluation_run_id": plan.get("mlflow_run_id"),
            "canary_id": canary["canary_id"], "rollout": "canary", "canary": None}


def conclude(dsn: str, plan: dict, approver: str | None, airflow: dict) -> dict:
    """Act on a look's promote or rollback. Promote: the champion moves compare-and-set (`pipeline.apply`),
    which closes the canary as promoted; refused (the champion moved during the canary): the canary is
    closed as abandoned, nothing else moves. Rollback: the canary is closed, the champion is unchanged."""
    from include.promotion import pipeline

    canary, action = plan["canary"], plan["action"]
    if action == "promote":
        result = pipeline.apply(dsn, _promotion_plan(plan), approver, airflow)
        if result["outcome"] == "refused":
            _end(dsn, canary, "abandoned", result["reasons"][0], result["decision_id"])
        _close_run(plan.get("mlflow_run_id"), result["outcome"], "; ".join(result["reasons"]))
        return result
    if action == "rollback":
        return roll_back(dsn, plan, "canary_rolled_back", [plan["reason"]], approver, airflow)
    raise OnlineEvalError(f"nothing to conclude: the look says {action}")


def roll_back(dsn: str, plan: dict, outcome: str, reasons: list[str], approver: str | None, airflow: dict) -> dict:
    """Close the canary without a change of champion, with a decision saying why (once per task run)."""
    from include.promotion import pipeline

    canary = plan["canary"]
    promotion = _promotion_plan(plan)
    key = pipeline.plan_key({**promotion, "action": "promote"}, airflow)
    with history.model_lock(dsn, MODEL) as conn:
        earlier = history.plan_decision(conn, MODEL, key)
        if earlier is None:
            decision_id = history.record_decision(conn, pipeline._record(
                {**promotion, "outcome": outcome}, outcome, reasons, approver, airflow, key=key))
        else:
            decision_id = earlier["decision_id"]
        history.end_canary(conn, canary["canary_id"], "rolled_back", "; ".join(reasons), decision_id)
    _end(dsn, canary, "rolled_back", "; ".join(reasons), decision_id)
    _close_run(plan.get("mlflow_run_id"), outcome, "; ".join(reasons))
    return {"outcome": outcome, "reasons": reasons, "decision_id": decision_id, "champion": canary["champion_version"]}


def _end(dsn: str, canary: dict, state: str, reason: str, decision_id: int | None) -> None:
    """Close the canary (if still running), tag its version, and refresh Redis."""
    from include.promotion import pipeline

    with history.connect(dsn, autocommit=True) as conn:
        history.end_canary(conn, canary["canary_id"], state, reason, decision_id)
    registry = pipeline.client()
    registry.set_model_version_tag(MODEL, canary["canary_version"], "promotion_status",
                                   "canary rolled back" if state == "rolled_back" else "canary abandoned")
    registry.set_model_version_tag(MODEL, canary["canary_version"], "canary_end_reason", reason[:4900])
    pipeline.publish_to_redis(dsn)
