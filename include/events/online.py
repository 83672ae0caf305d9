"""An online week under a deployment, appended to a generated world: the plans are served by the models.

    python -m include.events.online --week-start 2026-11-23 [--seed 7]   # the deployment from Redis / ml

    summary = simulate_online_week(dsn, deployment, week_start, ranker=Ranker(), seed=7)

The generator (`include.events.generate`) simulates the weeks before: its plans are proposed by the
old rule-based `policy-v1` / `policy-v2`. This module simulates one more week, the one starting at
`week_start` (midnight UTC), for the world's existing households, in which each plan is proposed by
the arm of the deployment that serves the household (`include.serving.consumer`: `route` with
`in_canary`, the arm's model, its `policy_version_id`):

1. **State.** Each household's state as of `week_start` is read back from the database (the latest
   `app.households`, `app.pantry_snapshots` and `app.constraints` rows: the generator writes the whole
   state at every change). Its persistent, unobserved `affinity` is drawn again from the generator's
   seeded stream of that household (`seed` must be the world's: checked against the households and
   the recipes in the database, else refused).
2. **The week.** From a stream of its own (`online-<seed>-<week_start>-<household index>`), each
   household draws its week as the generator does (`generate.draw_week`: whether it plans, when,
   which state changes land before and after the plan; the changes are written as state rows), a
   workflow type and mode, the plan's days (5 to 7), and `candidate_factor` x days candidate recipes
   from the pool the generator's `policy-v2` would offer. The candidates do not depend on the arm.
3. **Serving.** The household's arm ranks the candidates (`Ranker.rank_many`: each arm's model scores
   its plans in batches) and the top ones, one per day, are the proposed plan. Plans before the
   canary's `started_at` are served by the champion, as the serving side would have.
4. **Outcome.** `generate.emit_plan` writes the plan's events and keeps by the generator's truth
   model, unchanged: `plan_generated` (context: `served.context`, i.e. workflow_type, mode,
   `policy_version_id`, `arm`, `experiment_id`), `sim.keep_truth`, views, the acceptance with the
   kept / swapped / removed / re-served meals and `app.plan_edits`. The draws after the proposal
   are the same whichever arm serves (common random numbers): the arms differ by what they propose.

So a model that ranks like the truth shows a real lift in kept share and a worse one a real drop,
which is what `planner_online_eval` reads (`include.promotion.online.arm_figures`).

**Appending, never rewriting.** The rows are COPYed in one transaction under an advisory lock. The
week must come right after the world's last week: no state row at or after `week_start`, no plan
generated at or after it, and the last generated plan less than 7 days before it; else it is refused
(`OnlineWeekError`) and nothing is written. A week that already holds generated plans is not
simulated again: the call returns `status: "exists"` with what the week holds and writes nothing
(idempotent). The rows of earlier weeks are never updated, deleted or regenerated.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, date, datetime, timedelta

from include.events import generate as g

WEEK = timedelta(days=7)
CANDIDATE_POLICY = g.POLICY_VERSIONS[1]  # the generator's latest pool: mostly recipes the restrictions allow
LOCK_KEY = "planner.online_week"
ARMS = ("champion", "canary")


class OnlineWeekError(RuntimeError):
    """The week cannot be simulated here; the message says why. Nothing was written."""


def as_week_start(value: str | date | datetime) -> datetime:
    """Midnight UTC of a YYYY-MM-DD, a date or a datetime at midnight (UTC)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        if moment != moment.replace(hour=0, minute=0, second=0, microsecond=0):
            raise OnlineWeekError(f"week_start must be midnight UTC, got {value.isoformat()}")
        return moment
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        day = date.fromisoformat(str(value))
    except ValueError as exc:
        raise OnlineWeekError(f"week_start must be YYYY-MM-DD, got {value!r}") from exc
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def next_week_start(dsn: str) -> datetime:
    """The Monday 00:00 UTC after the world's last generated plan (the week a generator run with a
    Monday `--end` would have generated next)."""
    from include.events.db import connect

    with connect(dsn) as conn:
        last = conn.execute("SELECT max(\"timestamp\") FROM exp.events WHERE event_type = 'plan_generated'").fetchone()[0]
    if last is None:
        raise OnlineWeekError("exp.events holds no generated plan: generate the world first (python -m "
                              "include.events.generate)")
    day = last.astimezone(UTC).date() + timedelta(days=1)
    day += timedelta(days=(7 - day.weekday()) % 7)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _check_week(cur, week_start: datetime) -> dict | None:
    """None when the week may be appended; the week's existing plans when it is already there (no-op).
    Raises OnlineWeekError when it is not the week right after the world's last one."""
    week_end = week_start + WEEK
    existing = cur.execute(
        "SELECT context ->> 'policy_version_id', count(*) FROM exp.events "
        "WHERE event_type = 'plan_generated' AND \"timestamp\" >= %s AND \"timestamp\" < %s GROUP BY 1 ORDER BY 1",
        (week_start, week_end)).fetchall()
    if existing:  # simulated (or generated) already, whatever came after it: a no-op
        return {str(policy): int(count) for policy, count in existing}
    later = cur.execute("SELECT count(*) FROM exp.events WHERE event_type = 'plan_generated' AND \"timestamp\" >= %s",
                        (week_end,)).fetchone()[0]
    if later:
        raise OnlineWeekError(
            f"{later:,} plans were generated after the week of {week_start.date()} (at or after {week_end.date()}): "
            "an online week is only appended after the world's last week, never inserted into the past")
    for table in ("app.households", "app.pantry_snapshots", "app.constraints"):
        state = cur.execute(f"SELECT count(*) FROM {table} WHERE valid_from >= %s", (week_start,)).fetchone()[0]
        if state:
            raise OnlineWeekError(f"{table} holds {state:,} rows valid from {week_start.date()} or later: the world "
                                  "already goes past this week's start; nothing written")
    last = cur.execute("SELECT max(\"timestamp\") FROM exp.events WHERE event_type = 'plan_generated'").fetchone()[0]
    if last is None:
        raise OnlineWeekError("exp.events holds no generated plan: generate the world first (python -m "
                              "include.events.generate)")
    if last < week_start - WEEK:
        raise OnlineWeekError(
            f"the world's last plan was generated at {last.astimezone(UTC).isoformat()}, more than a week before "
            f"{week_start.date()}: simulate the weeks in between first (the next one starts on the Monday after it)")
    return None


