"""The compose stack's database against a real PostgreSQL: docker/postgres-init.sql makes roles
that reach what each service needs and no more, and the README's backup and restore lines
(`pg_dump`, `pg_restore`) bring the `ml` schema and the MLflow database back after a loss.

No Docker here: the init file runs through psql as the postgres image runs it (the superuser,
ON_ERROR_STOP, the passwords in the environment), on throwaway copies of the stack's databases
and roles (every name suffixed), dropped afterwards; the README's commands run without their
`docker compose ... exec -T postgres` prefix, against the same copies."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import TEST_SERVER_DSN

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INIT_SQL = PROJECT_ROOT / "docker" / "postgres-init.sql"
ROLES = ("planner_airflow", "planner_events_owner", "planner_events_reader", "planner_ml_writer", "planner_tasks",
         "planner_mlflow")
DATABASES = ("airflow", "planner_events", "mlflow", "mlflow_auth")
PASSWORDS = {"AIRFLOW_DB_PASSWORD": "a" * 24, "EVENTS_OWNER_PASSWORD": "e" * 24, "TASKS_DB_PASSWORD": "t" * 24,
             "MLFLOW_DB_PASSWORD": "m" * 24}

pytestmark = pytest.mark.skipif(not (shutil.which("psql") and shutil.which("pg_dump") and shutil.which("pg_restore")),
                                reason="needs psql, pg_dump and pg_restore")


def _dsn(user: str, dbname: str) -> str:
    parts = urlsplit(TEST_SERVER_DSN)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", "/" + dbname, parts.query, ""))


def _renamed(text: str, names: dict[str, str]) -> str:
    pattern = r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b"
    return re.sub(pattern, lambda m: names[m.group(1)], text)


@pytest.fixture(scope="module")
def stack():
    """The init file, run as the postgres image runs it, on suffixed copies of its roles and databases."""
    import psycopg

    suffix = f"_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {name: name + suffix for name in (*ROLES, *DATABASES)}
    server = TEST_SERVER_DSN
    superuser = urlsplit(server).username or "postgres"
    sql = _renamed(INIT_SQL.read_text(), names)
    try:
        done = subprocess.run(["psql", "--no-psqlrc", "-X", "-v", "ON_ERROR_STOP=1", "-d", server, "-f", "-"],
                              input=sql, text=True, capture_output=True, env={**os.environ, **PASSWORDS}, timeout=120)
        assert done.returncode == 0, done.stderr
        yield {"names": names, "superuser": superuser,
               "dsn": lambda user, db: _dsn(names.get(user, user), names[db])}
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            for db in DATABASES:
                conn.execute(f'DROP DATABASE IF EXISTS "{names[db]}" WITH (FORCE)')
            for role in reversed(ROLES):
                conn.execute(f'DROP ROLE IF EXISTS "{names[role]}"')


def _denied(dsn: str, statement: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    except psycopg.OperationalError as refused:  # no CONNECT on that database
        assert "permission denied for database" in str(refused), refused
        return True
    return False


def test_each_role_reaches_what_it_needs_and_no_more(stack):
    import psycopg

    from include.events.db import apply_schema
    from include.promotion.history import ensure_schema

    dsn = stack["dsn"]
    # The owner applies the source DDL (airflow-init) and writes events (the generator).
    apply_schema(dsn("planner_events_owner", "planner_events"))
    with psycopg.connect(dsn("planner_events_owner", "planner_events"), autocommit=True) as conn:
        conn.execute("INSERT INTO exp.events (event_id, event_type, \"timestamp\") "
                     "VALUES (gen_random_uuid(), 'plan_generated', now())")
    # The tasks read the events, make and write schema ml (twice: it is idempotent, ALTERs included)...
    tasks = dsn("planner_tasks", "planner_events")
    ensure_schema(tasks)
    ensure_schema(tasks)
    with psycopg.connect(tasks, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM exp.events").fetchone()[0] == 1
        conn.execute("SELECT count(*) FROM app.households")
        conn.execute("INSERT INTO ml.promotion_decisions (model_name, version, action, outcome) "
                     "VALUES ('planner_acceptance', '1', 'promote', 'promoted')")
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    # ... and cannot change the events or their DDL, or reach another database.
    assert _denied(tasks, "INSERT INTO exp.events (event_id, event_type, \"timestamp\") "
                          "VALUES (gen_random_uuid(), 'x', now())")
    assert _denied(tasks, "DELETE FROM app.households")
    assert _denied(tasks, "CREATE TABLE exp.planted (x int)")
    for db in ("airflow", "mlflow", "mlflow_auth"):
        assert _denied(dsn("planner_tasks", db), "SELECT 1"), db
    # Airflow owns its metadata database only; MLflow its two.
    with psycopg.connect(dsn("planner_airflow", "airflow"), autocommit=True) as conn:
        conn.execute("CREATE TABLE metadata_probe (x int)")
    assert _denied(dsn("planner_airflow", "planner_events"), "SELECT 1")
    assert _denied(dsn("planner_airflow", "mlflow"), "SELECT 1")
    for db in ("mlflow", "mlflow_auth"):
        with psycopg.connect(dsn("planner_mlflow", db), autocommit=True) as conn:
            conn.execute("CREATE TABLE store_probe (x int)")
    assert _denied(dsn("planner_mlflow", "planner_events"), "SELECT 1")


def _readme_commands(tool: str) -> list[str]:
    """The README's backup-section lines that run `tool` in the postgres container, without the prefix."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("### Backup and restore"):]
    section = section[:section.index("\n## ")]
    prefix = "docker compose -f docker-compose.airflow.yml exec -T postgres "
    return [line.removeprefix(prefix) for line in section.splitlines() if line.startswith(prefix + tool + " ")]


