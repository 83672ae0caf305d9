"""make lifecycle's canary week (`scripts.lifecycle.canary_week`): once week 2's promotion has started a
canary (here by promotion's own `apply`, with loadable stand-in versions in a real MLflow registry), the
next week is simulated with each household's plan proposed by its arm's model, and a real run of
`planner_online_eval` (`dag.test`) at the week's end decides. The state file records the week before it
is simulated and the outcome after; a re-run neither simulates another week nor takes another look."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.core import names
from include.events import generate
from include.events.db import connect
from tests.conftest import isolated_planner

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SEED = 3
END = datetime(2026, 11, 23, tzinfo=UTC)  # the generated world's end: the canary week starts here
DEMO = {"PLANNER_CANARY_SHARE": "0.5", "PLANNER_CANARY_MIN_EXPOSURE": "100", "PLANNER_CANARY_MIN_DAYS": "7",
        "PLANNER_CANARY_MAX_DAYS": "7"}


def _generated_plans(dsn: str) -> int:
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM exp.events WHERE event_type = 'plan_generated'").fetchone()[0]


@pytest.mark.e2e
def test_the_canary_week_is_simulated_once_and_decided_by_the_online_evaluation(clean_source, airflow_db, tmp_path,
                                                                                monkeypatch, capsys):
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    from include.promotion import history
    from scripts import lifecycle
    from tests.promotion.canary_world import promote_directly, register_versions, reset, start_canary

    generate.generate_and_load(clean_source, 300, 2, seed=SEED, end=END, dirty_share=0.02, reset=True)
    monkeypatch.setattr(lifecycle, "STATE_FILE", tmp_path / "lifecycle.json")
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_online_eval.py"))
    assert bag.import_errors == {}
    looks_run = []

    def online_eval(as_of: str) -> None:
        looks_run.append(as_of)
        run = bag.dags[names.ONLINE_EVAL].test(run_conf={"as_of": as_of, "require_approval": False})
        assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}

    with isolated_planner(tmp_path / "stack", clean_source, **DEMO):
        assert register_versions(2) == ["1", "2"]
        reset(clean_source, mlflow.MlflowClient())
        promote_directly(clean_source, "1", None, "lifecycle-canary-week-1")
        state = {"world": {"seed": SEED}, "weeks_done": {}}

        # Given week 2's promotion started no canary, there is no canary week
        assert lifecycle.canary_week(clean_source, SEED, state, online_eval) is None
        assert "canary" not in state and looks_run == []

        # Given a canary started before the next week (promotion runs on the world's last day)
        started = start_canary(clean_source, "2", "1", "lifecycle-canary-week-2", started_at=END - timedelta(hours=8))
        before = _generated_plans(clean_source)

        # When the lifecycle runs its canary week
        ended = lifecycle.canary_week(clean_source, SEED, state, online_eval)

        # Then the week after the world's last was served by the deployment, and the look at its end decided
        assert looks_run == [(END + timedelta(days=7)).date().isoformat()]
        with connect(clean_source) as conn:
            served = dict(conn.execute(
                "SELECT context ->> 'arm', count(*) FROM exp.events WHERE event_type = 'plan_generated' "
                "AND \"timestamp\" >= %s GROUP BY 1", (END,)).fetchall())
            assert conn.execute("SELECT count(*) FROM exp.events WHERE event_type = 'plan_generated' "
                                "AND \"timestamp\" >= %s", (END + timedelta(days=7),)).fetchone()[0] == 0
        assert set(served) == {"champion", "canary"} and sum(served.values()) == _generated_plans(clean_source) - before
        with history.connect(clean_source) as conn:
            looks = history.looks(conn, started["canary_id"])
        assert [look["day"] for look in looks] == [7] and looks[0]["action"] in ("promote", "rollback")
        assert ended["canary_id"] == started["canary_id"] and ended["state"] in ("promoted", "rolled_back")
        expected_champion = "2" if ended["state"] == "promoted" else "1"
        assert lifecycle._champion() == expected_champion
        assert lifecycle.load_state()["canary"] == {"canary_id": started["canary_id"], "version": "2",
                                                    "week_start": END.date().isoformat(), "state": ended["state"]}
        printed = capsys.readouterr().out
        for arm in ("champion", "canary"):
            figures = looks[0]["arms"][arm]
            assert f"{figures['meals']:,}" in printed and f"{figures['kept_share']:.4f}" in printed
        assert looks[0]["reason"] in printed and f"champion today: version {expected_champion}" in printed

        # And run again, it reports the outcome: no second week, no second look
        plans = _generated_plans(clean_source)
        again = lifecycle.canary_week(clean_source, SEED, lifecycle.load_state(), online_eval)
        assert again["state"] == ended["state"] and looks_run == [looks_run[0]]
        assert _generated_plans(clean_source) == plans
        with history.connect(clean_source) as conn:
            assert len(history.looks(conn, started["canary_id"])) == 1
        assert looks[0]["reason"] in capsys.readouterr().out
