"""`make lifecycle`: the model lifecycle on the embedded default (no Docker, no cluster).

Find PostgreSQL (or start the embedded one), generate weeks of product events, start the
Airflow services on loopback (api-server, scheduler, dag-processor, triggerer; LocalExecutor),
trigger `planner_dataset` through the REST API and let the Assets chain `planner_training`
(local backend), `planner_registration`, `planner_offline_eval` and `planner_promotion`,
showing which DAG and task runs. Then print what the chain produced: dataset rows and
quarantine, validation AUC, the registered version, its evaluation against the champion and
the promotion decision with its reasons. Then simulate the next week (one more week of events)
and run the chain again: the second model is gated against the first champion (the events of
that week are generated up front with the rest, so the past stays as it was).
Safe to re-run: the data is regenerated from its seed, dataset versions are rewritten
identically, and each run trains (and keeps) models of its own.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

from include.core import names, storage
from include.core.config import PROJECT_ROOT, settings
from include.core.local_postgres import ensure_database
from include.events import generate
from scripts.airflow_env import airflow_env


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


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


SERVICES_HOME = PROJECT_ROOT / "var" / "airflow-services"
CHAIN = (names.DAG_DATASET, names.DAG_TRAINING, names.DAG_REGISTRATION, names.DAG_OFFLINE_EVAL, names.DAG_PROMOTION)
RUN_TIMEOUT_S = 20 * 60


class ChainFailed(RuntimeError):
    pass


def services_env(dsn: str) -> dict:
    env = airflow_env(dsn, home=str(SERVICES_HOME))
    env["PLANNER_DATASET_SCHEDULE"] = "none"  # this script triggers the dataset; no cron run on unpause
    return env


def _runs(services, dag_id: str) -> list[dict]:
    return services.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]


def _log_tail(services, dag_id: str, run_id: str, task: dict, lines: int = 30) -> str:
    try:
        body = services.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task['task_id']}"
                                       f"/logs/{max(task.get('try_number') or 1, 1)}?full_content=true")
        events = [str(e.get("event", "")) for e in body.get("content", []) if isinstance(e, dict)]
        return "\n".join(events[-lines:])
    except Exception as exc:  # noqa: BLE001 - the log is a courtesy; the failure itself is reported anyway
        return f"(log not available: {exc})"


def _follow(services, dag_id: str, seen: set[str], started: float) -> str:
    """Wait for the new run of `dag_id` (one not in `seen`) to finish, printing which task runs."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run_id, shown = None, None
    while time.monotonic() < deadline:
        if run_id is None:
            fresh = [r for r in _runs(services, dag_id) if r["dag_run_id"] not in seen]
            if fresh:
                run_id = fresh[0]["dag_run_id"]
                seen.add(run_id)
                print(f"    {time.perf_counter() - started:5.0f}s  {dag_id}: run {run_id}", flush=True)
            else:
                time.sleep(2)
                continue
        state = services.run_state(dag_id, run_id)
        tis = services.task_instances(dag_id, run_id)
        running = sorted(t for t, ti in tis.items() if ti["state"] in ("running", "queued", "up_for_reschedule",
                                                                       "up_for_retry", "awaiting_input"))
        if running and running != shown:
            print(f"    {time.perf_counter() - started:5.0f}s  {dag_id}: {', '.join(running)}", flush=True)
            shown = running
        if state in ("success", "failed"):
            if state == "failed":
                failed = [ti for ti in tis.values() if ti["state"] == "failed"] or list(tis.values())
                raise ChainFailed(f"DAG {dag_id} run {run_id} failed at task {failed[0]['task_id']}; last log lines:\n"
                                  + _log_tail(services, dag_id, run_id, failed[0]))
            return run_id
        time.sleep(3)
    raise ChainFailed(f"DAG {dag_id} did not finish within {RUN_TIMEOUT_S // 60} min (run {run_id or 'never started'})")


