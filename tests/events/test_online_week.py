"""The online week (include/events/online.py): appended to a generated world, each household's plan
proposed by the arm that serves it (routed by `in_canary`, ranked by the arm's model through the
reference consumer), kept by the generator's truth model. A model that ranks like the truth shows a
real lift over one that ranks against it; the past is never rewritten; a week is simulated once; and
`planner_online_eval`'s reading splits the week into the two arms with the counts the events hold.

The models are stand-ins behind `Ranker(load=...)`: `predict(rows)` like a loaded pyfunc, scoring each
candidate by the generator's own keep probability (without the household's unobserved affinity, which
does not change the order within a plan), or its reverse."""
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from include.events import generate
from include.events.db import connect
from include.events.online import OnlineWeekError, plan_input, simulate_online_week
from include.serving.assignment import in_canary
from include.serving.consumer import Ranker

SEED = 3
END = datetime(2026, 11, 23, tzinfo=UTC)  # the generated world's end: the online week starts here
HOUSEHOLDS, WEEKS = 400, 2
MODEL = "planner_acceptance"
CHAMPION, CANARY = f"{MODEL}:v1", f"{MODEL}:v2"
EXPERIMENT = f"{MODEL}:v2:canary"
URIS = {"champion": f"models:/{MODEL}/1", "canary": f"models:/{MODEL}/2"}
SOURCE = {"exp.events": 'event_id, "timestamp", event_type, unit_id, context::text, payload::text',
          "app.households": "household_id, valid_from", "app.pantry_snapshots": "household_id, valid_from",
          "app.constraints": "household_id, valid_from", "app.plan_edits": "edit_id",
          "sim.keep_truth": "plan_id, recipe_id", "app.recipes": "recipe_id"}


class TruthScorer:
    """A stand-in model: one keep probability per candidate, by the generator's truth model (`flip`: 1 - it)."""

    def __init__(self, seed: int = SEED, flip: bool = False):
        self.recipes = {r.recipe_id: r for r in generate.make_recipes(seed)}
        self.flip = flip

    def predict(self, rows):
        import pandas as pd

        out = {"plan_id": [], "meal_index": [], "recipe_id": [], "keep_probability": []}
        for plan_id, text in zip(rows["plan_id"], rows["input"]):
            context = json.loads(text)
            household, constraints = context["household"], context["constraints"]
            state = generate.HouseholdState(
                size=household["size"], preferences=household["preferences"], restrictions=household["restrictions"],
                pantry=context["pantry"]["items"], budget=float(constraints["budget"]),
                max_prep_time=constraints["max_prep_time"], excluded=constraints["excluded_ingredients"], affinity=0.0)
            meals = context["proposed_plan"]["meals"]
            scores = generate.keep_probabilities([self.recipes[m["recipe_id"]] for m in meals], state,
                                                 context["workflow_type"], context["mode"])
            for index, (meal, score) in enumerate(zip(meals, scores)):
                out["plan_id"].append(plan_id)
                out["meal_index"].append(index)
                out["recipe_id"].append(meal["recipe_id"])
                out["keep_probability"].append(1.0 - score if self.flip else score)
        return pd.DataFrame(out)


def ranker(better: str) -> Ranker:
    """The arm `better` ranks like the truth, the other against it."""
    models = {URIS[arm]: TruthScorer(flip=arm != better) for arm in URIS}
    return Ranker(load=models.__getitem__)


def deployment(share: float = 0.5, started_at: datetime = END) -> dict:
    """A deployment record as `include.serving.consumer.read_deployment` returns it, with a running canary."""
    return {"model_name": MODEL, "version": "1", "model_uri": URIS["champion"], "policy_version_id": CHAMPION,
            "canary": {"canary_id": 1, "version": "2", "model_uri": URIS["canary"], "policy_version_id": CANARY,
                       "share": share, "experiment_id": EXPERIMENT, "started_at": started_at.isoformat(),
                       "champion_version": "1", "champion_policy_version_id": CHAMPION}}


@pytest.fixture()
def world(clean_source):
    generate.generate_and_load(clean_source, HOUSEHOLDS, WEEKS, seed=SEED, end=END, dirty_share=0.02, reset=True)
    return clean_source


