"""Shared fixtures: a real PostgreSQL database per test session, a temporary MLflow backend
store, a temporary storage root and a migrated Airflow home. Nothing is mocked.

The environment is set here, before anything imports Airflow or MLflow.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SESSION_DIR = Path(tempfile.mkdtemp(prefix="planner-tests-"))

os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "AIRFLOW_HOME": str(SESSION_DIR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "PLANNER_STORAGE_ROOT": str(SESSION_DIR / "storage"),
    "MLFLOW_TRACKING_URI": f"sqlite:///{SESSION_DIR / 'mlflow' / 'mlflow.db'}",
    "PLANNER_MLFLOW_ARTIFACT_ROOT": str(SESSION_DIR / "mlflow" / "artifacts"),
    "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
})
sys.path.insert(0, str(PROJECT_ROOT))

# CI and developer machines run PostgreSQL here; elsewhere the embedded server starts.
TEST_SERVER_DSN = os.environ.get("PLANNER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return SESSION_DIR


@pytest.fixture(scope="session")
def events_dsn() -> str:
    """A fresh database for this test session, with the source schema; dropped afterwards."""
    from include.core.local_postgres import drop_database, ensure_database
    from include.events.db import apply_schema

    base = TEST_SERVER_DSN.rsplit("/", 1)[0]
    dsn = ensure_database(f"{base}/planner_test_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    apply_schema(dsn)
    os.environ["AIRFLOW_CONN_EVENTS_DB"] = _airflow_conn(dsn)
    yield dsn
    drop_database(dsn)


def _airflow_conn(dsn: str) -> str:
    from include.core.local_postgres import airflow_connection_json

    return airflow_connection_json(dsn)


@pytest.fixture()
def clean_source(events_dsn):
    """Empty source tables for a test that writes its own events."""
    from include.events.db import connect
    from include.events.generate import SOURCE_TABLES

    with connect(events_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(SOURCE_TABLES))
    return events_dsn


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database (SQLite) in the session's AIRFLOW_HOME, migrated once."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home


@pytest.fixture()
def storage_root(tmp_path, monkeypatch) -> Path:
    """A storage root of this test's own (settings are read from the environment per call)."""
    root = tmp_path / "storage"
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", str(root))
    return root


@pytest.fixture(scope="session")
def training_events_dsn(events_dsn) -> str:
    """Generated events in a database of their own (tests that truncate the source tables
    cannot race it), for the dataset a model is trained on."""
    from datetime import UTC, datetime
    from urllib.parse import urlsplit, urlunsplit

    from include.core.local_postgres import drop_database, ensure_database
    from include.events import generate
    from include.events.db import apply_schema

    parts = urlsplit(events_dsn)
    dsn = ensure_database(urlunsplit(parts._replace(path=parts.path + "_training")))
    apply_schema(dsn)
    generate.generate_and_load(dsn, households=300, weeks=6, seed=5, end=datetime(2026, 11, 23, tzinfo=UTC),
                               dirty_share=0.02, reset=True)
    yield dsn
    drop_database(dsn)


@pytest.fixture(scope="session")
def published_dataset(training_events_dsn, tmp_path_factory) -> str:
    """A real dataset version (build, validate, publish) in a storage root of its own."""
    from include.dataset.pipeline import build_validate_publish
    from include.dataset.window import resolve_window

    root = tmp_path_factory.mktemp("published")
    previous = os.environ.get("PLANNER_STORAGE_ROOT")
    os.environ["PLANNER_STORAGE_ROOT"] = str(root)
    try:
        published = build_validate_publish(training_events_dsn, resolve_window("2026-11-23", 28), max_bad_share=0.05)
    finally:
        os.environ["PLANNER_STORAGE_ROOT"] = previous or ""
    return published["uri"]


@pytest.fixture(scope="session")
def trained_model(published_dataset, tmp_path_factory) -> Path:
    """A real model directory, published by the trainer (small and quick), to copy from."""
    from include.core import names
    from include.training import cli

    out = tmp_path_factory.mktemp("trained") / "models" / names.REGISTERED_MODEL_NAME
    run_id = "planner_acceptance-v20261123_010203"
    code = cli.main(["--dataset-uri", published_dataset, "--output-root", str(out), "--training-run-id", run_id,
                     "--epochs", "2", "--max-rows", "1500", "--batch-size", "32"])
    assert code == 0
    return out / run_id