def run_chain(services, version: str, started: float) -> None:
    """Trigger the dataset by REST; the Assets start training, registration, evaluation, promotion."""
    seen = {dag_id: {r["dag_run_id"] for r in _runs(services, dag_id)} for dag_id in CHAIN}
    run_id = services.trigger(names.DAG_DATASET, {"end_date": version})
    seen[names.DAG_DATASET].discard(run_id)
    for dag_id in CHAIN:
        _follow(services, dag_id, seen[dag_id], started)


def report_week(dsn: str, version: str) -> None:
    """What the chain produced for the dataset version: rows, model, version, evaluation, decision."""
    counts = json.loads((storage.local_path(storage.dataset_uri(version)) / names.DATASET_COUNTS_FILE).read_text())
    print(f"    dataset {version}: {counts['rows']:,} rows, {counts['quarantined']:,} events quarantined "
          f"(bad share {100 * counts['bad_share']:.2f}%)")
    newest = sorted(_complete_models())[-1]
    manifest = json.loads((Path(storage.models_root()) / newest / names.MODEL_MANIFEST_FILE).read_text())
    metrics = manifest["final_metrics"]
    print(f"    model {manifest['training_run_id']}: validation AUC {metrics['val_auc']:.3f} "
          f"(keep-rate baseline {metrics['baseline_val_auc']:.3f})")
    version_number = _registered_version(manifest["training_run_id"])
    tags = _version_tags(version_number)
    print(f"    registered version {version_number}; offline evaluation on {tags['eval_replay_window']} "
          f"({tags['eval_examples']} proposed meals) against baseline version {tags['eval_baseline_version']}: "
          f"ROC AUC {float(tags['eval_roc_auc']):.3f}, accuracy {float(tags['eval_accuracy']):.3f}, "
          f"log loss {float(tags['eval_log_loss']):.3f}, p95 {float(tags['eval_latency_p95_ms']):.1f} ms per plan")
    decision = _last_decision(dsn)
    print(f"    promotion of version {decision['version']}: {decision['outcome']} "
          f"(champion now: version {_champion() or 'none'})")
    for reason in decision["reasons"] or ["every check of include/promotion/policy.json passed"]:
        print(f"      - {reason}")


def main(argv: list[str] | None = None) -> int:
    from scripts.airflow_services import AirflowServices, free_port

    parser = argparse.ArgumentParser(prog="make lifecycle", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    _step("PostgreSQL")
    dsn = ensure_database(settings().events_dsn)
    print(f"    events database: {dsn}")
    end = generate.last_monday()
    # One more week than the first chain reads: the second chain plays "next Monday". Generating the
    # weeks together keeps the past as it was (regenerating would reshuffle old plans into new weeks,
    # which the evaluation's leakage check rightly refuses).
    _step(f"generating {args.weeks} weeks of events for {args.households:,} households up to {end.date()}, and "
          f"the week after (seed {args.seed})")
    counts = generate.generate_and_load(dsn, args.households, args.weeks + 1, args.seed, end + timedelta(days=7),
                                        dirty_share=0.02, reset=True)
    print(f"    {counts['exp.events']:,} events loaded")

    _step(f"starting Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) in {SERVICES_HOME}")
    services = AirflowServices(SERVICES_HOME, services_env(dsn), port=free_port())
    try:
        services.start()
        for dag_id in CHAIN:
            services.unpause(dag_id)
        print(f"    up at {services.url} after {time.perf_counter() - started:.0f}s")
        weeks = [end, end + timedelta(days=7)]
        for week, week_end in enumerate(weeks, start=1):
            version = week_end.date().isoformat()
            if week == 2:
                _step(f"a week later: the dataset of {version} takes in the week's new events; the new model is "
                      "gated against the champion of week 1")
            _step(f"week {week}: POST /api/v2/dags/{names.DAG_DATASET}/dagRuns (end_date {version}); the Assets "
                  "chain training, registration, offline evaluation and promotion")
            run_chain(services, version, started)
            report_week(dsn, version)
    except ChainFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        services.stop()

    print("\nAirflow UI (these runs, their logs and the Asset graph): make airflow, then http://127.0.0.1:8080 "
          "(admin / admin)")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {settings().mlflow_tracking_uri}")
    print("Promotion history: SELECT * FROM ml.promotion_decisions ORDER BY decision_id;")
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
