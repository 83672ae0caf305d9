"""`make lifecycle`: the model lifecycle on the embedded default (no Docker, no cluster).

Find PostgreSQL (or start the embedded one), generate weeks of product events, start the
Airflow services on loopback (api-server, scheduler, dag-processor, triggerer; LocalExecutor),
trigger `planner_dataset` through the REST API and let the Assets chain `planner_training`
(local backend), `planner_registration`, `planner_offline_eval` and `planner_promotion`,
showing which DAG and task runs. Then print what the chain produced: dataset rows and
quarantine, validation AUC, the registered version, its evaluation against the champion and
the promotion decision with its reasons. Then simulate the next week (one more week of events)
and run the chain again: the second model is gated against the first champion (the events of
that week are generated up front with the rest, so the past stays as it was). Passing, it becomes
the canary (the Asset-started promotion's rollout): the week after is simulated and appended with
each household's plan proposed by the model of its arm (`include.events.online`), and
`planner_online_eval`, triggered at the week's end, promotes it or rolls it back from both arms'
logged events; the summary shows both arms' numbers and the decision (`DEMO_CANARY`: half the
households, decided after one week).
Safe to re-run, with the same end state: `var/lifecycle.json` records the simulated world (seed,
households, weeks, last Monday), the weeks whose chain finished and the canary week. Run again in the same world,
it reports the finished weeks without retraining and runs only the rest. In another world (a
week later, other arguments, no record) the models, registry, replays, Airflow runs and
promotion history it made belong to other data (replaying an old week against a newer champion
is leakage, which the evaluation refuses), so it starts again from a clean local state.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from include.core import names, storage
from include.core.config import PROJECT_ROOT, settings
from include.core.local_postgres import NotOurDatabase, claim_demo_database
from include.events import generate
from scripts.airflow_env import airflow_env


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _complete_models() -> set[str]:
    root = storage.models_root()
    fs, path = storage.filesystem(root)
    children = [c.rstrip("/").rsplit("/", 1)[-1] for c in fs.ls(path, detail=False)] if fs.isdir(path) else []
    return {name for name in children if not name.startswith("_") and storage.is_complete(storage.join(root, name))}


def _manifest(training_run_id: str) -> dict:
    return json.loads(storage.read_text(storage.join(storage.models_root(), training_run_id), names.MODEL_MANIFEST_FILE))


def _registered_version(training_run_id: str) -> str | None:
    from include.registration.registry import registry_client, versions_of

    versions = versions_of(registry_client(), training_run_id)
    return str(versions[0].version) if versions else None


def _version_tags(version: str) -> dict:
    from include.registration.registry import registry_client

    return dict(registry_client().get_model_version(names.REGISTERED_MODEL_NAME, version).tags)


def _version_exists(version: str) -> bool:
    from mlflow.exceptions import MlflowException

    from include.registration.registry import registry_client

    try:
        registry_client().get_model_version(names.REGISTERED_MODEL_NAME, version)
        return True
    except MlflowException:
        return False


def _champion() -> str | None:
    from mlflow.exceptions import MlflowException

    from include.registration.registry import registry_client

    try:
        return str(registry_client().get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def _decision_for(dsn: str, model_version: str) -> dict:
    from include.promotion import history

    with history.connect(dsn) as conn:
        return [d for d in history.decisions(conn, names.REGISTERED_MODEL_NAME) if d["version"] == model_version][-1]


SERVICES_HOME = Path(os.environ.get("PLANNER_AIRFLOW_SERVICES_HOME") or PROJECT_ROOT / "var" / "airflow-services")
CHAIN = (names.DAG_DATASET, names.DAG_TRAINING, names.DAG_REGISTRATION, names.DAG_OFFLINE_EVAL, names.DAG_PROMOTION)
DAGS = (*CHAIN, names.ONLINE_EVAL)
RUN_TIMEOUT_S = 20 * 60


class ChainFailed(RuntimeError):
    pass


# The demo's canary (include/promotion/policy.json's "canary" rules, overridable from the environment):
# half the households for one simulated week, decided at its end. At 2,000 households and the default
# fifth, a week would mostly say "continue" (README, "Canary": days needed to detect a change).
DEMO_CANARY = {"PLANNER_CANARY_SHARE": "0.5", "PLANNER_CANARY_MIN_DAYS": "7", "PLANNER_CANARY_MAX_DAYS": "7"}


def services_env(dsn: str) -> dict:
    env = airflow_env(dsn, home=str(SERVICES_HOME))
    env["PLANNER_DATASET_SCHEDULE"] = "none"  # this script triggers the dataset; no cron run on unpause
    env["PLANNER_ONLINE_EVAL_SCHEDULE"] = "none"  # and the canary's look, at the end of its simulated week
    for key, value in DEMO_CANARY.items():
        env[key] = os.environ.get(key, value)
    return env


def _runs(services, dag_id: str) -> list[dict]:
    return services.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]


def _log_tail(services, dag_id: str, run_id: str, task: dict, lines: int = 30) -> str:
    try:
        body = services.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task['task_id']}"
                                       f"/logs/{max(task.get('try_number') or 1, 1)}?full_content=true"
                                       + (f"&map_index={task['map_index']}" if task.get("map_index", -1) not in (-1, None)
                                          else ""))
        events = []
        for entry in body.get("content", []):
            if isinstance(entry, dict):
                events.append(str(entry.get("event", "")))
                # The exception itself is not in the message: Airflow keeps it in error_detail.
                events += [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in entry.get("error_detail") or []
                           if isinstance(e, dict) and e.get("is_cause") is not True]
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


def follow_online_eval(services, as_of: str, started: float) -> str:
    """Trigger planner_online_eval by REST for the look at midnight of `as_of`, and wait for it."""
    seen = {r["dag_run_id"] for r in _runs(services, names.ONLINE_EVAL)}
    run_id = services.trigger(names.ONLINE_EVAL, {"as_of": as_of})
    seen.discard(run_id)
    return _follow(services, names.ONLINE_EVAL, seen, started)


def _model_version_of_newest_model() -> str:
    newest = sorted(_complete_models())[-1]
    manifest = _manifest(newest)
    version = _registered_version(manifest["training_run_id"])
    if version is None:
        raise ChainFailed(f"the chain finished but model {newest} has no registered version")
    return version


def _oracle_share(evaluation_run_id: str | None) -> tuple[float, float] | None:
    """(the oracle's ROC AUC, the candidate's share of it) from the evaluation's report, where it has them."""
    import mlflow.artifacts

    if not evaluation_run_id:
        return None
    try:
        report = json.loads(mlflow.artifacts.load_text(f"runs:/{evaluation_run_id}/{names.EVAL_REPORT_FILE}"))
    except Exception:  # noqa: BLE001 - a courtesy line of the summary; the gate does not read it
        return None
    oracle = (report.get("models", {}).get("oracle") or {}).get("roc_auc")
    share = report.get("comparison", {}).get("auc_share_of_oracle")
    return (float(oracle), float(share)) if oracle is not None and share is not None else None