def _run_readme_line(line: str, stack: dict, folder: Path) -> None:
    """One README line (`pg_dump ... > file` or `pg_restore ... < file`) on the throwaway copies."""
    command, redirect, file = re.match(r"(.*?) ([<>]) (\S+)$", line).groups()
    words = shlex.split(command)
    assert words[1:3] == ["-U", "postgres"], line
    words[2] = stack["superuser"]
    words[-1] = stack["names"][words[-1]]  # the database: pg_dump's last word, pg_restore's -d
    words[1:1] = ["-h", urlsplit(TEST_SERVER_DSN).hostname, "-p", str(urlsplit(TEST_SERVER_DSN).port or 5432)]
    with open(folder / file, "wb" if redirect == ">" else "rb") as stream:
        done = subprocess.run(words, stdout=stream if redirect == ">" else subprocess.PIPE,
                              stdin=stream if redirect == "<" else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, (line, done.stderr.decode())


def test_the_readme_backup_and_restore_bring_back_the_ml_schema_and_the_mlflow_database(stack, tmp_path):
    import psycopg

    from include.promotion.history import ensure_schema

    dsn = stack["dsn"]
    dumps, restores = _readme_commands("pg_dump"), _readme_commands("pg_restore")
    assert any("--schema=ml planner_events" in line for line in dumps), dumps
    assert {line.split()[-3] for line in restores} >= {"mlflow", "planner_events"}, restores
    tasks = dsn("planner_tasks", "planner_events")
    ensure_schema(tasks)
    with psycopg.connect(tasks, autocommit=True) as conn:
        conn.execute("INSERT INTO ml.promotion_decisions (model_name, version, action, outcome, approver) "
                     "VALUES ('planner_acceptance', '7', 'promote', 'promoted', 'ml-approver')")
    with psycopg.connect(dsn("planner_mlflow", "mlflow"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS registered_models (name text PRIMARY KEY)")
        conn.execute("INSERT INTO registered_models VALUES ('planner_acceptance')")
    with psycopg.connect(dsn("planner_events_owner", "planner_events"), autocommit=True) as conn:
        events_before = conn.execute("SELECT count(*) FROM exp.events").fetchone()[0]

    for line in dumps:
        _run_readme_line(line, stack, tmp_path)
    # The loss: the promotion records and the MLflow store are gone.
    with psycopg.connect(dsn(stack["superuser"], "planner_events"), autocommit=True) as conn:
        conn.execute("DROP SCHEMA ml CASCADE")
    with psycopg.connect(dsn("planner_mlflow", "mlflow"), autocommit=True) as conn:
        conn.execute("DROP TABLE registered_models")
    for line in restores:
        _run_readme_line(line, stack, tmp_path)

    with psycopg.connect(tasks, autocommit=True) as conn:
        rows = conn.execute("SELECT version, approver FROM ml.promotion_decisions WHERE version = '7'").fetchall()
        assert rows == [("7", "ml-approver")]
        owners = dict(conn.execute("SELECT c.relname, r.rolname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                                   "c.relnamespace JOIN pg_roles r ON r.oid = c.relowner WHERE n.nspname = 'ml' "
                                   "AND c.relkind = 'r'").fetchall())
        assert set(owners.values()) == {stack["names"]["planner_tasks"]}, owners
        schema_owner = conn.execute("SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
                                    "WHERE n.nspname = 'ml'").fetchone()[0]
        assert schema_owner == stack["names"]["planner_ml_writer"]
        ensure_schema(tasks)  # promotion runs on the restored schema as before
        assert conn.execute("SELECT count(*) FROM exp.events").fetchone()[0] == events_before  # events untouched
    with psycopg.connect(dsn("planner_mlflow", "mlflow"), autocommit=True) as conn:
        assert conn.execute("SELECT name FROM registered_models").fetchall() == [("planner_acceptance",)]
