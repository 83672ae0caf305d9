"""A small lifecycle's records, written into a real MLflow store (SQLite) and a real `ml` schema with the
phases' own functions wherever they do not need a trained model:

- dataset runs: the tags and metrics `include.dataset.tracking.log_dataset_version` logs (its METRICS,
  `airflow_tags`), written here without a published Parquet revision;
- training runs and versions: the tags `include.registration.registry.version_tags` and
  `registration_tags` build from a manifest, on versions created through MlflowClient;
- evaluations: a run with the tags and flattened metrics `include.evaluation.pipeline.evaluate` logs, and
  the version's `eval_*` tags set by the phase's own `tag_version` (through `headline_tags`);
- promotions: `include.promotion.pipeline.apply` / `record_outcome` / `decide_rollback` themselves (the
  alias, the promotion tags and the three `ml` tables).

Used by tests/plugins and bench/models_page.py. Nothing is trained or scored: the numbers are made up,
and each is recorded where the phase records it, so the page must show exactly these.
"""
from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

from include.core import names

MODEL = names.REGISTERED_MODEL_NAME
REASONS = ("unknown_recipe_id", "no_household_state", "invalid_meals")


def _experiment(client, name: str) -> str:
    from include.core.tracking import ensure_experiment

    return ensure_experiment(name)


def _log(client, run_id: str, tags: dict, metrics: dict) -> None:
    """Tags and metrics in one write (the phases log them through mlflow.set_tags / log_metrics)."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.set_terminated(run_id)


def drift_report(previous: dict | None, i: int) -> dict | None:
    """A drift report as include.drift.compare.compare_versions makes it (made-up PSI): week 3's workflow mix moved."""
    if previous is None:
        return None
    psi = {"household_size": 0.01 * i, "workflow_type": 0.4 if i == 3 else 0.02, "mode": 0.12 if i == 3 else 0.01}
    status = {k: "alert" if v >= 0.25 else "warn" if v >= 0.1 else "ok" for k, v in psi.items()}
    worst = "alert" if "alert" in status.values() else "warn" if "warn" in status.values() else "ok"
    return {"features": {k: {"psi": v, "status": status[k]} for k, v in psi.items()}, "status": worst,
            "max_psi": max(psi.values()), "over_threshold": [k for k, s in status.items() if s == "alert"],
            "warnings": [k for k, s in status.items() if s == "warn"],
            "previous": {"version": previous["version"], "revision": previous["revision"], "digest": previous["digest"]}}


def dataset_run(client, version: str, rows: int, quarantined_by_reason: dict[str, int], airflow: dict | None,
                drift: dict | None = None) -> dict:
    """`drift`: a report whose record `include.drift.tracking.log_drift` would log into the run (its `run_record`)."""
    from include.dataset.tracking import METRICS, airflow_tags
    from include.drift.tracking import run_record

    digest = hashlib.sha256(f"{version}-{rows}".encode()).hexdigest()
    revision = f"rev-{digest[:16]}"
    uri = f"/storage/datasets/planner/{version}"
    quarantined = sum(quarantined_by_reason.values())
    counts = {"rows": rows, "quarantined": quarantined, "duplicate_deliveries": 3, "duplicate_acceptances": 1,
              "generated_never_accepted": 40, "bad_share": quarantined / (rows + quarantined)}
    run = client.create_run(_experiment(client, names.EXPERIMENT_DATASET), run_name=f"dataset-{version}-{revision}")
    tags = {"dataset_version": version, "dataset_uri": uri, "dataset_digest": digest, "dataset_revision": revision,
            "dataset_revision_uri": f"{uri}/{revision}", **airflow_tags(airflow)}
    metrics = {name: float(counts[name]) for name in METRICS}
    metrics |= {f"quarantined_{reason}": float(n) for reason, n in quarantined_by_reason.items()}
    if drift is not None:
        drift_metrics, drift_tags = run_record(drift)
        metrics |= drift_metrics
        tags |= drift_tags
    _log(client, run.info.run_id, tags, metrics)
    return {"version": version, "uri": uri, "digest": digest, "revision": revision, "run_id": run.info.run_id,
            **counts, "quarantined_by_reason": dict(quarantined_by_reason), "drift": drift}