def _world(cur, seed: int, week_start: datetime) -> tuple[tuple[g.Recipe, ...], list[tuple[int, str, g.HouseholdState]]]:
    """(the catalogue, [(household index, household_id, state as of week_start)]) of the world of `seed`."""
    recipes = g.make_recipes(seed)
    known = {str(r[0]) for r in cur.execute("SELECT recipe_id FROM app.recipes")}
    if known != {r.recipe_id for r in recipes}:
        raise OnlineWeekError(f"app.recipes is not the catalogue of seed {seed}: pass the seed the world was "
                              "generated with (--seed; make lifecycle records it in var/lifecycle.json)")
    households = {str(r[0]): r[1:] for r in cur.execute(
        "SELECT DISTINCT ON (household_id) household_id, size, preferences, restrictions FROM app.households "
        "WHERE valid_from < %s ORDER BY household_id, valid_from DESC", (week_start,))}
    pantry = {str(r[0]): r[1] for r in cur.execute(
        "SELECT DISTINCT ON (household_id) household_id, items FROM app.pantry_snapshots "
        "WHERE valid_from < %s ORDER BY household_id, valid_from DESC", (week_start,))}
    constraints = {str(r[0]): r[1:] for r in cur.execute(
        "SELECT DISTINCT ON (household_id) household_id, budget, max_prep_time, excluded_ingredients "
        "FROM app.constraints WHERE valid_from < %s ORDER BY household_id, valid_from DESC", (week_start,))}
    world = []
    for index in range(len(households)):
        rng = random.Random(f"household-{seed}-{index}")  # the generator's stream of this household
        hid = g._uuid(rng)
        affinity = g._random_state(rng).affinity
        if hid not in households or hid not in pantry or hid not in constraints:
            raise OnlineWeekError(f"household {index} of seed {seed} ({hid}) is not in app.households / pantry / "
                                  f"constraints: this world was not generated with seed {seed}")
        size, preferences, restrictions = households[hid]
        budget, max_prep_time, excluded = constraints[hid]
        world.append((index, hid, g.HouseholdState(
            size=int(size), preferences=list(preferences or []), restrictions=list(restrictions or []),
            pantry=[dict(item) for item in pantry[hid] or []], budget=float(budget), max_prep_time=int(max_prep_time),
            excluded=list(excluded or []), affinity=affinity)))
    return recipes, world


