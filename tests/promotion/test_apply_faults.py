"""`apply` stopped at every step it takes, then run again with the same plan, as Airflow's retry
of the task does: the alias, the decision, the deployment, the champion history, the version tags
and Redis end up agreeing. A fault is one real function made to raise, before or after doing its
work, in a real MLflow registry, the real PostgreSQL `ml` schema and the real Redis (a dead port
stands for Redis being down; the Redis check is skipped where none answers)."""
from __future__ import annotations

import pytest

from include.core import names
from tests.conftest import FAST_MODEL_GATE, copy_as_new_training_run, isolated_planner
from tests.promotion.records import champion, records, redis_answers
from tests.promotion.records import redis_champion as read_redis_champion

REDIS_URL = "redis://127.0.0.1:6379/14"
DEAD_REDIS_URL = "redis://127.0.0.1:1/14"
MODEL = names.REGISTERED_MODEL_NAME
PROMOTION_TAGS = ("promotion_status", "promotion_decision_id", "promoted_at")


class Crash(RuntimeError):
    """The injected fault."""


def _evaluate(dsn: str, version: str) -> None:
    from include.evaluation.pipeline import build_and_check_replay, evaluate, plan, tag_version

    evaluation_plan = plan(version, names.CHAMPION_ALIAS)
    tag_version(evaluate(dsn, evaluation_plan, build_and_check_replay(dsn, evaluation_plan)))


@pytest.fixture(scope="module")
def world(trained_model, training_events_dsn, tmp_path_factory):
    """Versions 1 (champion) and 2 (a retrain of 1, evaluated against it) and the plan promoting 2."""
    import mlflow

    from include.promotion.pipeline import decide_promotion
    from include.registration.registry import register

    root = tmp_path_factory.mktemp("apply_faults")
    retrain = copy_as_new_training_run(trained_model, root / "models" / "planner_acceptance-v20261123_050607")
    has_redis = redis_answers(REDIS_URL)
    with isolated_planner(root, training_events_dsn, **FAST_MODEL_GATE) as (_, patch):
        if has_redis:
            patch.setenv("REDIS_URL", REDIS_URL)
        assert [register(trained_model).version, register(retrain).version] == ["1", "2"]
        client = mlflow.MlflowClient()  # after `register` set the tracking URI of this module's registry
        client.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, "1")
        _evaluate(training_events_dsn, "2")
        promote = decide_promotion(training_events_dsn, "2", None, require_approval=False, dry_run=False)
        assert (promote["outcome"], promote["expected_champion"]) == ("promoted", "1"), promote["decision"]
        yield {"client": client, "dsn": training_events_dsn, "redis": has_redis, "promote": promote}


@pytest.fixture()
def fresh(world, request):
    """Champion 1 as the registry's only truth: an empty `ml` schema, no promotion tags, an empty Redis db."""
    import redis

    from include.promotion import history

    client, dsn = world["client"], world["dsn"]
    with history.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS ml CASCADE")
    history.ensure_schema(dsn)
    client.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, "1")
    for version in ("1", "2"):
        tags = client.get_model_version(MODEL, version).tags
        for key in PROMOTION_TAGS:
            if key in tags:
                client.delete_model_version_tag(MODEL, version, key)
    if world["redis"]:
        redis.Redis.from_url(REDIS_URL).flushdb()
    return {**world, "airflow": {"dag_id": "planner_promotion", "run_id": f"faults__{request.node.name}"}}


def redis_champion() -> dict | None:
    return read_redis_champion(REDIS_URL)


def assert_converged(world: dict, plan: dict, changes: list[tuple[str, str]]) -> dict:
    """The plan's change happened once and every copy of the champion says so; returns its decision."""
    client, target, previous = world["client"], plan["model_version"], plan["expected_champion"]
    assert champion(client) == target
    seen = records(world["dsn"])
    ours = [d for d in seen["decisions"] if (d["action"], d["version"]) == (plan["action"], target)]
    assert [d["outcome"] for d in ours] == [plan["outcome"]]
    [decision] = ours
    assert decision["state"] == "complete" and decision["previous_champion"] == previous
    deployment = seen["deployment"]
    assert (deployment["version"], deployment["previous_version"], deployment["decision_id"]) == \
        (target, previous, decision["decision_id"])
    assert deployment["model_uri"] == f"models:/{MODEL}/{target}"
    assert [(c["version"], c["change"]) for c in seen["champions"]] == changes
    [change] = [c for c in seen["champions"] if c["decision_id"] == decision["decision_id"]]
    assert (change["version"], change["previous_version"], change["change"]) == (target, previous, plan["outcome"])
    tags = client.get_model_version(MODEL, target).tags
    status = "champion (rollback)" if plan["action"] == "rollback" else "champion"
    assert (tags["promotion_status"], tags["promotion_decision_id"]) == (status, str(decision["decision_id"]))
    assert tags["promoted_at"] == change["changed_at"]
    assert client.get_model_version(MODEL, previous).tags["promotion_status"] == f"replaced by {target}"
    if world["redis"]:
        assert redis_champion() == {"model_name": MODEL, **deployment}
    return decision