def register_version(client, base: Path, dataset: dict, training_run_id: str, val_auc: float,
                     training_airflow: dict | None, registration_airflow: dict | None) -> str:
    from include.registration.registry import registration_tags, version_tags

    run = client.create_run(_experiment(client, names.EXPERIMENT_TRAINING), run_name=training_run_id)
    client.set_tag(run.info.run_id, "training_run_id", training_run_id)
    client.set_terminated(run.info.run_id)
    manifest = {"training_run_id": training_run_id, "mlflow_run_id": run.info.run_id,
                "dataset_version": dataset["version"], "dataset_uri": dataset["uri"],
                "dataset_revision": dataset["revision"], "dataset_revision_uri": f"{dataset['uri']}/{dataset['revision']}",
                "dataset_digest": dataset["digest"], "training_cutoff": f"{dataset['version']}T00:00:00+00:00",
                "final_metrics": {"val_auc": val_auc, "val_loss": 0.6, "val_accuracy": 0.7, "baseline_val_auc": 0.6}}
    if training_airflow:
        manifest |= {"airflow_dag_id": training_airflow["dag_id"], "airflow_run_id": training_airflow["run_id"]}
    model_dir = base / "models" / MODEL / training_run_id
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        client.get_registered_model(MODEL)
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST
        client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=str(model_dir), run_id=run.info.run_id)
    tags = version_tags(manifest, hashlib.sha256(training_run_id.encode()).hexdigest(), model_dir)
    tags |= registration_tags(registration_airflow)
    for key, value in tags.items():
        client.set_model_version_tag(MODEL, version.version, key, value)
    return str(version.version)


def evaluate(client, version: str, baseline: str | None, window: str, figures: dict, airflow_run_id: str | None) -> dict:
    """An evaluation run as `evaluate` logs it (tags, flattened metrics), then the phase's `tag_version`."""
    from include.evaluation.pipeline import tag_version

    candidate = {"accuracy": 0.71, "precision": 0.7, "recall": 0.69, "f1": 0.695, "roc_auc": figures["roc_auc"],
                 "log_loss": figures["log_loss"], "brier": 0.2, "ece": 0.03, "plan_ranking": 0.6,
                 "latency_p95_ms": figures["latency_p95_ms"], "throughput_examples_per_s": 900.0}
    report = {"model_version": version, "baseline_version": baseline, "window": {"version": window},
              "counts": {"rows": 120, "examples": figures.get("examples", 700), "keep_rate": 0.55, "plans": 120},
              "models": {"candidate": candidate, "oracle": {"roc_auc": figures["oracle_roc_auc"]}},
              "comparison": {"auc_share_of_oracle": figures["roc_auc"] / figures["oracle_roc_auc"]}}
    run = client.create_run(_experiment(client, names.EXPERIMENT_OFFLINE_EVAL),
                            run_name=f"v{version}-vs-{baseline or 'none'}-{window}")
    report["evaluation_run_id"] = run.info.run_id
    tags = {"model_name": MODEL, "model_version": version, "baseline_version": baseline or "none",
            "replay_window": window, "replay_uri": f"/storage/replays/planner/{window}",
            "airflow_run_id": airflow_run_id or ""}
    flat = {f"{role}.{key}": value for role, values in report["models"].items()
            for key, value in values.items() if isinstance(value, (int, float)) and value is not None}
    flat |= {f"comparison.{k}": v for k, v in report["comparison"].items() if v is not None}
    flat |= {f"counts.{k}": v for k, v in report["counts"].items()}
    _log(client, run.info.run_id, tags, flat)
    tag_version(report)
    return report


def promotion_plan(version: str, champion: str | None, outcome: str, reasons: list[str], run_id: str) -> dict:
    return {"action": "promote", "model_version": version, "expected_champion": champion, "outcome": outcome,
            "decision": {"passed": outcome == "promoted", "reasons": reasons}, "metrics": {}, "policy": {},
            "evaluation_run_id": run_id}