def report_week(dsn: str, dataset_version: str, model_version: str) -> None:
    """What the chain produced for the dataset version: rows, model, version, evaluation, decision."""
    counts = json.loads(storage.read_text(storage.dataset_uri(dataset_version), names.DATASET_COUNTS_FILE))
    print(f"    dataset {dataset_version}: {counts['rows']:,} rows, {counts['quarantined']:,} events quarantined "
          f"(bad share {100 * counts['bad_share']:.2f}%)")
    tags = _version_tags(model_version)
    manifest = _manifest(tags["training_run_id"])
    metrics = manifest["final_metrics"]
    print(f"    model {manifest['training_run_id']}: validation AUC {metrics['val_auc']:.3f} "
          f"(keep-rate baseline {metrics['baseline_val_auc']:.3f})")
    print(f"    registered version {model_version}; offline evaluation on {tags['eval_replay_window']} "
          f"({tags['eval_examples']} proposed meals) against baseline version {tags['eval_baseline_version']}: "
          f"ROC AUC {float(tags['eval_roc_auc']):.3f}, accuracy {float(tags['eval_accuracy']):.3f}, "
          f"log loss {float(tags['eval_log_loss']):.3f}, p95 {float(tags['eval_latency_p95_ms']):.1f} ms per plan")
    oracle = _oracle_share(tags.get("evaluation_run_id"))
    if oracle:
        print(f"    on the same replayed meals the generator's true keep probabilities (the oracle) reach ROC AUC "
              f"{oracle[0]:.3f}: the model has {100 * oracle[1]:.1f}% of that ceiling")
    decision = _decision_for(dsn, model_version)
    print(f"    promotion of version {decision['version']}: {decision['outcome']} "
          f"(champion today: version {_champion() or 'none'})")
    for reason in decision["reasons"] or ["every check of include/promotion/policy.json passed"]:
        print(f"      - {reason}")


