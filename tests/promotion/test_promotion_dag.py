"""planner_promotion as real DAG runs against a real MLflow registry, the real PostgreSQL `ml`
schema and the real Redis on 127.0.0.1:6379 (that part is skipped where none answers): the
first good model is promoted, a rerun is a no-op, the shuffled-label model is blocked with its
reasons, a concurrent champion change makes the compare-and-set refuse, rollback restores the
previous champion, a dry run moves nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.core import names
from tests.conftest import FAST_MODEL_GATE, copy_as_new_training_run, isolated_planner
from tests.promotion.records import champion, records, redis_answers
from tests.promotion.records import redis_champion as read_redis_champion

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/13"
MODEL = names.REGISTERED_MODEL_NAME


@pytest.fixture(scope="module")
def world(trained_model, shuffled_label_model, training_events_dsn, tmp_path_factory):
    """Versions 1 (trained well), 2 (shuffled labels) and 3 (a retrain of 1); no champion yet."""
    import mlflow
    import redis

    from include.registration.registry import register

    root = tmp_path_factory.mktemp("promotion")
    retrain = copy_as_new_training_run(trained_model, root / "models" / "planner_acceptance-v20261123_030405")
    has_redis = redis_answers(REDIS_URL)
    with isolated_planner(root, training_events_dsn, **FAST_MODEL_GATE) as (_, patch):
        if has_redis:
            patch.setenv("REDIS_URL", REDIS_URL)
            redis.Redis.from_url(REDIS_URL).flushdb()
        versions = [register(trained_model).version, register(shuffled_label_model).version, register(retrain).version]
        assert versions == ["1", "2", "3"]
        yield {"client": mlflow.MlflowClient(), "dsn": training_events_dsn, "redis": has_redis}


@pytest.fixture(scope="module")
def promotion_dag(airflow_db, world):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_promotion.py"))
    assert bag.import_errors == {}
    return bag.dags[names.DAG_PROMOTION]


def evaluate(dsn: str, version: str, baseline: str = "champion") -> str:
    """Offline evaluation of the version (the phase's own functions), tagged as the DAG tags it."""
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan, tag_version

    evaluation_plan = plan(version, baseline)
    report = evaluate(dsn, evaluation_plan, build_and_check_replay(dsn, evaluation_plan))
    tag_version(report)
    return report["evaluation_run_id"]


def redis_champion() -> dict | None:
    return read_redis_champion(REDIS_URL)


def run(dag, **conf):
    # Every Param given: dag.test() keeps a previous run's conf values in the DAG object's params.
    conf = {"model_version": None, "action": "promote", "require_approval": False, "dry_run": False, **conf}
    result = dag.test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in result.get_task_instances()}
    return result.state, states


@pytest.mark.e2e
def test_the_first_good_model_is_promoted_and_a_rerun_changes_nothing(promotion_dag, world):
    client, dsn = world["client"], world["dsn"]
    evaluation_run = evaluate(dsn, "1")  # no champion yet: gated on absolutes

    state, states = run(promotion_dag, model_version="1")

    assert state == "success", states
    assert states["apply"] == "success" and states["await_approval"] == "skipped"
    assert champion(client) == "1"
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["promotion_status"] == "champion"
    seen = records(dsn)
    [decision] = seen["decisions"]
    assert (decision["version"], decision["outcome"], decision["previous_champion"]) == ("1", "promoted", None)
    assert decision["evaluation_run_id"] == evaluation_run and decision["reasons"] == []
    assert seen["deployment"]["version"] == "1" and seen["deployment"]["model_uri"] == f"models:/{MODEL}/1"
    assert [(c["version"], c["change"]) for c in seen["champions"]] == [("1", "promoted")]
    assert tags["promotion_decision_id"] == str(decision["decision_id"])
    if world["redis"]:
        assert redis_champion()["version"] == "1"

    state, states = run(promotion_dag, model_version="1")

    assert state == "success" and states["apply"] == "skipped" and states["record_outcome"] == "success"
    again = records(dsn)
    assert [d["outcome"] for d in again["decisions"]] == ["promoted", "no_op"]
    assert again["deployment"] == seen["deployment"] and again["champions"] == seen["champions"]
    assert champion(client) == "1"