def _previous_plans(cur, week_start: datetime) -> dict[str, dict]:
    """Each household's latest accepted plan before the week (the `previous_plan` of a dataset row's input)."""
    rows = cur.execute(
        "SELECT DISTINCT ON (unit_id) unit_id, payload ->> 'plan_id', \"timestamp\", payload -> 'plan' -> 'meals' "
        "FROM exp.events WHERE event_type = 'plan_accepted' AND \"timestamp\" < %s "
        "AND jsonb_typeof(payload -> 'plan' -> 'meals') = 'array' ORDER BY unit_id, \"timestamp\" DESC, event_id DESC",
        (week_start,))
    return {str(unit): {"plan_id": plan_id, "accepted_at": at.isoformat(), "meals": meals}
            for unit, plan_id, at, meals in rows}


def plan_input(household_id: str, state: g.HouseholdState, workflow_type: str, mode: str,
               previous_plan: dict | None) -> dict:
    """The plan's context as a dataset row's `input` holds it (without `proposed_plan`)."""
    return {"household": {"id": household_id, "size": state.size, "preferences": list(state.preferences),
                          "restrictions": list(state.restrictions)},
            "pantry": {"items": [dict(item) for item in state.pantry]},
            "constraints": {"budget": state.budget, "max_prep_time": state.max_prep_time,
                            "excluded_ingredients": list(state.excluded)},
            "workflow_type": workflow_type, "mode": mode, "previous_plan": previous_plan}


def _started_at(deployment: dict) -> datetime | None:
    canary = deployment.get("canary")
    if not canary:
        return None
    started = canary.get("started_at")
    if started is None:
        return None
    started = started if isinstance(started, datetime) else datetime.fromisoformat(str(started))
    return (started if started.tzinfo else started.replace(tzinfo=UTC)).astimezone(UTC)


