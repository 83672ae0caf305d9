"""The laptop path: no server answers, so the embedded PostgreSQL starts, and the DAG's way in
(an Airflow connection read through PostgresHook, then ADBC) reaches it over its unix socket."""
from __future__ import annotations

import pytest

from include.core import local_postgres


@pytest.fixture()
def embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_EMBEDDED_PGDATA", str(tmp_path / "pgdata"))
    yield
    local_postgres.stop_embedded()


def test_embedded_server_starts_when_none_answers_and_airflow_reaches_it(embedded, monkeypatch):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from include.core.connections import libpq_uri_for_connection
    from include.dataset.build import fetch_arrow
    from include.events.db import apply_schema

    dead = "postgresql://postgres@127.0.0.1:9/planner_events"
    assert not local_postgres.server_answers(dead)
    dsn = local_postgres.ensure_database(dead)
    assert "host=" in dsn and dsn.split("?")[0].endswith("/planner_events")
    apply_schema(dsn)
    apply_schema(dsn)  # idempotent

    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", local_postgres.airflow_connection_json(dsn))
    uri = libpq_uri_for_connection(PostgresHook(postgres_conn_id="events_db").get_connection("events_db"))
    table = fetch_arrow(uri, "SELECT count(*) AS n, current_setting('server_version_num')::int AS v FROM exp.events")
    assert table.to_pylist()[0]["n"] == 0 and table.to_pylist()[0]["v"] >= 160000
    assert local_postgres.ensure_database(dead) == dsn  # reuses the running server and database

    local_postgres.stop_embedded()  # what `make clean` does: the server this process started stops
    assert not local_postgres.server_answers(dsn)


@pytest.mark.parametrize(("fields", "uri"), [
    (("127.0.0.1", 5432, "postgres", None, "planner_events", {}), "postgresql://postgres@127.0.0.1:5432/planner_events"),
    (("/run/postgresql", None, "postgres", None, "events", {}), "postgresql://postgres@%2Frun%2Fpostgresql/events"),
    (("db.internal", 6432, "ml@team", "p@ss:w/rd", "events", {"sslmode": "require", "cursor": "dictcursor"}),
     "postgresql://ml%40team:p%40ss%3Aw%2Frd@db.internal:6432/events?sslmode=require"),
])
def test_libpq_uri_from_connection_fields(fields, uri):
    from include.core.connections import libpq_uri

    assert libpq_uri(*fields) == uri
