"""`make team-lifecycle` in a small world: the chain through CeleryExecutor with two Celery
workers (each its own working directory, TMPDIR, HOME and Airflow home), Redis as the broker,
Airflow's metadata in PostgreSQL, the storage root and the task logs in an S3-protocol server,
and an MLflow server (PostgreSQL backend store, artifacts in the bucket, basic-auth). The same
command and code path as `make team-lifecycle` (scripts/team_lifecycle.py), with its own home,
its own databases and a smaller world; then a re-run in the same world, which reports without
retraining."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import FAST_MODEL_GATE, PROJECT_ROOT, TEST_SERVER_DSN

REDIS = ("127.0.0.1", 6379)


def _redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _missing() -> str | None:
    from include.core.local_postgres import server_answers

    for module in ("airflow.providers.celery", "airflow.providers.amazon", "flask_wtf", "moto"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r requirements.txt)"
    if urlsplit(TEST_SERVER_DSN).hostname not in ("127.0.0.1", "localhost") or not server_answers(TEST_SERVER_DSN):
        return f"no PostgreSQL server answers at {TEST_SERVER_DSN} (the team topology needs a server, not a socket)"
    if not _redis_answers():
        return f"no Redis answers at {REDIS[0]}:{REDIS[1]} (the Celery broker)"
    return None


def _run(home: Path, prefix: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "scripts.team_lifecycle", "--households", "300", "--weeks", "3", "--chains", "1",
            "--home", str(home), "--db-prefix", prefix]
    result = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=840)
    print(result.stdout[-6000:])
    print(result.stderr[-3000:], file=sys.stderr)
    return result


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_the_team_topology_runs_the_chain_on_two_celery_workers(tmp_path):
    import psycopg

    from include.core import names
    from include.core.local_postgres import drop_database
    from include.promotion import history

    missing = _missing()
    if missing:
        pytest.skip(missing)
    prefix = f"planner_team_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    base = TEST_SERVER_DSN.rsplit("/", 1)[0]
    databases = [f"{base}/{prefix}_{suffix}" for suffix in ("events", "airflow", "mlflow", "mlflow_auth")]
    home = tmp_path / "team"
    # A small world: 300 households, 3 weeks, a 14-day window (7 days trained on, 7 held out); the
    # seconds-trained model is gated with the test suite's looser absolutes.
    env = {**os.environ, **FAST_MODEL_GATE, "PLANNER_EVENTS_DSN": f"{base}/{prefix}_events",
           "PLANNER_LOOKBACK_DAYS": "14", "PLANNER_ARTIFACT_POKE_INTERVAL_S": "5"}
    try:
        first = _run(home, prefix, env)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        assert "promotion of version 1: " in first.stdout
        report = json.loads((home / "last_run.json").read_text())
        [(version, week)] = report["weeks"].items()

        placed = week["placement"]
        assert {p["worker"] for p in placed} == {"worker-1", "worker-2"}, placed  # both workers ran tasks
        assert {p["hostname"] for p in placed} == {"127.0.0.11", "127.0.0.12"}
        assert {p["queue"] for p in placed} == {prefix}  # the topology's own Celery queue
        assert {p["dag_id"] for p in placed} == {names.DAG_DATASET, names.DAG_TRAINING, names.DAG_REGISTRATION,
                                                 names.DAG_OFFLINE_EVAL, names.DAG_PROMOTION}
        assert "ran on Celery worker-1 (hostname 127.0.0.11)" in first.stdout
        assert "ran on Celery worker-2 (hostname 127.0.0.12)" in first.stdout
        for worker, line in week["logs"].items():  # the UI's view of a task's log, whichever worker ran it
            assert "read from s3://planner-team/airflow/logs" in line, (worker, line)
        # While a task ran (training runs for many seconds), the api-server read its log from the log
        # server of the worker running it, at that worker's own address.
        assert week["live_logs"], "no running task's log was read while the chain ran"
        for worker, seen in week["live_logs"].items():
            address = {"worker-1": "127.0.0.11", "worker-2": "127.0.0.12"}[worker]
            assert seen["source"].startswith(f"http://{address}:"), (worker, seen)

        where = week["locations"]
        assert where["dataset"] == f"s3://planner-team/planner/datasets/planner/{version}"
        assert where["dataset_published"].startswith(where["dataset"] + "/")
        assert where["model"].startswith("s3://planner-team/planner/models/planner_acceptance/")
        assert where["model_published"].startswith(where["model"] + "/")
        assert where["registered_artifacts"].startswith("s3://planner-team/mlflow/")
        assert report["local_leftovers"] == []
        for worker in ("worker-1", "worker-2"):
            tmp = home / "workers" / worker / "tmp"
            assert tmp.is_dir() and not any(tmp.iterdir())
            assert not [p for p in (home / "workers" / worker).rglob("*.parquet")]

        # The object store's data (persisted under the home) holds the dataset, the model and the task logs.
        manifest = json.loads((home / "object-store" / "data" / "manifest.json").read_text())["planner-team"]
        assert any(k.startswith(f"planner/datasets/planner/{version}/") and k.endswith("training.parquet")
                   for k in manifest)
        assert any(k.startswith(where["model"].removeprefix("s3://planner-team/")) and k.endswith(".safetensors")
                   for k in manifest)
        assert any(k.startswith("airflow/logs/dag_id=planner_training/") for k in manifest)

        # The registry is the MLflow server's PostgreSQL store; the decision is in the team's events database.
        with psycopg.connect(databases[2]) as conn:
            versions = conn.execute("SELECT version FROM model_versions WHERE name = %s",
                                    (names.REGISTERED_MODEL_NAME,)).fetchall()
        assert [str(v) for (v,) in versions] == [week["model_version"]] == ["1"]
        with history.connect(databases[0]) as conn:
            [decision] = history.decisions(conn, names.REGISTERED_MODEL_NAME)
        assert decision["version"] == "1" and decision["outcome"] in ("promoted", "rejected")
        with psycopg.connect(databases[1]) as conn:  # Airflow's metadata is in PostgreSQL
            [(on_workers,)] = conn.execute("SELECT count(*) FROM task_instance WHERE hostname IN"
                                           " ('127.0.0.11', '127.0.0.12') AND queue = %s", (prefix,)).fetchone(),
        assert on_workers == len(placed)

        # Same world again: the week's outcome without retraining, and no Airflow started.
        again = _run(home, prefix, env)
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
        assert f"already ran for dataset {version}" in again.stdout and "starting Airflow" not in again.stdout
        assert f"promotion of version 1: {decision['outcome']}" in again.stdout
        assert f"dataset in the bucket: {where['dataset']}" in again.stdout
    finally:
        for dsn in databases:
            drop_database(dsn)
