"""A small world for the canary: tiny loadable model versions in a real MLflow registry, a champion recorded
by the promotion's own `apply`, a canary started by it, and per-arm logged events in the real events
database (households routed by `in_canary`, each plan's `context.policy_version_id` the arm's), built into
rows by the dataset code. No model is trained: the events are planted, the arms' keep rates chosen."""
from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta

import mlflow.pyfunc

from include.core import names
from include.serving.assignment import in_canary
from tests.dataset.world import World, new_id

MODEL = names.REGISTERED_MODEL_NAME
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # the canary's start in these tests (a Monday morning)
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class KeepScorer(mlflow.pyfunc.PythonModel):
    """A stand-in for the registered model, same signature: one keep probability per proposed meal,
    from a hash of the recipe id (`flip` reverses the order)."""

    def __init__(self, flip: bool = False):
        self.flip = flip

    def predict(self, context, model_input, params=None):
        import pandas as pd

        out = {"plan_id": [], "meal_index": [], "day": [], "recipe_id": [], "recipe_known": [], "keep_probability": []}
        for plan_id, row_input in zip(model_input["plan_id"], model_input["input"]):
            meals = json.loads(row_input)["proposed_plan"]["meals"]
            for index, meal in enumerate(meals):
                score = int(hashlib.sha256(str(meal["recipe_id"]).encode()).hexdigest()[:4], 16) / 65535
                out["plan_id"].append(plan_id)
                out["meal_index"].append(index)
                out["day"].append(meal.get("day"))
                out["recipe_id"].append(meal["recipe_id"])
                out["recipe_known"].append(True)
                out["keep_probability"].append(1.0 - score if self.flip else score)
        return pd.DataFrame(out)


def register_versions(count: int) -> list[str]:
    """`count` loadable versions of the model (odd versions score one way, even ones the other)."""
    import mlflow

    from include.core.tracking import ensure_experiment

    experiment_id = ensure_experiment("canary_test_models")
    versions = []
    for i in range(count):
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=KeepScorer(flip=bool(i % 2)),
                                           pip_requirements=[], registered_model_name=MODEL)
        versions.append(str(info.registered_model_version))
    return versions


def reset(dsn: str, client) -> None:
    """An empty `ml` schema and no champion alias: nothing promoted yet."""
    from mlflow.exceptions import MlflowException

    from include.promotion import history

    with history.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS ml CASCADE")
    history.ensure_schema(dsn)
    try:
        client.delete_registered_model_alias(MODEL, names.CHAMPION_ALIAS)
    except MlflowException:
        pass


def promote_directly(dsn: str, version: str, expected: str | None, run_id: str) -> dict:
    """The champion as promotion records it (`pipeline.apply` of a direct promotion)."""
    from include.promotion.pipeline import apply

    plan = {"action": "promote", "model_version": version, "expected_champion": expected, "outcome": "promoted",
            "next": "apply", "decision": {"passed": True, "reasons": [], "checks": []}, "metrics": {}, "policy": {},
            "evaluation_run_id": None}
    result = apply(dsn, plan, None, {"dag_id": "planner_promotion", "run_id": run_id})
    assert result["outcome"] == "promoted", result
    return result


def start_canary(dsn: str, version: str, champion: str, run_id: str, started_at: datetime = START) -> dict:
    """A canary of `version` against `champion`, started by promotion's `apply` (policy from policy.json
    and its environment overrides), as if it had started at `started_at`."""
    from include.promotion import history
    from include.promotion.gate import load_policy
    from include.promotion.pipeline import _canary_outcome, apply

    outcome, _, spec, why = _canary_outcome(dsn, load_policy(), version, champion, "apply")
    assert outcome == "canary_started", why
    plan = {"action": "promote", "model_version": version, "expected_champion": champion, "outcome": outcome,
            "next": "apply", "decision": {"passed": True, "reasons": [why], "checks": []}, "metrics": {},
            "policy": {}, "evaluation_run_id": None, "rollout": "canary",
            "canary": {**spec, "started_at": started_at}}
    result = apply(dsn, plan, None, {"dag_id": "planner_promotion", "run_id": run_id})
    assert result["outcome"] == "canary_started", result
    with history.connect(dsn) as conn:
        return history.canary(conn, result["canary_id"])


class ArmEvents(World):
    """World over one connection (hundreds of rows), writing plans served by the canary's two arms."""

    def __init__(self, dsn: str):
        from include.events.db import connect

        self._conn = connect(dsn, autocommit=True)
        super().__init__(dsn)

    def _exec(self, sql: str, params: tuple) -> None:
        self._conn.execute(sql, params)

    def close(self) -> None:
        self._conn.close()

    def serve(self, canary: dict, keep: dict[str, float], households: int = 150, weeks: int = 2,
              meals: int = 4, seed: int = 0, start: datetime = START) -> dict[str, int]:
        """Each household gets one plan a week from its arm; each proposed meal is kept with the arm's
        probability `keep[arm]` (else swapped for another recipe). Returns households per arm."""
        rng = random.Random(seed)
        per_arm = {"champion": 0, "canary": 0}
        proposed_recipes, swaps = self.recipes[:meals], self.recipes[meals:]
        for h in range(households):
            hid = self.household(start - timedelta(days=30))
            arm = "canary" if in_canary(hid, canary["experiment_id"], canary["share"]) else "champion"
            per_arm[arm] += 1
            context = {"workflow_type": "plan-first", "mode": "autopilot",
                       "policy_version_id": canary[f"{arm}_policy_version_id"]}
            for week in range(weeks):
                at = start + timedelta(days=7 * week, hours=1 + h % 20, minutes=h % 60)
                plan_id = new_id()
                accepted = [r if rng.random() < keep[arm] else rng.choice(swaps) for r in proposed_recipes]
                self.generated(plan_id, hid, at, proposed_recipes, context=context)
                self.accepted(plan_id, hid, at + timedelta(hours=2), accepted, context=context)
        return per_arm


def truncate_source(dsn: str) -> None:
    from include.events.db import connect
    from include.events.generate import SOURCE_TABLES

    with connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(SOURCE_TABLES))