def week_plans(dsn: str, start: datetime) -> list[dict]:
    """Each plan generated at or after `start`: household, context, proposed meals, first acceptance's meals."""
    with connect(dsn) as conn:
        rows = conn.execute(
            """SELECT g.unit_id::text, g.context, g.payload, a.payload
               FROM exp.events g
               LEFT JOIN LATERAL (SELECT x.payload FROM exp.events x
                                  WHERE x.event_type = 'plan_accepted' AND x.payload ->> 'plan_id' = g.payload ->> 'plan_id'
                                  ORDER BY x."timestamp", x.event_id LIMIT 1) a ON true
               WHERE g.event_type = 'plan_generated' AND g."timestamp" >= %s""", (start,)).fetchall()
    plans = []
    for household, context, generated, accepted in rows:
        proposed = generated["plan"]["meals"]
        kept = None
        if accepted is not None:
            keep = {(m["day"], m["recipe_id"]) for m in accepted["plan"]["meals"]}
            kept = sum((m["day"], m["recipe_id"]) in keep for m in proposed)
        plans.append({"household": household, "context": context, "plan_id": generated["plan_id"],
                      "meals": len(proposed), "kept": kept})
    return plans


def digests(dsn: str, since: datetime | None = None) -> dict[str, tuple[int, str]]:
    """(rows, sha256) per source table; with `since`, without the rows of plans generated at or after it and
    without state rows valid from it (what an online week of that start adds)."""
    new_plans = ("(SELECT payload ->> 'plan_id' FROM exp.events WHERE event_type = 'plan_generated' "
                 "AND \"timestamp\" >= %(since)s)")
    where = {"exp.events": f"(payload ->> 'plan_id') IS NULL OR (payload ->> 'plan_id') NOT IN {new_plans}",
             "app.plan_edits": f"plan_id::text NOT IN {new_plans}", "sim.keep_truth": f"plan_id::text NOT IN {new_plans}",
             "app.households": "valid_from < %(since)s", "app.pantry_snapshots": "valid_from < %(since)s",
             "app.constraints": "valid_from < %(since)s", "app.recipes": "true"}
    out = {}
    with connect(dsn) as conn:
        for table, order in SOURCE.items():
            condition = where[table] if since else "true"
            rows = conn.execute(f"SELECT * FROM {table} WHERE {condition} ORDER BY {order}", {"since": since}).fetchall()
            out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


@pytest.mark.parametrize("better", ["canary", "champion"])
def test_the_arm_that_ranks_like_the_truth_keeps_more_and_the_events_carry_each_arms_id(world, better):
    summary = simulate_online_week(world, deployment(), END, ranker=ranker(better), seed=SEED)

    assert summary["status"] == "simulated" and summary["households"] == HOUSEHOLDS, summary
    plans = week_plans(world, END)
    assert len(plans) == summary["plans"] > 0.75 * HOUSEHOLDS
    for plan in plans:  # every plan carries the policy_version_id of the arm in_canary puts its household in
        arm = "canary" if in_canary(plan["household"], EXPERIMENT, 0.5) else "champion"
        assert plan["context"]["policy_version_id"] == (CANARY if arm == "canary" else CHAMPION)
        assert (plan["context"]["arm"], plan["context"]["experiment_id"]) == (arm, EXPERIMENT)
    by_arm = {arm: [p for p in plans if p["context"]["arm"] == arm] for arm in ("champion", "canary")}
    assert min(len(v) for v in by_arm.values()) > 0.35 * len(plans)
    assert {arm: len(v) for arm, v in by_arm.items()} == {arm: f["plans"] for arm, f in summary["arms"].items()}

    kept_share = {arm: sum(p["kept"] for p in v if p["kept"] is not None) /
                  sum(p["meals"] for p in v if p["kept"] is not None) for arm, v in by_arm.items()}
    worse = "champion" if better == "canary" else "canary"
    assert kept_share[better] > kept_share[worse] + 0.15, kept_share  # a real lift (or drop, for the canary)
    # The truth of every proposed meal is recorded, and the keeps follow it.
    with connect(world) as conn:
        truth = dict(conn.execute(
            """SELECT g.context ->> 'arm', avg(t.p_keep) FROM sim.keep_truth t
               JOIN exp.events g ON g.event_type = 'plan_generated' AND g.payload ->> 'plan_id' = t.plan_id::text
               WHERE g."timestamp" >= %s GROUP BY 1""", (END,)).fetchall())
        truth_rows = conn.execute(
            "SELECT count(*) FROM sim.keep_truth t JOIN exp.events g ON g.event_type = 'plan_generated' "
            "AND g.payload ->> 'plan_id' = t.plan_id::text WHERE g.\"timestamp\" >= %s", (END,)).fetchone()[0]
    assert truth_rows == sum(p["meals"] for p in plans) == summary["rows"]["sim.keep_truth"]
    assert truth[better] > truth[worse] + 0.15, truth
    for arm in by_arm:
        assert truth[arm] == pytest.approx(summary["arms"][arm]["mean_true_keep"])
        assert abs(kept_share[arm] - truth[arm]) < 0.06, (arm, kept_share, truth)  # kept at the true rate


