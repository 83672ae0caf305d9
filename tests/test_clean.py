"""`make clean` drops the events database only where it lives on this machine."""
import pytest

from scripts.clean import is_local


@pytest.mark.parametrize("dsn, local", [
    ("postgresql://postgres@127.0.0.1:5432/planner_events", True),
    ("postgresql://postgres@localhost/planner_events", True),
    ("postgresql://postgres@[::1]:5432/planner_events", True),
    ("postgresql://postgres@/planner_events?host=/work/main/var/pgdata", True),
    ("postgresql://planner@events.prod.internal:5432/planner_events", False),
    ("postgresql://planner@10.0.3.7/planner_events", False),
])
def test_only_a_local_events_database_is_dropped(dsn, local):
    assert is_local(dsn) is local
