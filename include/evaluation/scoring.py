"""Score the replay rows: the registered models through their MLflow URIs, a keep-rate floor
and, where the generator's truth table exists, the oracle ceiling.

Every scorer returns one probability per proposed meal in the order of `examples(rows)`, so
all of them are compared on identical examples.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from include.core import names
from include.core.features import kept_flags, proposed_meals
from include.evaluation.replay import EvaluationError

log = logging.getLogger(__name__)

LATENCY_REQUESTS = 100    # single-plan requests timed per model (after one warm-up request)
BASELINE_SMOOTHING = 5.0  # pseudo-examples pulling a rare recipe's keep rate toward the global rate


@dataclass(frozen=True)
class ModelRef:
    version: str
    uri: str
    tags: dict
    aliases: tuple[str, ...]


def resolve_version(client, reference: str | int | None) -> ModelRef | None:
    """A version number or an alias of the registered model -> the version; None for a missing alias.

    A version number that does not exist is an error (somebody asked for it by name).
    """
    from mlflow.exceptions import MlflowException

    reference = str(reference).strip() if reference not in (None, "") else None
    if reference is None:
        return None
    try:
        if reference.isdigit():
            version = client.get_model_version(names.REGISTERED_MODEL_NAME, reference)
        else:
            version = client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, reference)
    except MlflowException as exc:
        if reference.isdigit():
            raise EvaluationError(f"{names.REGISTERED_MODEL_NAME} has no version {reference}") from exc
        return None
    return ModelRef(version=str(version.version), uri=f"models:/{names.REGISTERED_MODEL_NAME}/{version.version}",
                    tags=dict(version.tags), aliases=tuple(version.aliases or ()))


def load_model(ref: ModelRef, dst_path: str | None = None):
    """The version's pyfunc model; `dst_path`: where its artifacts are downloaded (the caller's scratch,
    removed after scoring; by default MLflow keeps them in a temporary directory of its own for good).
    A version that would score with this deployment's feature code instead of its own is refused."""
    from include.core.tracking import ProjectCodeModel, load_registered_model

    try:
        return load_registered_model(ref.uri, dst_path=dst_path)
    except ProjectCodeModel as exc:
        raise EvaluationError(f"version {ref.version}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to load is the same outcome for the user
        raise EvaluationError(f"version {ref.version} ({ref.uri}) will not load: {type(exc).__name__}: {exc}") from exc


def examples(rows) -> dict:
    """Per proposed meal: plan_id, recipe_id, label and the row's slice values (column lists)."""
    out = {k: [] for k in ("plan_id", "recipe_id", "label", "row")}
    for position, (plan_id, row_input, target) in enumerate(zip(rows["plan_id"], rows["input"], rows["target"])):
        _, meals = proposed_meals(row_input)
        for meal, label in zip(meals, kept_flags(meals, target)):
            out["plan_id"].append(plan_id)
            out["recipe_id"].append(str(meal["recipe_id"]).lower())
            out["label"].append(label)
            out["row"].append(position)
    return out


def score_model(model, rows, batch_size: int = 256) -> tuple[list[float], float]:
    """(keep probabilities in example order, examples per second of the batch call)."""
    started = time.perf_counter()
    frame = model.predict(rows[["plan_id", "input"]], params={"batch_size": batch_size})
    seconds = time.perf_counter() - started
    return frame["keep_probability"].astype(float).tolist(), len(frame) / seconds if seconds else float("inf")


def single_plan_latencies(model, rows, requests: int = LATENCY_REQUESTS) -> list[float]:
    """Seconds per single-plan request (one row in, its meals scored), as the serving side calls it."""
    sample = rows[["plan_id", "input"]].head(requests + 1)
    seconds = []
    for index in range(len(sample)):
        one = sample.iloc[index:index + 1]
        started = time.perf_counter()
        model.predict(one)
        seconds.append(time.perf_counter() - started)
    return seconds[1:] if len(seconds) > 1 else seconds  # the first request warms caches


def keep_rate_scores(training_dataset_uri: str, cutoff, recipe_ids: list[str]) -> list[float]:
    """The floor: each recipe's keep rate in the model's training rows (smoothed toward the overall rate)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from include.core import storage
    from include.evaluation.replay import exact_content

    fs, path = exact_content(training_dataset_uri)
    table = pq.read_table(storage.join(path, names.DATASET_TRAINING_FILE), columns=["accepted_at", "input", "target"],
                          filesystem=fs)
    table = table.filter(pc.less(table["accepted_at"], cutoff))
    kept: dict[str, int] = {}
    seen: dict[str, int] = {}
    for row_input, target in zip(table["input"].to_pylist(), table["target"].to_pylist()):
        _, meals = proposed_meals(row_input)
        for meal, label in zip(meals, kept_flags(meals, target)):
            recipe = str(meal["recipe_id"]).lower()
            seen[recipe] = seen.get(recipe, 0) + 1
            kept[recipe] = kept.get(recipe, 0) + label
    total = sum(seen.values())
    overall = sum(kept.values()) / total if total else 0.5
    return [(kept.get(r, 0) + BASELINE_SMOOTHING * overall) / (seen.get(r, 0) + BASELINE_SMOOTHING) for r in recipe_ids]


def oracle_scores(dsn: str, plan_ids: list[str], recipe_ids: list[str]) -> list[float] | None:
    """The generator's true keep probabilities (`sim.keep_truth`), or None where the table does not exist
    (a real deployment) or does not cover every replayed meal."""
    import psycopg

    from include.dataset.build import libpq_uri

    with psycopg.connect(libpq_uri(dsn)) as conn:
        exists = conn.execute("SELECT to_regclass('sim.keep_truth') IS NOT NULL").fetchone()[0]
        if not exists:
            return None
        wanted = sorted(set(plan_ids))
        truth = {}
        for start in range(0, len(wanted), 5000):
            chunk = wanted[start:start + 5000]
            for plan_id, recipe_id, p_keep in conn.execute(
                    "SELECT plan_id::text, recipe_id::text, p_keep FROM sim.keep_truth WHERE plan_id = ANY(%s::uuid[])",
                    (chunk,)):
                truth[(plan_id, recipe_id.lower())] = float(p_keep)
    scores = [truth.get((p, r)) for p, r in zip(plan_ids, recipe_ids)]
    if any(s is None for s in scores):
        log.info("sim.keep_truth does not cover every replayed meal: no oracle")
        return None
    return scores