def canary_week(dsn: str, seed: int, state: dict, run_online_eval, save=None) -> dict | None:
    """Week 2's canary, if its promotion started one: simulate the next week served by the deployment
    (include.events.online: each household's plan proposed by its arm's model, kept by the generator's
    truth model), then `run_online_eval(as_of)` runs planner_online_eval at the week's end, which
    promotes the canary, rolls it back or lets it continue. Recorded in `state["canary"]` (saved
    before the week is simulated, so a re-run neither simulates another week nor loses this one).
    `save(state)` persists it (default: `var/lifecycle.json`). Returns the canary as `ml.canaries` holds it
    after the look, or None when no canary was started."""
    from include.events.online import WEEK, next_week_start, simulate_online_week
    from include.promotion import history
    from include.serving.consumer import read_deployment

    save = save or save_state
    record = state.get("canary")
    with history.connect(dsn) as conn:
        canary = (history.canary(conn, record["canary_id"]) if record
                  else history.running_canary(conn, names.REGISTERED_MODEL_NAME))
    if canary is None:
        return None
    if record is None:
        record = state["canary"] = {"canary_id": canary["canary_id"], "version": canary["canary_version"],
                                    "week_start": next_week_start(dsn).date().isoformat()}
        save(state)
    week_start = datetime.fromisoformat(record["week_start"]).replace(tzinfo=UTC)
    as_of = (week_start + WEEK).date().isoformat()
    if canary["state"] == "running":
        _step(f"the canary week: version {canary['canary_version']} serves {canary['share']:.0%} of households "
              f"against champion {canary['champion_version']}; simulating {week_start.date()} to {as_of} with each "
              "household's plan proposed by its arm's model")
        clock = time.perf_counter()
        served = simulate_online_week(dsn, read_deployment(dsn=dsn), week_start, seed=seed)
        print(f"    {served['message']} ({time.perf_counter() - clock:.0f}s)")
        _step(f"planner_online_eval (as of {as_of}): both arms' logged events, the sequential test, the decision")
        run_online_eval(as_of)
        with history.connect(dsn) as conn:
            canary = history.canary(conn, canary["canary_id"])
    report_canary(dsn, canary)
    record["state"] = canary["state"]
    save(state)
    return canary


