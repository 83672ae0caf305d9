"""The reference consumer (include/serving/consumer.py) against a deployment recorded by promotion's own
code: it reads the record from Redis or the `ml` schema, routes each household as `in_canary` does,
loads the arm's model by its models:/ URI and ranks a plan's candidate recipes with it."""
from __future__ import annotations

import uuid

import pytest

from include.serving.assignment import in_canary
from include.serving.consumer import Ranker, read_deployment, route
from tests.conftest import isolated_planner
from tests.promotion.canary_world import promote_directly, register_versions, reset, start_canary
from tests.promotion.records import redis_answers

REDIS_URL = "redis://127.0.0.1:6379/11"
DEAD_REDIS_URL = "redis://127.0.0.1:1/11"
PLAN_INPUT = {"household": {"id": "h", "size": 2, "preferences": ["quick"], "restrictions": []},
              "pantry": {"items": []}, "constraints": {"budget": 100, "max_prep_time": 30, "excluded_ingredients": []},
              "workflow_type": "plan-first", "mode": "autopilot", "previous_plan": None}
CANDIDATES = [{"day": "monday", "recipe_id": f"recipe-{i}", "servings": 2} for i in range(6)]


@pytest.fixture(scope="module")
def deployed(events_dsn, tmp_path_factory):
    """Champion 1 and a canary of version 2 at share 0.5, as promotion records and publishes them."""
    import mlflow
    import redis

    root = tmp_path_factory.mktemp("consumer")
    has_redis = redis_answers(REDIS_URL)
    with isolated_planner(root, events_dsn, PLANNER_CANARY_SHARE="0.5") as (_, patch):
        if has_redis:
            patch.setenv("REDIS_URL", REDIS_URL)
            redis.Redis.from_url(REDIS_URL).flushdb()
        client = mlflow.MlflowClient()
        assert register_versions(2) == ["1", "2"]
        reset(events_dsn, client)
        with pytest.raises(LookupError):
            read_deployment(dsn=events_dsn)  # nothing promoted yet
        promote_directly(events_dsn, "1", None, "consumer-setup")
        champion_only = read_deployment(dsn=events_dsn)
        canary = start_canary(events_dsn, "2", "1", "consumer-canary")
        yield {"dsn": events_dsn, "redis": has_redis, "canary": canary, "champion_only": champion_only}


def test_the_deployment_reads_the_same_from_redis_and_the_database(deployed):
    from_db = read_deployment(dsn=deployed["dsn"])
    assert from_db["version"] == "1" and from_db["canary"]["version"] == "2"
    assert from_db["canary"]["model_uri"] == "models:/planner_acceptance/2"
    if deployed["redis"]:
        assert read_deployment(redis_url=REDIS_URL) == from_db
    assert read_deployment(redis_url=DEAD_REDIS_URL, dsn=deployed["dsn"]) == from_db  # Redis down: the database


def test_households_are_routed_as_in_canary_says(deployed):
    deployment, canary = read_deployment(dsn=deployed["dsn"]), deployed["canary"]
    households = [str(uuid.UUID(int=i + 1, version=4)) for i in range(400)]
    arms = [route(deployment, h) for h in households]
    assert [a.name == "canary" for a in arms] == [in_canary(h, canary["experiment_id"], 0.5) for h in households]
    assert {(a.name, a.version, a.policy_version_id) for a in arms} == {
        ("champion", "1", "planner_acceptance:v1"), ("canary", "2", "planner_acceptance:v2")}
    assert all(route(deployed["champion_only"], h).name == "champion" for h in households)  # no canary: all champion


def test_each_arms_model_ranks_the_candidates(deployed):
    deployment, canary = read_deployment(dsn=deployed["dsn"]), deployed["canary"]
    households = [str(uuid.UUID(int=i + 1, version=4)) for i in range(50)]
    in_arm = next(h for h in households if in_canary(h, canary["experiment_id"], 0.5))
    out_arm = next(h for h in households if not in_canary(h, canary["experiment_id"], 0.5))
    ranker = Ranker()

    served_canary = ranker.rank(deployment, in_arm, PLAN_INPUT, CANDIDATES)
    served_champion = ranker.rank(deployment, out_arm, PLAN_INPUT, CANDIDATES)

    assert served_canary.context["policy_version_id"] == "planner_acceptance:v2"
    assert served_canary.context["arm"] == "canary" and served_champion.context["arm"] == "champion"
    assert served_champion.context["experiment_id"] == canary["experiment_id"]
    for served in (served_canary, served_champion):
        probabilities = [m["keep_probability"] for m in served.meals]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sorted(m["recipe_id"] for m in served.meals) == sorted(c["recipe_id"] for c in CANDIDATES)
    # The two versions score differently (the test models order recipes oppositely): each arm used its own.
    assert [m["recipe_id"] for m in served_canary.meals] == [m["recipe_id"] for m in served_champion.meals][::-1]
