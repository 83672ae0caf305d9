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
