"""Thin PostgreSQL helpers for the source database (psycopg 3)."""
from __future__ import annotations

from importlib import resources


def schema_sql() -> str:
    return resources.files("include.events").joinpath("schema.sql").read_text()


def connect(dsn: str, **kwargs):
    import psycopg

    return psycopg.connect(dsn, **kwargs)


def apply_schema(dsn: str) -> None:
    """Create the source schemas, tables and indexes if they do not exist (idempotent)."""
    with connect(dsn, autocommit=True) as conn:
        # Serialise concurrent first starts (two test sessions, two task retries).
        conn.execute("SELECT pg_advisory_lock(hashtext('planner.schema'))")
        try:
            conn.execute(schema_sql())
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('planner.schema'))")
