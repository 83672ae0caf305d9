"""A reference consumer of the deployment record: what a serving team's process does per request.

    deployment = read_deployment(redis_url=os.environ.get("REDIS_URL"), dsn=EVENTS_DSN)
    ranker = Ranker()
    served = ranker.rank(deployment, household_id, plan_input, candidates)
    # served.meals: the candidates, best first, with keep_probability
    # served.context: {..., "policy_version_id", "arm", "experiment_id"}: log it on the plan's events

1. **Read** the deployment: the JSON at Redis key `planner:champion:planner_acceptance` (written by
   promotion and the online evaluation after every change), or, without Redis, the same record from
   the `ml` schema (`ml.model_deployments` and the running `ml.canaries` row). It names the champion
   (`version`, `model_uri`, `policy_version_id`) and, while a canary runs, `canary` (`version`,
   `model_uri`, `policy_version_id`, `share`, `experiment_id`, `started_at`).
2. **Route** the household: `include.serving.assignment.in_canary(household_id, experiment_id, share)`
   (deterministic: no arm table), else the champion.
3. **Load** the arm's model by its `models:/planner_acceptance/<N>` URI (cached per URI) and **rank**
   the candidate recipes of a plan by their keep probability.
4. **Log** the served plan's events with `context.policy_version_id` of the arm: that is how
   `planner_online_eval` tells the arms apart.

Imports beyond the standard library (redis, psycopg, mlflow, pandas) happen on first use.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from include.serving.assignment import in_canary

MODEL = "planner_acceptance"
REDIS_KEY = f"planner:champion:{MODEL}"


@dataclass(frozen=True)
class Arm:
    name: str               # champion | canary
    version: str
    model_uri: str
    policy_version_id: str
    experiment_id: str | None = None


@dataclass(frozen=True)
class Served:
    arm: Arm
    meals: list[dict]       # the candidates, best first: {day, recipe_id, servings, keep_probability}
    context: dict = field(default_factory=dict)


def from_redis(url: str, key: str = REDIS_KEY) -> dict | None:
    import redis

    raw = redis.Redis.from_url(url, socket_timeout=5).get(key)
    return json.loads(raw) if raw else None


def from_database(dsn: str) -> dict | None:
    from include.promotion import history

    with history.connect(dsn) as conn:
        record = history.deployment(conn, MODEL)
    return {"model_name": MODEL, **record} if record else None


def read_deployment(redis_url: str | None = None, dsn: str | None = None) -> dict:
    """The deployment from Redis (the fast copy) when it answers and holds one, else from the `ml` schema."""
    record = None
    if redis_url:
        try:
            record = from_redis(redis_url)
        except Exception:  # noqa: BLE001 - Redis down: the database holds the same record
            record = None
    if record is None and dsn:
        record = from_database(dsn)
    if record is None:
        raise LookupError(f"no deployment of {MODEL} recorded (no champion yet)")
    return record


def route(deployment: dict, household_id: str) -> Arm:
    """The arm that serves this household under this deployment."""
    canary = deployment.get("canary")
    if canary and in_canary(str(household_id), canary["experiment_id"], float(canary["share"])):
        return Arm("canary", str(canary["version"]), canary["model_uri"], canary["policy_version_id"],
                   canary["experiment_id"])
    return Arm("champion", str(deployment["version"]), deployment["model_uri"], deployment["policy_version_id"],
               canary["experiment_id"] if canary else None)


class Ranker:
    """Ranks a plan's candidate recipes with the model of the household's arm (models cached per URI)."""

    def __init__(self, load=None):
        self._load = load
        self._models: dict[str, object] = {}

    def model(self, uri: str):
        if uri not in self._models:
            if self._load is None:
                from include.core.tracking import load_registered_model

                # refused (ProjectCodeModel) when the version would read this deployment's feature code
                self._models[uri] = load_registered_model(uri)
            else:
                self._models[uri] = self._load(uri)
        return self._models[uri]

    def rank(self, deployment: dict, household_id: str, plan_input: dict, candidates: list[dict],
             plan_id: str | None = None) -> Served:
        """`plan_input`: the plan's context as in a dataset row's `input` (household, pantry, constraints,
        workflow_type, mode, previous_plan); `candidates`: meals `{day, recipe_id, servings}` to rank."""
        import pandas as pd

        arm = route(deployment, household_id)
        row_input = {**plan_input, "proposed_plan": {"meals": list(candidates)}}
        rows = pd.DataFrame({"plan_id": [plan_id or str(uuid.uuid4())], "input": [json.dumps(row_input)]})
        scores = self.model(arm.model_uri).predict(rows)
        probabilities = [float(p) for p in scores["keep_probability"]]
        meals = [{**meal, "keep_probability": p} for meal, p in zip(candidates, probabilities)]
        meals.sort(key=lambda meal: -meal["keep_probability"])
        context = {"workflow_type": plan_input.get("workflow_type"), "mode": plan_input.get("mode"),
                   "policy_version_id": arm.policy_version_id, "arm": arm.name,
                   "experiment_id": arm.experiment_id}
        return Served(arm, meals, context)

    def rank_many(self, deployment: dict, requests: list[dict], batch_plans: int = 512) -> list[Served]:
        """`rank` for many plans at once (a simulated week, a batch job): each request is
        `{household_id, plan_input, candidates, plan_id?}`. Each household is routed as `rank` routes it;
        then each arm's model scores its plans `batch_plans` at a time (one `predict` per batch, which the
        registered model batches further by length). Returns one `Served` per request, in request order."""
        import pandas as pd

        if batch_plans < 1:
            raise ValueError(f"batch_plans must be >= 1, got {batch_plans}")
        arms = [route(deployment, request["household_id"]) for request in requests]
        by_uri: dict[str, list[int]] = {}
        for position, arm in enumerate(arms):
            by_uri.setdefault(arm.model_uri, []).append(position)
        served: list[Served | None] = [None] * len(requests)
        for uri, positions in by_uri.items():
            model = self.model(uri)
            for start in range(0, len(positions), batch_plans):
                chunk = positions[start:start + batch_plans]
                plan_ids = [str(requests[i].get("plan_id") or uuid.uuid4()) for i in chunk]
                inputs = [json.dumps({**requests[i]["plan_input"], "proposed_plan": {"meals": list(requests[i]["candidates"])}})
                          for i in chunk]
                scores = model.predict(pd.DataFrame({"plan_id": plan_ids, "input": inputs}))
                probabilities = [float(p) for p in scores["keep_probability"]]  # row order, then meal order
                expected = sum(len(requests[i]["candidates"]) for i in chunk)
                if len(probabilities) != expected:
                    raise ValueError(f"the model of {uri} returned {len(probabilities)} scores for {expected} candidates")
                offset = 0
                for i in chunk:
                    request, arm = requests[i], arms[i]
                    candidates = list(request["candidates"])
                    meals = [{**meal, "keep_probability": p}
                             for meal, p in zip(candidates, probabilities[offset:offset + len(candidates)])]
                    offset += len(candidates)
                    meals.sort(key=lambda meal: -meal["keep_probability"])
                    plan_input = request["plan_input"]
                    context = {"workflow_type": plan_input.get("workflow_type"), "mode": plan_input.get("mode"),
                               "policy_version_id": arm.policy_version_id, "arm": arm.name,
                               "experiment_id": arm.experiment_id}
                    served[i] = Served(arm, meals, context)
        return served