@pytest.mark.e2e
def test_the_shuffled_label_model_is_blocked_with_its_reasons(promotion_dag, world):
    client, dsn = world["client"], world["dsn"]
    evaluate(dsn, "2")  # against champion 1

    state, states = run(promotion_dag, model_version="2")

    assert state == "success", states  # a failed gate is an outcome, not a crash
    assert states["apply"] == "skipped" and states["record_outcome"] == "success"
    assert champion(client) == "1"
    decision = records(dsn)["decisions"][-1]
    assert (decision["version"], decision["outcome"], decision["previous_champion"]) == ("2", "rejected", "1")
    reasons = " | ".join(decision["reasons"])
    assert "roc_auc" in reasons and "not >= 0.7" in reasons and "vs champion" in reasons
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["promotion_status"] == "rejected"
    assert json.loads(tags["promotion_reasons"]) == decision["reasons"]
    assert records(dsn)["deployment"]["version"] == "1"


@pytest.mark.e2e
def test_a_champion_that_moved_since_the_decision_makes_the_compare_and_set_refuse(promotion_dag, world):
    from include.promotion.pipeline import apply, decide_promotion

    client, dsn = world["client"], world["dsn"]
    evaluate(dsn, "3")  # against champion 1
    plan = decide_promotion(dsn, "3", None, require_approval=False, dry_run=False)
    assert plan["outcome"] == "promoted" and plan["expected_champion"] == "1"
    client.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, "2")  # somebody moved it meanwhile

    result = apply(dsn, plan, None, {"dag_id": "test", "run_id": "race"})

    assert result["outcome"] == "refused" and "expected 1, found 2" in result["reasons"][0]
    assert champion(client) == "2"
    assert records(dsn)["decisions"][-1]["outcome"] == "refused"
    assert records(dsn)["deployment"]["version"] == "1"  # nothing recorded as deployed

    # Through the DAG: version 3 was evaluated against 1, the champion is now 2 -> stops with the reason.
    state, states = run(promotion_dag, model_version="3")
    assert state == "failed" and states["decide"] == "failed"
    assert champion(client) == "2"
    client.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, "1")


@pytest.mark.e2e
def test_a_dry_run_moves_nothing_and_rollback_restores_the_previous_champion(promotion_dag, world):
    client, dsn = world["client"], world["dsn"]
    assert champion(client) == "1"

    state, states = run(promotion_dag, model_version="3", dry_run=True)
    assert state == "success" and states["apply"] == "skipped"
    assert champion(client) == "1" and records(dsn)["decisions"][-1]["outcome"] == "dry_run"

    state, states = run(promotion_dag, model_version="3")
    assert state == "success" and states["apply"] == "success", states
    assert champion(client) == "3"
    assert records(dsn)["deployment"]["previous_version"] == "1"

    state, states = run(promotion_dag, action="rollback")

    assert state == "success" and states["apply"] == "success", states
    assert champion(client) == "1"
    seen = records(dsn)
    assert (seen["decisions"][-1]["action"], seen["decisions"][-1]["outcome"]) == ("rollback", "rolled_back")
    assert seen["deployment"]["version"] == "1" and seen["deployment"]["previous_version"] == "3"
    assert [(c["version"], c["change"]) for c in seen["champions"]][-2:] == [("3", "promoted"), ("1", "rolled_back")]
    assert client.get_model_version(MODEL, "1").tags["promotion_status"] == "champion (rollback)"
    if world["redis"]:
        assert redis_champion()["version"] == "1"

    # Nothing before version 1: a second rollback is refused, recorded, and moves nothing.
    state, states = run(promotion_dag, action="rollback")
    assert state == "success" and states["apply"] == "skipped"
    assert champion(client) == "1" and records(dsn)["decisions"][-1]["outcome"] == "refused"