@pytest.fixture(scope="session")
def shuffled_label_model(published_dataset, tmp_path_factory) -> Path:
    """The negative control: trained like `trained_model`, but on permuted labels."""
    from include.core import names
    from include.training import cli

    out = tmp_path_factory.mktemp("shuffled") / "models" / names.REGISTERED_MODEL_NAME
    run_id = "planner_acceptance-v20261123_020304"
    code = cli.main(["--dataset-uri", published_dataset, "--output-root", str(out), "--training-run-id", run_id,
                     "--epochs", "2", "--max-rows", "1500", "--batch-size", "32", "--shuffle-labels"])
    assert code == 0
    return out / run_id


@pytest.fixture()
def fresh_mlflow(tmp_path, monkeypatch) -> str:
    """An MLflow backend store and artifact root of this test's own (a real SQLite registry)."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PLANNER_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "mlflow" / "artifacts"))
    return uri


@pytest.fixture()
def model_in_storage(trained_model, storage_root) -> Path:
    """A copy of the trained model under this test's storage root, where registration may read it."""
    import shutil

    from include.core import names

    target = storage_root / "models" / names.REGISTERED_MODEL_NAME / trained_model.name
    shutil.copytree(trained_model, target)
    return target


# Test models train for seconds, not minutes: looser absolutes than the promotion gate's defaults
# (which `make lifecycle`'s model passes), the same checks; ROC AUC >= 0.70 still tells good from shuffled.
# Latency measures the machine, not the model: a loaded CI machine scored p95 > 500 ms with a good model,
# so these tests do not gate on it (tests/promotion/test_gate.py tests the latency check itself).
FAST_MODEL_GATE = {"DEPLOY_ACCURACY_THRESHOLD": "0.5", "DEPLOY_LOSS_THRESHOLD": "0.7",
                   "DEPLOY_VAL_LOSS_THRESHOLD": "0.7", "DEPLOY_LATENCY_THRESHOLD": "60000"}


def copy_as_new_training_run(model_dir: Path, dest: Path) -> Path:
    """The same weights under another training run id: a second version without training again."""
    from include.core import names

    shutil.copytree(model_dir, dest)
    manifest = json.loads((dest / names.MODEL_MANIFEST_FILE).read_text())
    manifest["training_run_id"] = dest.name
    (dest / names.MODEL_MANIFEST_FILE).write_text(json.dumps(manifest))
    return dest


@contextmanager
def isolated_planner(base: Path, events_dsn: str, **extra: str):
    """A stack of a module's own under `base`: MLflow store and artifacts, storage, the events
    connection, no Redis, an empty `ml` schema. Yields the environment and its MonkeyPatch."""
    from include.core.local_postgres import airflow_connection_json
    from include.promotion.history import connect

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
           "PLANNER_MLFLOW_ARTIFACT_ROOT": str(base / "artifacts"),
           "PLANNER_STORAGE_ROOT": str(base / "storage"),
           "AIRFLOW_CONN_EVENTS_DB": airflow_connection_json(events_dsn), **extra}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("REDIS_URL", raising=False)
        with connect(events_dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS ml CASCADE")
        yield env, patch


@pytest.fixture(scope="session")
def s3_server(session_dir):
    """A real S3-protocol server on loopback for the whole session; clients reach it by AWS_* env."""
    from scripts.object_store import S3Server

    server = S3Server(session_dir / "s3").start()
    previous = {key: os.environ.get(key) for key in server.client_env()}
    os.environ.update(server.client_env())
    yield server
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def s3_root(s3_server, monkeypatch) -> str:
    """A bucket of this test's own on the S3 server, as the storage root `s3://<bucket>/planner`."""
    bucket = s3_server.create_bucket(f"planner-{uuid.uuid4().hex[:10]}")
    root = f"{bucket}/planner"
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", root)
    return root


@pytest.fixture()
def queue_asset_events(monkeypatch):
    """Makes a DAG's .test() create its run with events of an Asset queued for it, the way the scheduler
    hands an Asset-triggered run its events (the run's consumed_asset_events), in order."""
    from datetime import UTC, datetime, timedelta

    import airflow.models.dagrun as dagrun_module
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import select

    real = dagrun_module.get_or_create_dagrun

    def queue(asset_name: str, *extras: dict) -> None:
        def with_events(*, session, **kwargs):
            run = real(session=session, **kwargs)
            asset = session.scalar(select(AssetModel).where(AssetModel.name == asset_name))
            queued_at = datetime.now(UTC)
            events = [AssetEvent(asset_id=asset.id, extra=extra, timestamp=queued_at + timedelta(seconds=i))
                      for i, extra in enumerate(extras)]
            session.add_all(events)
            run.consumed_asset_events.extend(events)
            session.commit()
            return run

        monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", with_events)

    return queue