def _raise_before(real):
    def crash(*args, **kwargs):
        raise Crash(real.__name__)
    return crash


def _raise_after(real):
    def crash(*args, **kwargs):
        real(*args, **kwargs)
        raise Crash(real.__name__)
    return crash


def _raise_at_call(number: int):
    def wrap(real):
        calls = []

        def crash(*args, **kwargs):
            calls.append(args)
            if len(calls) == number:
                raise Crash(f"{real.__name__} call {number}")
            return real(*args, **kwargs)
        return crash
    return wrap


# crash point -> ((where the function lives, its name, how it fails) or None for Redis down,
#                 the champion and the decision states the crash leaves)
CRASH_POINTS = {
    "before the pending record": (("history", "record_decision", _raise_before), "1", []),
    "after the pending record committed": (("history", "record_decision", _raise_after), "1", ["pending"]),
    "before the alias moved": (("mlflow", "set_registered_model_alias", _raise_before), "1", ["pending"]),
    "after the alias moved": (("mlflow", "set_registered_model_alias", _raise_after), "2", ["pending"]),
    "in the completion commit": (("history", "complete_decision", _raise_after), "2", ["pending"]),
    "at the first version tag": (("mlflow", "set_model_version_tag", _raise_at_call(1)), "2", ["complete"]),
    "at the replaced champion's tag": (("mlflow", "set_model_version_tag", _raise_at_call(4)), "2", ["complete"]),
    "with Redis down": (None, "2", ["complete"]),
}


def inject(monkeypatch, crash_point: str) -> None:
    import mlflow

    from include.promotion import history

    fault = CRASH_POINTS[crash_point][0]
    if fault is None:
        monkeypatch.setenv("REDIS_URL", DEAD_REDIS_URL)
        return
    where, name, wrap = fault
    owner = {"history": history, "mlflow": mlflow.MlflowClient}[where]
    monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))


@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
def test_a_retry_after_a_crash_converges(fresh, monkeypatch, crash_point):
    from redis import RedisError

    from include.promotion.pipeline import apply

    plan, airflow = fresh["promote"], fresh["airflow"]
    inject(monkeypatch, crash_point)
    with pytest.raises((Crash, RedisError)):
        apply(fresh["dsn"], plan, None, airflow)
    monkeypatch.undo()
    _, champion_left, states_left = CRASH_POINTS[crash_point]
    assert champion(fresh["client"]) == champion_left
    assert [d["state"] for d in records(fresh["dsn"])["decisions"]] == states_left

    result = apply(fresh["dsn"], plan, None, airflow)

    decision = assert_converged(fresh, plan, [("2", "promoted")])
    assert (result["outcome"], result["decision_id"], result["champion"]) == \
        ("promoted", decision["decision_id"], "2")


def test_a_rollback_stopped_after_its_alias_moved_converges(fresh, monkeypatch):
    from include.promotion.pipeline import apply, decide_rollback

    apply(fresh["dsn"], fresh["promote"], None, fresh["airflow"])
    plan = decide_rollback(fresh["dsn"], None, require_approval=False, dry_run=False)
    assert (plan["outcome"], plan["model_version"], plan["expected_champion"]) == ("rolled_back", "1", "2")
    airflow = {"dag_id": "planner_promotion", "run_id": "faults__rollback"}
    inject(monkeypatch, "after the alias moved")
    with pytest.raises(Crash):
        apply(fresh["dsn"], plan, None, airflow)
    monkeypatch.undo()
    assert champion(fresh["client"]) == "1"
    assert records(fresh["dsn"])["decisions"][-1]["state"] == "pending"

    apply(fresh["dsn"], plan, None, airflow)

    assert_converged(fresh, plan, [("2", "promoted"), ("1", "rolled_back")])


