"""`make clean`: forget everything `make lifecycle` made, so the next run starts from nothing.

Local state is split between `var/` (datasets, models, MLflow, the Airflow homes, the embedded
PostgreSQL) and the events database, whose `ml` schema holds the promotion history. Deleting
only `var/` would leave that history naming model versions of a registry that no longer exists,
so the events database goes too, but only where it is local (a loopback host, a unix socket, or
the embedded server) and this project created it (its marker comment): any other database is
somebody's data, and is left alone.
"""
from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlsplit

from include.core.config import PROJECT_ROOT, settings
from include.core.local_postgres import (
    database_exists,
    drop_database,
    drop_project_schemas,
    embedded_pgdata,
    is_adopted,
    is_ours,
    server_answers,
    stop_embedded,
)

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def is_local(dsn: str) -> bool:
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    return (parts.hostname or "") in LOCAL_HOSTS or socket_dir.startswith("/")


def drop_events_database(dsn: str) -> str | None:
    """Drop the events database if it is local and this project's own; says what it did."""
    name = urlsplit(dsn).path.lstrip("/")
    if not is_local(dsn):
        return f"left alone: the events database at {urlsplit(dsn).hostname} is not on this machine"
    if not (server_answers(dsn) and database_exists(dsn)):
        return None
    if is_adopted(dsn):
        drop_project_schemas(dsn)
        return f"dropped the schemas exp, app, sim and ml of the adopted events database {name} (the database stays)"
    if not is_ours(dsn):
        return f"left alone: the events database {name} was not created by this project (no marker comment)"
    drop_database(dsn)
    return f"dropped the events database {name} (events and the ml schema)"


TEAM_PREFIX = "planner_team"  # make team-lifecycle's databases: <prefix>_events, _airflow, _mlflow, _mlflow_auth
TEAM_DATABASES = ("events", "airflow", "mlflow", "mlflow_auth")


def team_databases(events_dsn: str, prefix: str = TEAM_PREFIX) -> list[str]:
    """The DSNs of the databases `make team-lifecycle` creates beside the events database's server."""
    parts = urlsplit(events_dsn)
    return [parts._replace(path=f"/{prefix}_{name}").geturl() for name in TEAM_DATABASES]


def drop_team_databases(events_dsn: str, prefix: str = TEAM_PREFIX) -> list[str]:
    """Drop those of them that are local and this project's own (marked); what it did, per database."""
    return [said for said in map(drop_events_database, team_databases(events_dsn, prefix)) if said]


def main() -> int:
    for said in [drop_events_database(settings().events_dsn), *drop_team_databases(settings().events_dsn)]:
        if said:
            print(said)
    if embedded_pgdata().exists():
        stop_embedded()
        print(f"stopped the embedded PostgreSQL ({embedded_pgdata()})")
    for path in (PROJECT_ROOT / "var", PROJECT_ROOT / "test-artifacts"):
        if path.exists():
            shutil.rmtree(path)
            print(f"removed {path.relative_to(PROJECT_ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
