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
    if pgdata.exists():
        import pgserver

        pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()


def ensure_database(dsn: str) -> str:
    """Make sure the server answers and the DSN's database exists; returns a usable DSN.

    If nothing answers at `dsn`, the embedded server is started and the same database name
    is created there.
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
    return dsn


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