def airflow_run(dag_id: str, day: str, hour: int) -> dict:
    return {"dag_id": dag_id, "run_id": f"asset_triggered__{day}T{hour:02d}:00:00+00:00"}


def figures_for(i: int) -> dict:
    """Made-up, distinct numbers per version i (1-based)."""
    return {"roc_auc": round(0.70 + 0.01 * (i % 7), 6), "log_loss": round(0.62 - 0.005 * (i % 5), 6),
            "latency_p95_ms": round(40.0 + 3 * (i % 4), 3), "oracle_roc_auc": 0.86, "examples": 600 + i}


def build(base: Path, dsn: str, versions: int = 4, promote_every: int = 1) -> dict:
    """Versions 1..n on weekly datasets. Default (n=4): v1 promoted, v2 promoted with approver alice
    (replacing v1), v3 rejected with reasons, then a rollback to v1 approved by bob; v4 registered but never
    evaluated. With more versions: each evaluated; every `promote_every`-th promoted, the others rejected.
    Returns what was written (the expected numbers)."""
    from include.promotion import history, pipeline
    from include.registration.registry import registry_client

    client = registry_client()
    history.ensure_schema(dsn)
    written = {"datasets": {}, "versions": {}, "champion": None}
    start = date(2026, 9, 7)
    champion = None
    for i in range(1, versions + 1):
        day = (start + timedelta(weeks=i)).isoformat()
        reasons = {REASONS[0]: i % 3 + 1, REASONS[1]: 2 * (i % 2)}
        if i % 2:
            reasons[REASONS[2]] = 1
        previous = written["datasets"][max(written["datasets"])] if written["datasets"] else None
        dataset = dataset_run(client, day, 1000 + 37 * i, reasons, airflow_run(names.DAG_DATASET, day, 6),
                              drift=drift_report(previous, i))
        written["datasets"][day] = dataset
        training_run_id = f"{MODEL}-v{day.replace('-', '')}_060500"
        number = register_version(client, base, dataset, training_run_id, round(0.7 + 0.002 * i, 6),
                                  airflow_run(names.DAG_TRAINING, day, 7), airflow_run(names.DAG_REGISTRATION, day, 8))
        entry = {"dataset": day, "training_run_id": training_run_id, "evaluated": False}
        written["versions"][number] = entry
        if versions == 4 and i == 4:
            continue  # registered, never evaluated
        report = evaluate(client, number, champion, f"{day}_{day}", figures_for(i),
                          airflow_run(names.DAG_OFFLINE_EVAL, day, 9)["run_id"])
        entry.update(evaluated=True, evaluation_run_id=report["evaluation_run_id"], **figures_for(i))
        promotion_airflow = airflow_run(names.DAG_PROMOTION, day, 10)
        promote = (i in (1, 2)) if versions == 4 else (i % promote_every == 1 or promote_every == 1)
        if promote:
            approver = "alice" if i == 2 else None
            result = pipeline.apply(dsn, promotion_plan(number, champion, "promoted", [], report["evaluation_run_id"]),
                                    approver, promotion_airflow)
            assert result["outcome"] == "promoted", result
            champion = number
            entry.update(outcome="promoted", reasons=[], approver=approver)
        else:
            why = [f"roc_auc_delta: {-0.01 * i:.2f} < -0.005 (candidate worse than champion {champion})"]
            pipeline.record_outcome(dsn, promotion_plan(number, champion, "rejected", why, report["evaluation_run_id"]),
                                    "rejected", why, None, promotion_airflow)
            entry.update(outcome="rejected", reasons=why, approver=None)
    if versions == 4:
        plan = pipeline.decide_rollback(dsn, None, require_approval=False, dry_run=False)
        assert plan["model_version"] == "1", plan
        result = pipeline.apply(dsn, plan, "bob", airflow_run(names.DAG_PROMOTION, "2026-10-10", 12))
        assert result["outcome"] == "rolled_back", result
        champion = "1"
    written["champion"] = champion
    return written