def test_the_past_is_never_rewritten_and_only_the_next_week_is_appended(world):
    before = digests(world)

    summary = simulate_online_week(world, deployment(), END, ranker=ranker("canary"), seed=SEED)

    assert summary["status"] == "simulated"
    assert digests(world, since=END) == before  # every earlier row is there, unchanged, and nothing else old
    after = digests(world)
    added = {table: after[table][0] - before[table][0] for table in SOURCE}
    assert added == {**{t: summary["rows"][t] for t in generate.TABLE_COLUMNS}, "app.recipes": 0}
    assert added["exp.events"] > 0 and added["app.pantry_snapshots"] > 0
    with connect(world) as conn:  # what was added lies in the week (acceptances may land after its end)
        last_state = conn.execute("SELECT max(valid_from) FROM (SELECT valid_from FROM app.pantry_snapshots UNION ALL "
                                  "SELECT valid_from FROM app.constraints UNION ALL SELECT valid_from FROM "
                                  "app.households) s").fetchone()[0]
        generated = conn.execute("SELECT min(\"timestamp\"), max(\"timestamp\") FROM exp.events WHERE event_type = "
                                 "'plan_generated' AND context ? 'arm'").fetchone()
    assert END <= last_state < END + timedelta(days=7)
    assert END <= generated[0] and generated[1] < END + timedelta(days=7)
    # Earlier weeks are left alone (a week that holds plans) or refused (one before the world), as is a week
    # after a gap or a world of another seed; nothing is written.
    frozen = digests(world)
    for week in (END - timedelta(days=7), END - timedelta(days=7 * WEEKS)):
        assert simulate_online_week(world, deployment(), week, ranker=ranker("canary"), seed=SEED)["status"] == "exists"
    with pytest.raises(OnlineWeekError, match="never inserted into the past"):
        simulate_online_week(world, deployment(), END - timedelta(days=7 * (WEEKS + 1)), ranker=ranker("canary"),
                             seed=SEED)
    with pytest.raises(OnlineWeekError, match="weeks in between"):
        simulate_online_week(world, deployment(), END + timedelta(days=14), ranker=ranker("canary"), seed=SEED)
    with pytest.raises(OnlineWeekError, match="seed 4"):
        simulate_online_week(world, deployment(), END + timedelta(days=7), ranker=ranker("canary"), seed=4)
    assert digests(world) == frozen


def test_a_week_is_simulated_once_and_the_next_one_follows_it(world):
    first = simulate_online_week(world, deployment(), END, ranker=ranker("canary"), seed=SEED)
    assert first["status"] == "simulated"
    once = digests(world)

    again = simulate_online_week(world, deployment(), END, ranker=ranker("canary"), seed=SEED)

    assert again["status"] == "exists" and "nothing written" in again["message"], again
    assert again["plans_by_policy_version_id"] == {CHAMPION: first["arms"]["champion"]["plans"],
                                                   CANARY: first["arms"]["canary"]["plans"]}
    assert digests(world) == once
    # The next week starts from the state the online week left (its changes are read back).
    second = simulate_online_week(world, deployment(), END + timedelta(days=7), ranker=ranker("canary"), seed=SEED)
    assert second["status"] == "simulated" and digests(world, since=END + timedelta(days=7)) == once
    assert simulate_online_week(world, deployment(), END + timedelta(days=7), ranker=ranker("canary"),
                                seed=SEED)["status"] == "exists"


def test_the_online_evaluation_reads_the_week_split_into_the_two_arms(world):
    from include.promotion.online import arm_figures

    summary = simulate_online_week(world, deployment(), END, ranker=ranker("canary"), seed=SEED)
    canary = {"started_at": END.isoformat(), "champion_policy_version_id": CHAMPION,
              "canary_policy_version_id": CANARY, "experiment_id": EXPERIMENT, "share": 0.5}

    arms, other = arm_figures(world, canary, END + timedelta(days=10))

    plans = week_plans(world, END)
    for arm in ("champion", "canary"):
        mine = [p for p in plans if p["context"]["arm"] == arm]
        accepted = [p for p in mine if p["kept"] is not None]
        assert arms[arm]["plans_generated"] == len(mine) == summary["arms"][arm]["plans"]
        assert arms[arm]["plans_accepted"] == arms[arm]["plans"] == len(accepted)
        assert arms[arm]["meals"] == sum(p["meals"] for p in accepted)
        assert arms[arm]["kept"] == sum(p["kept"] for p in accepted)
        assert arms[arm]["households"] == len({p["household"] for p in accepted})
    assert arms["canary"]["kept_share"] > arms["champion"]["kept_share"] + 0.15
    assert other["misrouted"] == 0 and other["policy_version_ids"] == {}