def report_canary(dsn: str, canary: dict) -> None:
    """Both arms' numbers at the canary's last look, the decision and where the champion is now."""
    from include.promotion import history

    with history.connect(dsn) as conn:
        looks = history.looks(conn, canary["canary_id"])
    print(f"    canary {canary['canary_id']}: version {canary['canary_version']} on {canary['share']:.0%} of "
          f"households against champion {canary['champion_version']} (experiment {canary['experiment_id']})")
    if not looks:
        print("    no look yet")
    else:
        look = looks[-1]
        print(f"    look of {look['window_end'][:10]} (day {look['day']}): {look['action']}")
        print(f"      {'arm':<9} {'version':>7} {'meals':>7} {'kept share':>10} {'plans accepted':>16} "
              f"{'edits/plan':>10} {'households':>10}")
        for arm, version in (("champion", canary["champion_version"]), ("canary", canary["canary_version"])):
            f = look["arms"][arm]
            share = "-" if f["kept_share"] is None else f"{f['kept_share']:.4f}"
            edits = "-" if f["edits_per_plan"] is None else f"{f['edits_per_plan']:.2f}"
            print(f"      {arm:<9} {version:>7} {f['meals']:>7,} {share:>10} "
                  f"{f['plans_accepted']:>7,} / {f['plans_generated']:<6,} {edits:>10} {f['households']:>10,}")
        print(f"      {look['reason']}")
    outcome = {"running": "still running: planner_online_eval looks again on its next run",
               "promoted": f"promoted: version {canary['canary_version']} is the champion",
               "rolled_back": f"rolled back: version {canary['champion_version']} stays the champion",
               "abandoned": "abandoned (the champion moved during the canary)"}
    print(f"    canary {outcome.get(canary['state'], canary['state'])}"
          + (f" ({canary['end_reason']})" if canary.get("end_reason") and canary["state"] != "rolled_back" else "")
          + f"; champion today: version {_champion() or 'none'}")


STATE_FILE = PROJECT_ROOT / "var" / "lifecycle.json"
LOCAL_STATE = PROJECT_ROOT / "var"


def load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_state(state: dict) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    partial = STATE_FILE.with_suffix(".partial")
    partial.write_text(json.dumps(state, indent=2, sort_keys=True))
    partial.replace(STATE_FILE)


def _under_var(location: str) -> Path | None:
    """The local path of a location inside var/, or None (a server, a bucket, elsewhere: not ours)."""
    path = Path(location.removeprefix("sqlite:///").removeprefix("file://"))
    if "://" in location and not location.startswith(("sqlite:///", "file://")):
        return None
    path = path.resolve()
    return path if path.is_relative_to(LOCAL_STATE.resolve()) else None


def reset_local_state(dsn: str) -> None:
    """Forget what earlier lifecycle runs made; only what lives under var/, plus the ml schema."""
    from include.core.local_postgres import embedded_pgdata

    config = settings()
    tracking = config.mlflow_tracking_uri
    for label, location in (("datasets, models and replays", config.storage_root),
                            ("MLflow store", tracking),
                            ("MLflow artifacts", config.mlflow_artifact_root),
                            ("Airflow runs", str(SERVICES_HOME))):
        path = _under_var(location)
        if path is None:
            print(f"    left alone (not under var/): {label} at {location}")
            continue
        if path == LOCAL_STATE.resolve() or embedded_pgdata().resolve().is_relative_to(path):
            print(f"    left alone (it would take all of var/ or the embedded PostgreSQL with it): {label} at {path}")
            continue
        if path.is_file():
            for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                companion.unlink(missing_ok=True)
        elif path.exists():
            shutil.rmtree(path)
        else:
            continue
        print(f"    removed {label}: {path.relative_to(LOCAL_STATE.resolve().parent)}")
    _drop_promotion_history(dsn)
    print("    dropped the promotion history (schema ml)")
    STATE_FILE.unlink(missing_ok=True)


def _drop_promotion_history(dsn: str) -> None:
    from include.events.db import connect

    with connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS ml CASCADE")