def simulate_online_week(dsn: str, deployment: dict, week_start: str | date | datetime, ranker=None, seed: int = 7,
                         candidate_factor: int = 3, dirty_share: float = 0.0, batch_plans: int = 512) -> dict:
    """Append the week starting at `week_start`, served by `deployment` (module docstring). `ranker`: an
    `include.serving.consumer.Ranker` (default: one that loads the arms' `models:/` URIs from MLflow).
    Returns a summary: `status` (`simulated` | `exists`), the week, per-arm households / plans / meals and
    the mean true keep probability of the proposed meals, rows written per table, seconds per step."""
    from include.events.db import apply_schema, connect
    from include.serving.consumer import Ranker, route

    if candidate_factor < 1:
        raise OnlineWeekError(f"candidate_factor must be >= 1, got {candidate_factor}")
    if not 0.0 <= dirty_share <= 1.0:
        raise OnlineWeekError(f"dirty_share must lie in [0, 1], got {dirty_share}")
    week_start = as_week_start(week_start)
    week_end = week_start + WEEK
    ranker = ranker or Ranker()
    started_at = _started_at(deployment)
    champion_only = {**deployment, "canary": None}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    apply_schema(dsn)
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK_KEY,))
        existing = _check_week(cur, week_start)
        base = {"week_start": week_start.isoformat(), "week_end": week_end.isoformat(), "seed": seed}
        if existing is not None:
            total = sum(existing.values())
            return {**base, "status": "exists", "plans_by_policy_version_id": existing,
                    "message": f"the week of {week_start.date()} already holds {total:,} generated plans "
                               f"({', '.join(f'{k}: {v:,}' for k, v in existing.items())}); nothing written"}
        recipes, world = _world(cur, seed, week_start)
        by_id = {recipe.recipe_id: recipe for recipe in recipes}
        previous = _previous_plans(cur, week_start)
        seconds["read"] = time.perf_counter() - clock

        # Pass 1: each household's week up to its plan, and the plan's candidates.
        clock = time.perf_counter()
        tables = g.Tables()
        groups: dict[str, list[dict]] = {"canary_running": [], "before_canary_start": []}
        pending = []
        canary = deployment.get("canary") or {}
        per_arm = {arm: {"version": None if spec.get("version") is None else str(spec["version"]),
                         "policy_version_id": spec.get("policy_version_id"), "households": 0, "plans": 0, "meals": 0,
                         "true_keep_sum": 0.0}
                   for arm, spec in (("champion", deployment), ("canary", canary))}
        for index, hid, state in world:
            rng = random.Random(f"online-{seed}-{week_start.date().isoformat()}-{index}")
            out = g._Emitter(tables, hid)
            plans, plan_time, changes = g.draw_week(rng, week_start)
            for at, kind in [c for c in changes if c[0] <= plan_time]:
                g._apply_change(rng, out, state, kind, at)
            before_start = started_at is not None and plan_time < started_at
            per_arm[route(champion_only if before_start else deployment, hid).name]["households"] += 1
            plan = None
            if plans:
                workflow_type = rng.choices(*g.WORKFLOW_TYPES)[0]
                mode = rng.choices(*g.MODES)[0]
                plan_id = g._uuid(rng)
                days = sorted(rng.sample(range(7), rng.randint(5, 7)))
                dirty = rng.choice(g.DIRTY_KINDS) if rng.random() < dirty_share else None
                unit_id = g._uuid(rng) if dirty == "unknown_household" else None
                candidates = g._propose(rng, recipes, state, CANDIDATE_POLICY, candidate_factor * len(days))
                request = {"household_id": hid, "plan_id": plan_id,
                           "plan_input": plan_input(hid, state, workflow_type, mode, previous.get(hid)),
                           "candidates": [{"day": g.DAYS[days[i % len(days)]], "recipe_id": r.recipe_id,
                                           "servings": state.size} for i, r in enumerate(candidates)]}
                group = "before_canary_start" if before_start else "canary_running"
                groups[group].append(request)
                plan = (group, len(groups[group]) - 1, workflow_type, mode, plan_id, days, dirty, unit_id)
            pending.append((rng, out, state, changes, plan_time, plan))
        seconds["draw"] = time.perf_counter() - clock

        # Pass 2: each arm's model ranks its plans' candidates, in batches.
        clock = time.perf_counter()
        served = {group: ranker.rank_many(champion_only if group == "before_canary_start" else deployment, requests,
                                          batch_plans) if requests else []
                  for group, requests in groups.items()}
        seconds["rank"] = time.perf_counter() - clock

        # Pass 3: the top candidates are the plan; the household keeps by the truth model; later changes.
        clock = time.perf_counter()
        for rng, out, state, changes, plan_time, plan in pending:
            if plan is not None:
                group, position, workflow_type, mode, plan_id, days, dirty, unit_id = plan
                answer = served[group][position]
                proposed = [by_id[meal["recipe_id"]] for meal in answer.meals[:len(days)]]
                p_keeps = g.emit_plan(rng, out, plan_time, state, recipes, g._json_field(answer.context), plan_id,
                                      days, proposed, workflow_type, mode, dirty, unit_id)
                figures = per_arm[answer.arm.name]
                figures["plans"] += 1
                figures["meals"] += len(proposed)
                figures["true_keep_sum"] += sum(p_keeps)
            for at, kind in [c for c in changes if c[0] > plan_time]:
                g._apply_change(rng, out, state, kind, at)
        seconds["emit"] = time.perf_counter() - clock

        clock = time.perf_counter()
        rows = {}
        for table, lines in (("app.households", tables.households), ("app.pantry_snapshots", tables.pantry),
                             ("app.constraints", tables.constraints), ("app.plan_edits", tables.edits),
                             ("sim.keep_truth", tables.truth), ("exp.events", tables.events)):
            if lines:
                with cur.copy(f"COPY {table} ({g.TABLE_COLUMNS[table]}) FROM STDIN") as copy:
                    copy.write(g._lines(lines))
            rows[table] = len(lines)
        conn.commit()
    with connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE " + ", ".join(g.TABLE_COLUMNS))
    seconds["write"] = time.perf_counter() - clock
    for figures in per_arm.values():
        figures["mean_true_keep"] = figures["true_keep_sum"] / figures["meals"] if figures["meals"] else None
        del figures["true_keep_sum"]
    seconds["total"] = sum(seconds.values())
    return {**base, "status": "simulated", "households": len(world), "plans": sum(f["plans"] for f in per_arm.values()),
            "plans_before_canary_start": len(groups["before_canary_start"]), "arms": per_arm, "rows": rows,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "message": f"simulated the week of {week_start.date()} for {len(world):,} households: "
                       + ", ".join(f"{arm} {f['plans']:,} plans (mean true keep "
                                   f"{'-' if f['mean_true_keep'] is None else format(f['mean_true_keep'], '.3f')})"
                                   for arm, f in per_arm.items())}


