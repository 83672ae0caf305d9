"""The canary from its start in promotion to the online evaluation's decision, against a real MLflow
registry, the real PostgreSQL `ml` schema and events database, and the real Redis where one answers:
a passed gate under rollout canary starts a canary (the champion stays), a better canary is promoted,
a planted regression is rolled back automatically (through the DAG), and the compare-and-set refuses
when the champion moved during the canary. The arms' events are planted (tests/promotion/canary_world.py)."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from include.core import names
from tests.conftest import isolated_planner
from tests.promotion.canary_world import (
    START,
    ArmEvents,
    promote_directly,
    register_versions,
    reset,
    start_canary,
    truncate_source,
)
from tests.promotion.records import champion, records, redis_answers

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL = names.REGISTERED_MODEL_NAME
REDIS_URL = "redis://127.0.0.1:6379/12"
# Small arms, quick decisions: the rule and its error guarantee are test_canary's; these are the wiring.
CANARY_ENV = {"PLANNER_CANARY_SHARE": "0.5", "PLANNER_CANARY_MIN_EXPOSURE": "200", "PLANNER_CANARY_MIN_DAYS": "7",
              "PLANNER_CANARY_MAX_DAYS": "28"}
LOOK_END = START.replace(hour=0) + timedelta(days=15)  # day 14 of a canary started at START


@pytest.fixture(scope="module")
def world(events_dsn, tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("online_eval")
    has_redis = redis_answers(REDIS_URL)
    with isolated_planner(root, events_dsn, **CANARY_ENV) as (_, patch):
        if has_redis:
            patch.setenv("REDIS_URL", REDIS_URL)
        versions = register_versions(3)
        assert versions == ["1", "2", "3"]
        yield {"client": mlflow.MlflowClient(), "dsn": events_dsn, "redis": has_redis}


@pytest.fixture()
def fresh(world, request):
    """Champion 1 recorded by promotion, no canary, empty source tables, an empty Redis db."""
    import redis

    reset(world["dsn"], world["client"])
    truncate_source(world["dsn"])
    if world["redis"]:
        redis.Redis.from_url(REDIS_URL).flushdb()
    promote_directly(world["dsn"], "1", None, f"setup__{request.node.name}")
    events = ArmEvents(world["dsn"])
    yield {**world, "events": events, "name": request.node.name}
    events.close()


def _redis_deployment() -> dict | None:
    import redis

    from include.promotion.pipeline import REDIS_KEY

    raw = redis.Redis.from_url(REDIS_URL).get(REDIS_KEY)
    return json.loads(raw) if raw else None


def _evaluation_report(client, version: str, baseline: str | None) -> str:
    """An evaluation run whose report passes the gate (what offline evaluation would have logged)."""
    import mlflow

    good = {"accuracy": 0.74, "roc_auc": 0.81, "log_loss": 0.52, "latency_p95_ms": 20.0, "plan_ranking": 0.3}
    report = {"model_version": version, "baseline_version": baseline, "window": {"version": "2026-11-16_2026-11-23"},
              "counts": {"examples": 5000}, "slices": {},
              "models": {"candidate": good, "champion": dict(good) if baseline else None, "keep_rate": {"roc_auc": 0.70}}}
    from include.core.tracking import ensure_experiment

    with mlflow.start_run(experiment_id=ensure_experiment("canary_test_evaluations")) as run:
        mlflow.log_text(json.dumps(report), names.EVAL_REPORT_FILE)
    client.set_model_version_tag(MODEL, version, "evaluation_run_id", run.info.run_id)
    client.set_model_version_tag(MODEL, version, "val_loss", "0.5")
    return run.info.run_id


def test_a_passed_gate_under_rollout_canary_starts_a_canary_and_the_champion_stays(fresh):
    from include.promotion.pipeline import apply, decide_promotion

    client, dsn = fresh["client"], fresh["dsn"]
    _evaluation_report(client, "2", "1")

    plan = decide_promotion(dsn, "2", None, require_approval=False, dry_run=False, rollout="canary")

    assert (plan["outcome"], plan["next"], plan["rollout"]) == ("canary_started", "apply", "canary"), plan["decision"]
    assert plan["canary"]["share"] == 0.5 and plan["canary"]["experiment_id"] == f"{MODEL}:v2:canary"
    result = apply(dsn, plan, None, {"dag_id": "planner_promotion", "run_id": "canary-start"})
    assert result["outcome"] == "canary_started"
    assert champion(client) == "1"  # the champion stays champion
    deployment = records(dsn)["deployment"]
    assert deployment["version"] == "1" and deployment["policy_version_id"] == f"{MODEL}:v1"
    assert {k: deployment["canary"][k] for k in ("version", "share", "policy_version_id", "experiment_id",
                                                 "champion_policy_version_id")} == \
        {"version": "2", "share": 0.5, "policy_version_id": f"{MODEL}:v2", "experiment_id": f"{MODEL}:v2:canary",
         "champion_policy_version_id": f"{MODEL}:v1"}
    assert deployment["canary"]["started_at"]
    decision = records(dsn)["decisions"][-1]
    assert (decision["version"], decision["outcome"], decision["previous_champion"]) == ("2", "canary_started", "1")
    assert client.get_model_version(MODEL, "2").tags["promotion_status"] == "canary"
    if fresh["redis"]:
        assert _redis_deployment() == {"model_name": MODEL, **deployment}
    # A retry of the same task records nothing new; another candidate meanwhile is refused (one at a time).
    assert apply(dsn, plan, None, {"dag_id": "planner_promotion", "run_id": "canary-start"})["decision_id"] == \
        result["decision_id"]
    _evaluation_report(client, "3", "1")
    other = decide_promotion(dsn, "3", None, require_approval=False, dry_run=False, rollout="canary")
    assert other["outcome"] == "refused" and "a canary of version 2 is running" in other["decision"]["reasons"][0]
    # Direct promotion stays available, and without a champion a canary has nothing to compare against.
    assert decide_promotion(dsn, "3", None, require_approval=False, dry_run=False)["outcome"] == "promoted"
    reset(dsn, client)
    _evaluation_report(client, "2", None)
    first = decide_promotion(dsn, "2", None, require_approval=False, dry_run=False, rollout="canary")
    assert (first["outcome"], first["rollout"]) == ("promoted", "direct")


def test_a_better_canary_is_promoted_and_the_canary_closed(fresh):
    from include.promotion import history
    from include.promotion.online import conclude, take_look

    client, dsn = fresh["client"], fresh["dsn"]
    canary = start_canary(dsn, "2", "1", fresh["name"])
    per_arm = fresh["events"].serve(canary, keep={"champion": 0.45, "canary": 0.75})
    assert min(per_arm.values()) > 50
    airflow = {"dag_id": "planner_online_eval", "run_id": fresh["name"]}

    early = take_look(dsn, canary, START.replace(hour=0) + timedelta(days=4), airflow)
    assert early["action"] == "continue" and "min_days" in early["reason"]
    plan = take_look(dsn, canary, LOOK_END, airflow)

    assert plan["action"] == "promote", plan["reason"]
    arms = plan["look"]["arms"]
    assert arms["canary"]["kept_share"] > arms["champion"]["kept_share"]
    for arm, households in per_arm.items():
        assert arms[arm]["households"] == households and arms[arm]["plans"] == 2 * households
        assert arms[arm]["meals"] == 8 * households and arms[arm]["acceptance_rate"] == 1.0
        assert arms[arm]["edits_per_plan"] == 0.0
    assert plan["look"]["other"]["misrouted"] == 0
    assert take_look(dsn, canary, LOOK_END, airflow)["look"] == plan["look"]  # a retry finds its look

    result = conclude(dsn, plan, None, airflow)

    assert result["outcome"] == "promoted" and champion(client) == "2"
    seen = records(dsn)
    assert seen["deployment"]["version"] == "2" and seen["deployment"]["canary"] is None
    assert [(c["version"], c["change"]) for c in seen["champions"]] == [("1", "promoted"), ("2", "promoted")]
    with history.connect(dsn) as conn:
        closed = history.canary(conn, canary["canary_id"])
        looks = history.looks(conn, canary["canary_id"])
    assert closed["state"] == "promoted" and closed["end_decision_id"] == result["decision_id"]
    assert [look["action"] for look in looks] == ["continue", "promote"]
    run = client.get_run(plan["mlflow_run_id"])
    assert run.data.metrics["canary.kept_share"] > run.data.metrics["champion.kept_share"]
    assert run.data.tags["outcome"] == "promoted" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lift")] == [3, 14]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/arms_over_time.png"}
    if fresh["redis"]:
        assert _redis_deployment()["version"] == "2" and _redis_deployment()["canary"] is None


def test_a_planted_regression_is_rolled_back_automatically_through_the_dag(fresh, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from include.promotion import history

    client, dsn = fresh["client"], fresh["dsn"]
    canary = start_canary(dsn, "2", "1", fresh["name"])
    fresh["events"].serve(canary, keep={"champion": 0.6, "canary": 0.3}, seed=1)
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_online_eval.py"))
    assert bag.import_errors == {}
    dag = bag.dags["planner_online_eval"]

    run = dag.test(run_conf={"as_of": LOOK_END.date().isoformat(), "require_approval": False})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states["conclude"] == "success" and states["await_approval"] == "skipped"
    assert champion(client) == "1"
    seen = records(dsn)
    assert seen["deployment"]["version"] == "1" and seen["deployment"]["canary"] is None
    decision = seen["decisions"][-1]
    assert (decision["version"], decision["outcome"]) == ("2", "canary_rolled_back")
    assert "regression" in decision["reasons"][0]
    with history.connect(dsn) as conn:
        closed = history.canary(conn, canary["canary_id"])
    assert closed["state"] == "rolled_back" and closed["end_decision_id"] == decision["decision_id"]
    assert client.get_model_version(MODEL, "2").tags["promotion_status"] == "canary rolled back"
    if fresh["redis"]:
        assert _redis_deployment()["canary"] is None

    again = dag.test(run_conf={"as_of": LOOK_END.date().isoformat(), "require_approval": False})
    states = {ti.task_id: ti.state for ti in again.get_task_instances()}
    assert again.state == "success" and states["conclude"] == "skipped"  # no canary runs: nothing to look at


def test_the_compare_and_set_refuses_when_the_champion_moved_during_the_canary(fresh):
    from include.promotion import history
    from include.promotion.online import conclude, take_look

    client, dsn = fresh["client"], fresh["dsn"]
    canary = start_canary(dsn, "2", "1", fresh["name"])
    fresh["events"].serve(canary, keep={"champion": 0.45, "canary": 0.75}, seed=2)
    airflow = {"dag_id": "planner_online_eval", "run_id": fresh["name"]}
    plan = take_look(dsn, canary, LOOK_END, airflow, track=False)
    assert plan["action"] == "promote", plan["reason"]
    client.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, "3")  # somebody moved it meanwhile

    result = conclude(dsn, plan, None, airflow)

    assert result["outcome"] == "refused" and "expected 1, found 3" in result["reasons"][0]
    assert champion(client) == "3"  # left as that somebody set it
    seen = records(dsn)
    assert seen["deployment"]["version"] == "1" and seen["deployment"]["canary"] is None
    assert seen["decisions"][-1]["outcome"] == "refused"
    with history.connect(dsn) as conn:
        assert history.canary(conn, canary["canary_id"])["state"] == "abandoned"


def test_a_canary_closed_while_its_promotion_waited_is_not_promoted(fresh):
    from include.promotion import history
    from include.promotion.online import conclude, take_look

    client, dsn = fresh["client"], fresh["dsn"]
    canary = start_canary(dsn, "2", "1", fresh["name"])
    fresh["events"].serve(canary, keep={"champion": 0.45, "canary": 0.75}, seed=3)
    airflow = {"dag_id": "planner_online_eval", "run_id": fresh["name"]}
    plan = take_look(dsn, canary, LOOK_END, airflow, track=False)
    assert plan["action"] == "promote", plan["reason"]
    # while the promotion waited (for approval, say), a direct promotion and a rollback closed the canary and
    # left version 1 the champion again: the compare-and-set alone would let version 2 through
    with history.connect(dsn) as conn, conn.transaction():
        history.end_canary(conn, canary["canary_id"], "abandoned", "the champion changed during the canary", None)

    result = conclude(dsn, plan, None, airflow)

    assert result["outcome"] == "refused" and "is abandoned" in result["reasons"][0]
    assert champion(client) == "1"
    assert records(dsn)["deployment"]["version"] == "1"


def test_a_direct_promotion_during_a_canary_ends_it_in_the_registry_and_mlflow_too(fresh):
    from include.promotion import history
    from include.promotion.online import take_look

    client, dsn = fresh["client"], fresh["dsn"]
    canary = start_canary(dsn, "2", "1", fresh["name"])
    fresh["events"].serve(canary, keep={"champion": 0.45, "canary": 0.45}, seed=4)
    airflow = {"dag_id": "planner_online_eval", "run_id": fresh["name"]}
    look = take_look(dsn, canary, START.replace(hour=0) + timedelta(days=4), airflow)  # tracked: an MLflow run
    assert look["action"] == "continue" and look["mlflow_run_id"]

    promote_directly(dsn, "3", "1", f"{fresh['name']}-direct")  # a person promotes another version meanwhile

    with history.connect(dsn) as conn:
        assert history.canary(conn, canary["canary_id"])["state"] == "abandoned"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["promotion_status"] == "canary abandoned" and "champion changed to version 3" in tags["canary_end_reason"]
    run = client.get_run(look["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "abandoned"


@pytest.mark.parametrize(("run_type", "param", "env", "expected"), [
    ("asset_triggered", "auto", None, "canary"),     # a scheduled promotion follows the policy
    ("asset_triggered", "auto", "direct", "direct"),  # ... and its override
    ("manual", "auto", None, "direct"),               # a person promoting a version: direct, as before
    ("manual", "canary", None, "canary"),
    ("asset_triggered", "direct", None, "direct"),
])
def test_the_promotion_dags_rollout_by_run_type(monkeypatch, run_type, param, env, expected):
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("planner_promotion_dag", PROJECT_ROOT / "dags" / "planner_promotion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if env:
        monkeypatch.setenv("PLANNER_PROMOTION_ROLLOUT", env)
    else:
        monkeypatch.delenv("PLANNER_PROMOTION_ROLLOUT", raising=False)
    context = {"params": {"rollout": param}, "dag_run": SimpleNamespace(run_type=run_type)}
    assert module._rollout(context) == expected