def main(argv: list[str] | None = None) -> int:
    from scripts.airflow_services import AirflowServices, free_port

    parser = argparse.ArgumentParser(prog="make lifecycle", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--adopt-database", action="store_true",
                        help="use PLANNER_EVENTS_DSN although this project did not create it (its source tables are "
                             "replaced and schema ml dropped): only for a demo database you own")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    _step("PostgreSQL")
    try:
        dsn = claim_demo_database(settings().events_dsn, adopt=args.adopt_database)
    except NotOurDatabase as refusal:
        print(f"\nREFUSED: {refusal}", file=sys.stderr)
        return 2
    print(f"    events database: {dsn}")
    end = generate.last_monday()
    weeks = [end, end + timedelta(days=7)]
    world = {"households": args.households, "weeks": args.weeks, "seed": args.seed, "end": end.date().isoformat()}
    state = state_before = load_state()
    missing = [v for v in state.get("weeks_done", {}).values() if not _version_exists(v)]
    if state.get("world") != world or missing:
        why = ("no earlier run recorded" if not state else
               f"the registry lacks version(s) {', '.join(missing)} it recorded" if state.get("world") == world else
               f"earlier runs simulated {state.get('world')}")
        _step(f"starting from a clean local state ({why}; this run simulates {world})")
        reset_local_state(dsn)
        state = {"world": world, "weeks_done": {}}
        save_state(state)
        if state_before.get("weeks_done"):
            # This process has an MLflow client on the store just deleted (MLflow caches its SQLite
            # engine per URI): carry on in a fresh process, which finds the recorded world and no weeks.
            print("    continuing in a fresh process", flush=True)
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "scripts.lifecycle",
                                      *(sys.argv[1:] if argv is None else argv)])
    done = state["weeks_done"]
    to_run = [w for w in weeks if w.date().isoformat() not in done]

    if to_run:
        # One more week than the first chain reads: the second chain plays "next Monday". Generating
        # the weeks together keeps the past as it was (regenerating would reshuffle old plans into new
        # weeks, which the evaluation's leakage check rightly refuses). Same world, same rows.
        _step(f"generating {args.weeks} weeks of events for {args.households:,} households up to {end.date()}, "
              f"and the week after (seed {args.seed})")
        counts = generate.generate_and_load(dsn, args.households, args.weeks + 1, args.seed, end + timedelta(days=7),
                                            dirty_share=0.02, reset=True)
        print(f"    {counts['exp.events']:,} events loaded")

    services = None

    def airflow():
        nonlocal services
        if services is None:
            _step(f"starting Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) in "
                  f"{SERVICES_HOME}")
            services = AirflowServices(SERVICES_HOME, services_env(dsn), port=free_port())
            services.start()
            for dag_id in DAGS:
                services.unpause(dag_id)
            print(f"    up at {services.url} after {time.perf_counter() - started:.0f}s")
        return services

    def online_eval(as_of: str) -> None:
        follow_online_eval(airflow(), as_of, started)

    try:
        for week, week_end in enumerate(weeks, start=1):
            version = week_end.date().isoformat()
            if version in done:
                _step(f"week {week}: already ran for dataset {version} (model version {done[version]}); "
                      "its outcome, without retraining")
                report_week(dsn, version, done[version])
                continue
            airflow()
            if week == 2:
                _step(f"a week later: the dataset of {version} takes in the week's new events; the new model is "
                      "gated against the champion of week 1")
            _step(f"week {week}: POST /api/v2/dags/{names.DAG_DATASET}/dagRuns (end_date {version}); the Assets "
                  "chain training, registration, offline evaluation and promotion")
            run_chain(services, version, started)
            done[version] = _model_version_of_newest_model()
            save_state(state)
            report_week(dsn, version, done[version])
        if canary_week(dsn, args.seed, state, online_eval) is None:
            print("    no canary: week 2's promotion started none (its outcome is above)")
    except ChainFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if services is not None:
            services.stop()

    print("\nAirflow UI (these runs, their logs and the Asset graph): make airflow, then http://127.0.0.1:8080 "
          "(admin / admin)")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {settings().mlflow_tracking_uri}")
    print("Promotion history: SELECT * FROM ml.promotion_decisions ORDER BY decision_id; the canary's looks: "
          "SELECT * FROM ml.canary_looks ORDER BY look_id;")
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    from scripts.airflow_services import stop_on_termination

    with stop_on_termination():  # SIGTERM or SIGHUP stop the services it started, as Ctrl-C does
        raise SystemExit(main())
