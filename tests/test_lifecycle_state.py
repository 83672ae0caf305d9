"""make lifecycle's bookkeeping: what it may delete when it starts over, and what a failure shows."""
from scripts import lifecycle
from scripts.lifecycle import PROJECT_ROOT, _log_tail, _under_var


def test_only_locations_under_var_are_reset():
    var = PROJECT_ROOT / "var"
    assert _under_var(str(var / "storage")) == (var / "storage").resolve()
    assert _under_var(f"sqlite:///{var / 'mlflow' / 'mlflow.db'}") == (var / "mlflow" / "mlflow.db").resolve()
    assert _under_var(f"file://{var / 'storage'}") == (var / "storage").resolve()
    for elsewhere in ("s3://bucket/planner", "http://mlflow:5000", "postgresql://db/mlflow", "/srv/planner",
                      str(var / ".." / "elsewhere"), str(PROJECT_ROOT)):
        assert _under_var(elsewhere) is None, elsewhere


def test_state_round_trips_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(lifecycle, "STATE_FILE", tmp_path / "var" / "lifecycle.json")
    assert lifecycle.load_state() == {}
    state = {"world": {"households": 2000, "weeks": 8, "seed": 7, "end": "2026-11-23"}, "weeks_done": {"2026-11-23": "1"}}
    lifecycle.save_state(state)
    assert lifecycle.load_state() == state
    assert not list((tmp_path / "var").glob("*.partial"))
    (tmp_path / "var" / "lifecycle.json").write_text("{not json")
    assert lifecycle.load_state() == {}  # a torn record means: start over


class _LogsApi:
    """The body Airflow 3.3's logs endpoint returns for a failed task (structured log lines)."""

    def request(self, method, path):
        assert method == "GET" and "/logs/1?full_content=true" in path
        return {"content": [
            {"event": "replay set 2026-11-16_2026-11-23: 1566 rows, 20 quarantined"},
            {"event": "Task failed with exception", "error_detail": [
                {"exc_type": "AirflowFailException", "exc_value": "leakage: the replay set is not held out"},
                {"exc_type": "EvaluationError", "exc_value": "leakage: (cause)", "is_cause": True}]},
        ]}


def test_a_failure_shows_the_exception_not_only_its_headline():
    tail = _log_tail(_LogsApi(), "planner_offline_eval", "run", {"task_id": "build_replay_set", "try_number": 1})
    assert tail.splitlines() == ["replay set 2026-11-16_2026-11-23: 1566 rows, 20 quarantined",
                                 "Task failed with exception",
                                 "AirflowFailException: leakage: the replay set is not held out"]


def test_starting_over_removes_only_what_lives_under_var(tmp_path, monkeypatch):
    """reset_local_state empties var/ and the ml schema; a location configured elsewhere survives."""
    import uuid

    from include.core.local_postgres import drop_database, ensure_database
    from include.events.db import connect
    from tests.conftest import TEST_SERVER_DSN

    var = tmp_path / "project" / "var"
    monkeypatch.setattr(lifecycle, "LOCAL_STATE", var)
    monkeypatch.setattr(lifecycle, "SERVICES_HOME", var / "airflow-services")
    monkeypatch.setattr(lifecycle, "STATE_FILE", var / "lifecycle.json")
    elsewhere = tmp_path / "team-share" / "mlflow-artifacts"
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", str(var / "storage"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{var / 'mlflow' / 'mlflow.db'}")
    monkeypatch.setenv("PLANNER_MLFLOW_ARTIFACT_ROOT", str(elsewhere))
    for directory in (var / "storage" / "models", var / "mlflow", var / "airflow-services" / "logs", elsewhere,
                      var / "pgdata"):
        directory.mkdir(parents=True)
        (directory / "kept-or-not").write_text("x")
    (var / "mlflow" / "mlflow.db").write_text("sqlite")
    monkeypatch.setenv("PLANNER_EMBEDDED_PGDATA", str(var / "pgdata"))
    lifecycle.save_state({"world": {"seed": 7}, "weeks_done": {"2026-11-23": "1"}})

    dsn = ensure_database(f"{TEST_SERVER_DSN.rsplit('/', 1)[0]}/planner_test_reset_{uuid.uuid4().hex[:8]}")
    try:
        with connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA ml; CREATE TABLE ml.promotion_decisions (decision_id int)")
        lifecycle.reset_local_state(dsn)
        with connect(dsn) as conn:
            assert conn.execute("SELECT to_regnamespace('ml')").fetchone()[0] is None
    finally:
        drop_database(dsn)
    assert not (var / "storage").exists() and not (var / "mlflow" / "mlflow.db").exists()
    assert not (var / "airflow-services").exists() and not (var / "lifecycle.json").exists()
    assert (elsewhere / "kept-or-not").read_text() == "x"
    assert (var / "pgdata" / "kept-or-not").exists()  # the embedded server's data is not the lifecycle's


def test_a_store_at_the_root_of_var_does_not_take_var_with_it(tmp_path, monkeypatch):
    var = tmp_path / "var"
    monkeypatch.setattr(lifecycle, "LOCAL_STATE", var)
    monkeypatch.setattr(lifecycle, "SERVICES_HOME", var / "airflow-services")
    monkeypatch.setattr(lifecycle, "STATE_FILE", var / "lifecycle.json")
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", str(var))  # somebody pointed storage at var/ itself
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{var / 'mlflow.db'}")
    monkeypatch.setenv("PLANNER_MLFLOW_ARTIFACT_ROOT", str(var / "artifacts"))
    monkeypatch.setenv("PLANNER_EMBEDDED_PGDATA", str(var / "pgdata"))
    (var / "pgdata").mkdir(parents=True)
    (var / "mlflow.db").write_text("sqlite")
    (var / "mlflow.db-wal").write_text("wal")
    monkeypatch.setattr(lifecycle, "_drop_promotion_history", lambda dsn: None)
    lifecycle.reset_local_state("postgresql://unused")
    assert (var / "pgdata").is_dir()
    assert not (var / "mlflow.db").exists() and not (var / "mlflow.db-wal").exists()
