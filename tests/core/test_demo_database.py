"""`make lifecycle` replaces the source tables and drops schema `ml`: it may do that only to a
database this project created (marked by a comment), the embedded one, or an empty one. Any
other database that holds tables is refused before anything changes; `make clean` leaves it."""
from __future__ import annotations

import uuid

import psycopg
import pytest

from include.core import local_postgres
from include.core.local_postgres import DEMO_MARKER, NotOurDatabase, claim_demo_database
from tests.conftest import TEST_SERVER_DSN


@pytest.fixture()
def database_name():
    """A database name of this test's own; whatever the test made is dropped afterwards."""
    name = f"planner_guard_{uuid.uuid4().hex[:8]}"
    dsn = f"{TEST_SERVER_DSN.rsplit('/', 1)[0]}/{name}"
    yield dsn
    local_postgres.drop_database(dsn)


def _foreign_database_with_data(dsn: str) -> None:
    """Somebody's database: created outside this project, with a table and a row in it."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(TEST_SERVER_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA exp")
        conn.execute("CREATE TABLE exp.events (event_id text PRIMARY KEY)")
        conn.execute("INSERT INTO exp.events VALUES ('a real event')")


def _rows(dsn: str) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT event_id FROM exp.events").fetchall()


def test_a_database_the_project_creates_is_marked_and_claimed_again(database_name):
    dsn = claim_demo_database(database_name)
    assert local_postgres.database_comment(dsn) == DEMO_MARKER
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE generated (x int)")
    assert claim_demo_database(dsn) == dsn  # its own tables are no reason to refuse


def test_somebody_elses_database_is_refused_before_anything_changes(database_name):
    _foreign_database_with_data(database_name)
    with pytest.raises(NotOurDatabase) as refused:
        claim_demo_database(database_name)
    message = str(refused.value)
    assert "exp.events" in message and "--adopt-database" in message and "fresh database" in message
    assert _rows(database_name) == [("a real event",)]
    assert local_postgres.database_comment(database_name) is None


def test_the_lifecycle_command_refuses_it_with_exit_2(database_name, monkeypatch, capsys):
    from scripts import lifecycle

    _foreign_database_with_data(database_name)
    monkeypatch.setenv("PLANNER_EVENTS_DSN", database_name)
    assert lifecycle.main([]) == 2
    assert "REFUSED" in capsys.readouterr().err
    assert _rows(database_name) == [("a real event",)]
    with psycopg.connect(database_name) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN ('app', 'sim', 'ml')").fetchone()[0] == 0


def test_adopting_marks_it_and_an_empty_database_is_claimed(database_name):
    _foreign_database_with_data(database_name)
    claim_demo_database(database_name, adopt=True)
    assert local_postgres.is_adopted(database_name) and claim_demo_database(database_name) == database_name

    empty = database_name + "_empty"
    with psycopg.connect(TEST_SERVER_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{empty.rsplit("/", 1)[1]}"')
    try:
        claim_demo_database(empty)
        assert local_postgres.is_ours(empty)
    finally:
        local_postgres.drop_database(empty)


def test_make_clean_drops_only_a_database_of_its_own(database_name):
    from scripts.clean import drop_events_database

    _foreign_database_with_data(database_name)
    assert "left alone" in drop_events_database(database_name)
    assert _rows(database_name) == [("a real event",)]

    ours = claim_demo_database(database_name + "_ours")
    assert "dropped" in drop_events_database(ours)
    assert not local_postgres.database_exists(ours)


def test_make_clean_drops_the_team_lifecycles_databases_it_created_and_no_other(database_name):
    from include.core.local_postgres import ensure_database
    from scripts.clean import drop_team_databases, team_databases

    prefix = database_name.rsplit("/", 1)[1]  # a prefix of this test's own, never the real planner_team_*
    events, airflow, mlflow, mlflow_auth = team_databases(database_name, prefix)
    try:
        for dsn in (events, airflow, mlflow_auth):
            ensure_database(dsn)  # created by the project: marked
        _foreign_database_with_data(mlflow)  # the same name, but somebody else's
        said = drop_team_databases(database_name, prefix)
        assert not any(local_postgres.database_exists(dsn) for dsn in (events, airflow, mlflow_auth))
        assert _rows(mlflow) == [("a real event",)]
        assert sum("dropped" in line for line in said) == 3 and sum("left alone" in line for line in said) == 1
    finally:
        for dsn in (events, airflow, mlflow, mlflow_auth):
            local_postgres.drop_database(dsn)


def test_an_adopted_database_loses_only_the_project_schemas_on_make_clean(database_name):
    from scripts.clean import drop_events_database

    _foreign_database_with_data(database_name)
    with psycopg.connect(database_name, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute("CREATE TABLE analytics.reports (id int)")
    claim_demo_database(database_name, adopt=True)
    assert local_postgres.is_adopted(database_name) and not local_postgres.is_ours(database_name)

    assert "adopted" in drop_events_database(database_name)

    assert local_postgres.database_exists(database_name)
    assert local_postgres.user_tables(database_name) == ["analytics.reports"]


def test_a_database_holding_only_a_sequence_or_a_function_is_not_empty(database_name):
    name = database_name.rsplit("/", 1)[1]
    with psycopg.connect(TEST_SERVER_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(database_name, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.billing() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    with pytest.raises(NotOurDatabase):
        claim_demo_database(database_name)


def test_the_generator_without_reset_refuses_a_database_it_did_not_create(database_name, capsys):
    from include.events import generate

    _foreign_database_with_data(database_name)
    assert generate.main(["--dsn", database_name, "--households", "3", "--weeks", "1"]) == 2
    assert "refused" in capsys.readouterr().err
    assert _rows(database_name) == [("a real event",)]