def test_a_completed_promotion_run_again_records_nothing_new(fresh):
    from include.promotion.pipeline import apply

    plan, airflow = fresh["promote"], fresh["airflow"]
    first = apply(fresh["dsn"], plan, None, airflow)
    seen = records(fresh["dsn"])

    again = apply(fresh["dsn"], plan, None, airflow)

    assert again == first
    assert records(fresh["dsn"]) == seen
    assert_converged(fresh, plan, [("2", "promoted")])


def test_a_champion_moved_elsewhere_while_pending_abandons_the_record_and_refuses(fresh, monkeypatch):
    from include.promotion.pipeline import apply

    client, plan, airflow = fresh["client"], fresh["promote"], fresh["airflow"]
    inject(monkeypatch, "after the pending record committed")
    with pytest.raises(Crash):
        apply(fresh["dsn"], plan, None, airflow)
    monkeypatch.undo()
    client.delete_registered_model_alias(MODEL, names.CHAMPION_ALIAS)  # somebody took the champion down meanwhile

    result = apply(fresh["dsn"], plan, None, airflow)

    assert result["outcome"] == "refused" and "while this change to version 2 was pending" in result["reasons"][0]
    assert champion(client) is None
    seen = records(fresh["dsn"])
    assert [(d["outcome"], d["state"]) for d in seen["decisions"]] == [("promoted", "abandoned"),
                                                                       ("refused", "complete")]
    assert seen["deployment"] is None and seen["champions"] == []
    assert apply(fresh["dsn"], plan, None, airflow) == result  # the refusal is the plan's answer
    assert len(records(fresh["dsn"])["decisions"]) == 2


def test_a_champion_already_at_the_target_by_somebody_else_is_not_claimed(fresh):
    from include.promotion.pipeline import apply

    client, plan = fresh["client"], fresh["promote"]
    client.set_registered_model_alias(MODEL, names.CHAMPION_ALIAS, "2")  # by hand, no record

    result = apply(fresh["dsn"], plan, None, fresh["airflow"])

    assert result["outcome"] == "refused" and "not by this decision" in result["reasons"][0]
    assert champion(client) == "2"
    seen = records(fresh["dsn"])
    assert [(d["outcome"], d["state"]) for d in seen["decisions"]] == [("refused", "complete")]
    assert seen["deployment"] is None and seen["champions"] == []
    assert "promotion_status" not in client.get_model_version(MODEL, "2").tags


def test_a_decisions_table_from_before_the_pending_state_is_upgraded_in_place(fresh):
    from include.promotion import history

    with history.connect(fresh["dsn"], autocommit=True) as conn:
        conn.execute("ALTER TABLE ml.promotion_decisions DROP COLUMN state, DROP COLUMN plan_key")
        conn.execute("DROP INDEX ml.model_version_history_decision")
        conn.execute("INSERT INTO ml.promotion_decisions (model_name, version, action, outcome)"
                     " VALUES (%s, '1', 'promote', 'promoted')", (MODEL,))

    history.ensure_schema(fresh["dsn"])
    history.ensure_schema(fresh["dsn"])

    [old] = records(fresh["dsn"])["decisions"]
    assert (old["version"], old["outcome"], old["state"]) == ("1", "promoted", "complete")


@pytest.mark.parametrize("crash_point", ["after the alias moved", "before the alias moved"])
def test_a_pending_decision_never_retried_is_finished_before_the_next_decision(fresh, monkeypatch, crash_point):
    """apply's retries ran out (or the run was cleared from `decide`): the next decision of any plan first
    completes a move that happened, or abandons one that did not, so records, alias and Redis agree."""
    from include.promotion.pipeline import apply, decide_promotion

    plan = fresh["promote"]
    with monkeypatch.context() as faults:
        inject(faults, crash_point)
        with pytest.raises(Crash):
            apply(fresh["dsn"], plan, None, fresh["airflow"])
    assert [d["state"] for d in records(fresh["dsn"])["decisions"]] == ["pending"]

    again = decide_promotion(fresh["dsn"], plan["model_version"], None, require_approval=False, dry_run=False)

    if crash_point == "after the alias moved":
        assert again["outcome"] == "no_op"  # version 2 is the champion, and now the records say so too
        assert_converged(fresh, plan, [("2", "promoted")])
    else:
        assert [d["state"] for d in records(fresh["dsn"])["decisions"]] == ["abandoned"]
        assert champion(fresh["client"]) == "1" and records(fresh["dsn"])["deployment"] is None
        assert again["outcome"] == "promoted" and again["expected_champion"] == "1"
