"""`make clean`: forget everything `make lifecycle` made, so the next run starts from nothing.

Local state is split between `var/` (datasets, models, MLflow, the Airflow homes, the embedded
PostgreSQL) and the events database, whose `ml` schema holds the promotion history. Deleting
only `var/` would leave that history naming model versions of a registry that no longer exists,
so the events database goes too, but only where it is local (a loopback host, a unix socket, or
the embedded server): a database on another host is somebody's data, and is left alone.
"""
from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlsplit

from include.core.config import PROJECT_ROOT, settings
from include.core.local_postgres import drop_database, embedded_pgdata, server_answers, stop_embedded

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def is_local(dsn: str) -> bool:
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    return (parts.hostname or "") in LOCAL_HOSTS or socket_dir.startswith("/")


def main() -> int:
    dsn = settings().events_dsn
    if not is_local(dsn):
        print(f"left alone: the events database at {urlsplit(dsn).hostname} is not on this machine")
    elif server_answers(dsn):
        drop_database(dsn)
        print(f"dropped the events database {urlsplit(dsn).path.lstrip('/')} (events and the ml schema)")
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
