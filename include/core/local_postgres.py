"""Find a PostgreSQL server for local runs and tests, or start an embedded one.

CI and developer machines have a server on 127.0.0.1:5432; a laptop may have none, and
then `pgserver` (PostgreSQL binaries from PyPI) runs one under `var/pgdata` on a unix socket.
Never a mock and never SQLite: the dataset SQL is PostgreSQL's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from include.core.config import PROJECT_ROOT


def _with_db(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def server_answers(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(_with_db(dsn, "postgres"), connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def embedded_pgdata() -> Path:
    return Path(os.environ.get("PLANNER_EMBEDDED_PGDATA") or PROJECT_ROOT / "var" / "pgdata")


def embedded_server_dsn() -> str:
    """Start (or reuse) the embedded server (default var/pgdata); a DSN for its `postgres` db."""
    import logging

    import pgserver

    # Its exit handler logs at INFO after the interpreter's streams may be closed.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    server = pgserver.get_server(embedded_pgdata(), cleanup_mode=None)
    return server.get_uri()


def stop_embedded() -> None:
    """Stop the embedded server if this project started one (`make clean`)."""
    pgdata = embedded_pgdata()
    if (pgdata / "postmaster.pid").exists():
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        # A handle this process opened earlier (cleanup_mode None, so the server outlives it) is
        # returned as is, and its cleanup would leave the server running.
        server.cleanup_mode = "stop"
        server.cleanup()


def ensure_database(dsn: str) -> str:
    """Make sure the server answers and the DSN's database exists; returns a usable DSN.

    If nothing answers at `dsn`, the embedded server is started and the same database name
    is created there. A database created here is marked as the project's own (`DEMO_MARKER`).
    """
    import psycopg

    dbname = urlsplit(dsn).path.lstrip("/") or "postgres"
    if not server_answers(dsn):
        print(f"no PostgreSQL answers at {dsn}; starting the embedded one", file=sys.stderr)
        dsn = _with_db(embedded_server_dsn(), dbname)
    with psycopg.connect(_with_db(dsn, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{dbname}"')
            _mark(conn, dbname)
    return dsn


# The database comment that says a database is the demo's own: `make lifecycle` replaces its
# generated data, `make clean` drops it. Any other database is somebody's data.
DEMO_MARKER = "planner-lifecycle demo events: created by this project; make lifecycle replaces its data"
# A database the user gave to the demo (--adopt-database): its source tables are replaced, but
# `make clean` drops only the project's schemas in it, never the database.
ADOPTED_MARKER = "planner-lifecycle demo events: adopted; make lifecycle replaces its exp, app, sim and ml schemas"
PROJECT_SCHEMAS = ("exp", "app", "sim", "ml")


class NotOurDatabase(RuntimeError):
    """The events database holds tables and was not created by this project: refusing to change it."""


def _mark(conn, dbname: str, marker: str = DEMO_MARKER) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(dbname), sql.Literal(marker)))


def database_comment(dsn: str) -> str | None:
    import psycopg

    dbname = urlsplit(dsn).path.lstrip("/") or "postgres"
    with psycopg.connect(_with_db(dsn, "postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (dbname,)).fetchone()
    return row[0] if row else None


def database_exists(dsn: str) -> bool:
    import psycopg

    dbname = urlsplit(dsn).path.lstrip("/") or "postgres"
    with psycopg.connect(_with_db(dsn, "postgres"), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def is_embedded(dsn: str) -> bool:
    """On the embedded server under var/pgdata (a unix socket there): everything in it is ours."""
    from urllib.parse import parse_qs

    socket_dir = parse_qs(urlsplit(dsn).query).get("host", [""])[0]
    return bool(socket_dir) and Path(socket_dir).resolve().is_relative_to(embedded_pgdata().resolve())


def is_ours(dsn: str) -> bool:
    """Created by this project (or on the embedded server): the whole database is the demo's."""
    return is_embedded(dsn) or database_comment(dsn) == DEMO_MARKER


def is_adopted(dsn: str) -> bool:
    """Given to the demo by the user: only its project schemas are the demo's."""
    return database_comment(dsn) == ADOPTED_MARKER


def user_tables(dsn: str, limit: int = 5) -> list[str]:
    """Some of the database's own objects (tables, views, sequences, functions outside the system
    schemas); empty: nothing to lose."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name FROM ("
            " SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "  WHERE c.relkind IN ('r', 'p', 'm', 'v', 'f', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            "  AND n.nspname NOT LIKE 'pg\\_%%'"
            " UNION ALL SELECT n.nspname || '.' || p.proname || '()' FROM pg_proc p JOIN pg_namespace n"
            "  ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            "  AND n.nspname NOT LIKE 'pg\\_%%') objects ORDER BY 1 LIMIT %s", (limit,)).fetchall()
    return [r[0] for r in rows]


def claim_demo_database(dsn: str, adopt: bool = False) -> str:
    """The events database `make lifecycle` may fill and reset: one it created (marked), the
    embedded one, or an empty one (marked now). Any other is refused before anything changes,
    unless `adopt` says the user owns it and gives it to the demo. Returns a usable DSN."""
    dsn = ensure_database(dsn)
    if is_ours(dsn) or is_adopted(dsn):
        return dsn
    dbname = urlsplit(dsn).path.lstrip("/") or "postgres"
    tables = user_tables(dsn)
    if tables and not adopt:
        raise NotOurDatabase(
            f"the events database {dbname!r} at {urlsplit(dsn).hostname or 'a local socket'} holds tables "
            f"({', '.join(tables)}{', ...' if len(tables) == 5 else ''}) and was not created by this project. "
            "make lifecycle replaces the source tables (exp.*, app.*, sim.*) and drops schema ml, so it refuses to "
            "touch it. Either point PLANNER_EVENTS_DSN at a fresh database name (it is created and marked as the "
            "demo's own), e.g. PLANNER_EVENTS_DSN=postgresql://postgres@127.0.0.1:5432/planner_demo make lifecycle, "
            "or, if this database is a demo database you own and its data may go, "
            "make lifecycle ARGS=--adopt-database")
    import psycopg

    with psycopg.connect(_with_db(dsn, "postgres"), autocommit=True) as conn:
        _mark(conn, dbname, ADOPTED_MARKER if tables else DEMO_MARKER)
    return dsn


def drop_project_schemas(dsn: str) -> None:
    """What `make clean` removes from an adopted database: the demo's schemas, nothing else."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in PROJECT_SCHEMAS:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def drop_database(dsn: str) -> None:
    import psycopg

    dbname = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(_with_db(dsn, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def airflow_connection_json(dsn: str) -> str:
    """An `AIRFLOW_CONN_...` value for a libpq URI, including unix-socket ones (`?host=/dir`)."""
    import json
    from urllib.parse import parse_qs, unquote

    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.pop("host", [parts.hostname or "127.0.0.1"])[0]
    conn = {"conn_type": "postgres", "host": host, "login": unquote(parts.username or "postgres"),
            "schema": parts.path.lstrip("/") or "postgres"}
    if parts.password:
        conn["password"] = unquote(parts.password)
    if parts.port:
        conn["port"] = parts.port
    if query:
        conn["extra"] = {k: v[0] for k, v in query.items()}
    return json.dumps(conn)