def test_plans_before_the_canary_started_are_served_by_the_champion(world):
    start = END + timedelta(days=3, hours=12)

    summary = simulate_online_week(world, deployment(started_at=start), END, ranker=ranker("canary"), seed=SEED)

    plans = week_plans(world, END)
    with connect(world) as conn:
        at = dict(conn.execute("SELECT payload ->> 'plan_id', \"timestamp\" FROM exp.events "
                               "WHERE event_type = 'plan_generated' AND \"timestamp\" >= %s", (END,)).fetchall())
    early = [p for p in plans if at[p["plan_id"]] < start]
    assert len(early) == summary["plans_before_canary_start"] > 0.3 * len(plans)
    assert {p["context"]["policy_version_id"] for p in early} == {CHAMPION}
    late = [p for p in plans if at[p["plan_id"]] >= start]
    assert {p["context"]["policy_version_id"] for p in late} == {CHAMPION, CANARY}
    for plan in late:
        assert (plan["context"]["policy_version_id"] == CANARY) == in_canary(plan["household"], EXPERIMENT, 0.5)


def test_the_cli_serves_the_deployment_recorded_by_promotion_with_registered_models(clean_source, tmp_path, capsys):
    """End to end through the real records: two loadable versions in an MLflow registry, champion 1 recorded by
    promotion's `apply`, a canary of 2 started by it; the CLI reads the deployment from the `ml` schema, loads
    both `models:/` URIs and serves the week; the online evaluation's reading of it splits the two arms."""
    import mlflow

    from include.events.online import main
    from include.promotion.online import arm_figures
    from tests.conftest import isolated_planner
    from tests.promotion.canary_world import promote_directly, register_versions, reset, start_canary

    generate.generate_and_load(clean_source, 200, WEEKS, seed=SEED, end=END, dirty_share=0.02, reset=True)
    with isolated_planner(tmp_path, clean_source, PLANNER_CANARY_SHARE="0.5"):
        assert register_versions(2) == ["1", "2"]
        reset(clean_source, mlflow.MlflowClient())
        promote_directly(clean_source, "1", None, "online-week-setup")
        canary = start_canary(clean_source, "2", "1", "online-week-canary", started_at=END)
        args = ["--dsn", clean_source, "--week-start", END.date().isoformat(), "--seed", str(SEED)]

        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert main(args) == 0
        assert "nothing written" in capsys.readouterr().err
        arms, other = arm_figures(clean_source, canary, END + timedelta(days=10))

    assert summary["status"] == "simulated" and summary["households"] == 200
    assert {arm: f["policy_version_id"] for arm, f in summary["arms"].items()} == {"champion": CHAMPION,
                                                                                    "canary": CANARY}
    plans = week_plans(clean_source, END)
    assert len(plans) == summary["plans"]
    for plan in plans:
        assert (plan["context"]["policy_version_id"] == CANARY) == \
            in_canary(plan["household"], canary["experiment_id"], canary["share"])
    for arm in ("champion", "canary"):
        accepted = [p for p in plans if p["context"]["arm"] == arm and p["kept"] is not None]
        assert arms[arm]["plans"] == len(accepted) > 20
        assert arms[arm]["kept"] == sum(p["kept"] for p in accepted)
    assert other["misrouted"] == 0 and other["policy_version_ids"] == {}


def test_rank_many_serves_each_plan_as_rank_does():
    """The batch interface the simulation uses: the same arm, order, probabilities and context as one `rank`
    per plan, whatever the batch size."""
    import random

    recipes = generate.make_recipes(SEED)
    rng = random.Random(0)
    requests = []
    for i in range(30):
        state = generate._random_state(rng)
        hid = generate._uuid(rng)
        requests.append({"household_id": hid, "plan_id": f"plan-{i}",
                         "plan_input": plan_input(hid, state, "plan-first", "assisted", None),
                         "candidates": [{"day": "monday", "recipe_id": r.recipe_id, "servings": 2}
                                        for r in rng.sample(recipes, rng.randint(3, 12))]})
    serving = ranker("canary")
    one_by_one = [serving.rank(deployment(), r["household_id"], r["plan_input"], r["candidates"], r["plan_id"])
                  for r in requests]
    assert {s.arm.name for s in one_by_one} == {"champion", "canary"}
    for batch in (1, 7, 512):
        assert serving.rank_many(deployment(), requests, batch_plans=batch) == one_by_one
