"""`make lifecycle`: the model lifecycle on the embedded default (no Docker, no cluster).

Find PostgreSQL (or start the embedded one), generate weeks of product events, then run every
phase as a real Airflow DAG run (`airflow dags test`): `planner_dataset`, `planner_training`
(local backend), `planner_registration`, `planner_offline_eval` and `planner_promotion`, and
show what each produced: the dataset summary, the validation metrics, the registered version,
the offline evaluation against the champion and the promotion decision with its reasons.
Safe to re-run: the data is regenerated from its seed, the dataset version is rewritten
identically, and each run trains (and keeps) a model of its own, which is then evaluated
against the champion the previous run promoted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from include.core import names, storage
from include.core.config import PROJECT_ROOT, settings
from include.core.local_postgres import ensure_database
from include.events import generate
from scripts.airflow_env import airflow_env

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _run_logged(cmd: list[str], env: dict, log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT).returncode


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _complete_models() -> set[str]:
    root = Path(storage.models_root())
    return {p.name for p in root.iterdir() if storage.is_complete(str(p))} if root.is_dir() else set()


def _registered_version(training_run_id: str) -> str | None:
    from include.registration.registry import registry_client, versions_of

    versions = versions_of(registry_client(), training_run_id)
    return str(versions[0].version) if versions else None


def _version_tags(version: str) -> dict:
    from include.registration.registry import registry_client

    return dict(registry_client().get_model_version(names.REGISTERED_MODEL_NAME, version).tags)


def _champion() -> str | None:
    from mlflow.exceptions import MlflowException

    from include.registration.registry import registry_client

    try:
        return str(registry_client().get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def _last_decision(dsn: str) -> dict:
    from include.promotion import history

    with history.connect(dsn) as conn:
        return history.decisions(conn, names.REGISTERED_MODEL_NAME)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make lifecycle", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    logs = PROJECT_ROOT / "var" / "logs"

    _step("PostgreSQL")
    dsn = ensure_database(settings().events_dsn)
    print(f"    events database: {dsn}")

    end = generate.last_monday()
    _step(f"generating {args.weeks} weeks of events for {args.households:,} households (seed {args.seed}, "
          f"ending {end.date()})")
    counts = generate.generate_and_load(dsn, args.households, args.weeks, args.seed, end, dirty_share=0.02, reset=True)
    print(f"    {counts['exp.events']:,} events loaded")

    env = airflow_env(dsn)
    _step("Airflow metadata database (airflow db migrate)")
    if _run_logged([AIRFLOW, "db", "migrate"], env, logs / "airflow-db-migrate.log"):
        print(_tail(logs / "airflow-db-migrate.log"), file=sys.stderr)
        return 1

    version = end.date().isoformat()
    _step(f"running DAG {names.DAG_DATASET} for version {version} (airflow dags test)")
    log_path = logs / f"{names.DAG_DATASET}.log"
    conf = json.dumps({"end_date": version})
    if _run_logged([AIRFLOW, "dags", "test", names.DAG_DATASET, "-c", conf], env, log_path):
        print(f"\nFAILED: DAG {names.DAG_DATASET}; last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr)
        return 1
    uri = storage.dataset_uri(version)
    if not storage.is_complete(uri):
        print(f"\nFAILED: {uri} has no {names.SUCCESS_MARKER}; see {log_path}", file=sys.stderr)
        return 1

    _step(f"dataset published at {uri}")
    print((storage.local_path(uri) / names.DATASET_SUMMARY_FILE).read_text())

    _step(f"running DAG {names.DAG_TRAINING} on dataset {version} (local backend, {args.epochs} epochs)")
    log_path = logs / f"{names.DAG_TRAINING}.log"
    models_before = _complete_models()
    conf = json.dumps({"dataset_version": version, "backend": "local", "epochs": args.epochs})
    if _run_logged([AIRFLOW, "dags", "test", names.DAG_TRAINING, "-c", conf], env, log_path):
        print(f"\nFAILED: DAG {names.DAG_TRAINING}; last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr)
        return 1
    new_models = sorted(_complete_models() - models_before)
    if not new_models:
        print(f"\nFAILED: {names.DAG_TRAINING} published no complete model; see {log_path}", file=sys.stderr)
        return 1
    manifest = json.loads((Path(storage.models_root()) / new_models[-1] / names.MODEL_MANIFEST_FILE).read_text())
    metrics = manifest["final_metrics"]
    _step(f"model {manifest['training_run_id']} published at {storage.models_root()}/{new_models[-1]}")
    print(f"    validation AUC {metrics['val_auc']:.3f} (keep-rate baseline {metrics['baseline_val_auc']:.3f}), "
          f"accuracy {metrics['val_accuracy']:.3f}, trained on rows accepted before {manifest['training_cutoff']}")
    print(f"    MLflow run {manifest['mlflow_run_id']} (experiment {names.EXPERIMENT_TRAINING})")

    model_path = f"{storage.models_root()}/{new_models[-1]}"
    _step(f"running DAG {names.DAG_REGISTRATION} for {new_models[-1]}")
    log_path = logs / f"{names.DAG_REGISTRATION}.log"
    if _run_logged([AIRFLOW, "dags", "test", names.DAG_REGISTRATION, "-c", json.dumps({"model_path": model_path})],
                   env, log_path):
        print(f"\nFAILED: DAG {names.DAG_REGISTRATION}; last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr)
        return 1
    version = _registered_version(manifest["training_run_id"])
    if version is None:
        print(f"\nFAILED: {names.DAG_REGISTRATION} registered nothing; see {log_path}", file=sys.stderr)
        return 1
    _step(f"registered {names.REGISTERED_MODEL_NAME} version {version} (alias {names.CHALLENGER_ALIAS}): "
          f"mlflow.pyfunc.load_model('models:/{names.REGISTERED_MODEL_NAME}@{names.CHALLENGER_ALIAS}')")

    _step(f"running DAG {names.DAG_OFFLINE_EVAL} for version {version} against the {names.CHAMPION_ALIAS}")
    log_path = logs / f"{names.DAG_OFFLINE_EVAL}.log"
    if _run_logged([AIRFLOW, "dags", "test", names.DAG_OFFLINE_EVAL, "-c", json.dumps({"model_version": version})],
                   env, log_path):
        print(f"\nFAILED: DAG {names.DAG_OFFLINE_EVAL}; last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr)
        return 1
    tags = _version_tags(version)
    print(f"    replay window {tags['eval_replay_window']} ({tags['eval_examples']} proposed meals), baseline "
          f"version {tags['eval_baseline_version']}: ROC AUC {float(tags['eval_roc_auc']):.3f}, accuracy "
          f"{float(tags['eval_accuracy']):.3f}, log loss {float(tags['eval_log_loss']):.3f}, "
          f"p95 {float(tags['eval_latency_p95_ms']):.1f} ms per plan")
    print(f"    report, plots: MLflow run {tags['evaluation_run_id']} (experiment {names.EXPERIMENT_OFFLINE_EVAL})")

    _step(f"running DAG {names.DAG_PROMOTION} for version {version}")
    log_path = logs / f"{names.DAG_PROMOTION}.log"
    if _run_logged([AIRFLOW, "dags", "test", names.DAG_PROMOTION, "-c", json.dumps({"model_version": version})],
                   env, log_path):
        print(f"\nFAILED: DAG {names.DAG_PROMOTION}; last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr)
        return 1
    decision = _last_decision(dsn)
    _step(f"promotion: {decision['outcome']} (champion now: version {_champion() or 'none'})")
    for reason in decision["reasons"] or ["every check of include/promotion/policy.json passed"]:
        print(f"    - {reason}")
    print("    history: SELECT * FROM ml.promotion_decisions ORDER BY decision_id;")

    print(f"\nMLflow UI: .venv/bin/mlflow ui --backend-store-uri {settings().mlflow_tracking_uri}")
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
