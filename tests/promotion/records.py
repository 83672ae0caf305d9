"""What the promotion tests read back: the champion alias, the `ml` schema's records, Redis."""
from __future__ import annotations

import json

from include.core import names

MODEL = names.REGISTERED_MODEL_NAME


def champion(client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL, names.CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def records(dsn: str) -> dict:
    from include.promotion import history

    with history.connect(dsn) as conn:
        return {"decisions": history.decisions(conn, MODEL), "deployment": history.deployment(conn, MODEL),
                "champions": history.champions(conn, MODEL)}


def redis_answers(redis_url: str) -> bool:
    """Whether a Redis answers at `redis_url` (the Redis parts of the tests are skipped where none does)."""
    import redis

    try:
        return bool(redis.Redis.from_url(redis_url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_champion(redis_url: str) -> dict | None:
    import redis

    from include.promotion.pipeline import REDIS_KEY

    raw = redis.Redis.from_url(redis_url).get(REDIS_KEY)
    return json.loads(raw) if raw else None