def _lifecycle_seed(default: int = 7) -> int:
    """The seed `make lifecycle` recorded for its world (var/lifecycle.json), else the generator's default."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "var" / "lifecycle.json"
    try:
        return int(json.loads(path.read_text())["world"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def main(argv: list[str] | None = None) -> int:
    from include.core.config import settings

    parser = argparse.ArgumentParser(prog="python -m include.events.online", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=settings().events_dsn, help="PostgreSQL DSN (default: PLANNER_EVENTS_DSN)")
    parser.add_argument("--week-start", default=None,
                        help="YYYY-MM-DD, midnight UTC (default: the Monday after the world's last generated plan)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the world's generator seed (default: var/lifecycle.json's, else 7)")
    parser.add_argument("--redis-url", default=None, help="where the deployment is read first (default: REDIS_URL)")
    parser.add_argument("--candidate-factor", type=int, default=3, help="candidates ranked per day of a plan")
    parser.add_argument("--dirty-share", type=float, default=0.0, help="share of plans with one dirty kind")
    parser.add_argument("--batch-plans", type=int, default=512, help="plans per predict call")
    parser.add_argument("--adopt-database", action="store_true",
                        help="allow a database this project did not create (simulated rows are appended to it)")
    args = parser.parse_args(argv)
    import os

    from include.core.local_postgres import NotOurDatabase, claim_demo_database
    from include.serving.consumer import read_deployment

    try:  # simulated rows belong only in a database of ours
        args.dsn = claim_demo_database(args.dsn, adopt=args.adopt_database)
    except NotOurDatabase as refusal:
        print(f"refused: {refusal}".replace("make lifecycle ARGS=--adopt-database", "--adopt-database"),
              file=sys.stderr)
        return 2
    try:
        deployment = read_deployment(redis_url=args.redis_url or os.environ.get("REDIS_URL"), dsn=args.dsn)
        week_start = as_week_start(args.week_start) if args.week_start else next_week_start(args.dsn)
        seed = args.seed if args.seed is not None else _lifecycle_seed()
        summary = simulate_online_week(args.dsn, deployment, week_start, seed=seed,
                                       candidate_factor=args.candidate_factor, dirty_share=args.dirty_share,
                                       batch_plans=args.batch_plans)
    except (OnlineWeekError, LookupError) as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 2
    print(summary["message"], file=sys.stderr)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
