"""Fixtures of the retention tests: a promotion-history database of their own, and helpers that age
what the project wrote (modification times in the past, the way a real week or month ages them)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

DAY_S = 86400


def age(path: Path, days: float) -> None:
    """Set the modification time of `path` and everything under it to `days` ago."""
    when = time.time() - days * DAY_S
    for directory, subdirs, files in os.walk(path):
        for name in subdirs + files:
            os.utime(os.path.join(directory, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)


def snapshot(root: Path) -> dict[str, int]:
    """{relative path: size} of every file under `root` (directories as size -1)."""
    found = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            found[os.path.relpath(os.path.join(directory, name), root) + "/"] = -1
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found


@pytest.fixture()
def ml_dsn(events_dsn):
    """A database of this test's own holding an empty `ml` schema (the promotion history)."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    from include.core.local_postgres import drop_database, ensure_database
    from include.promotion.history import ensure_schema

    parts = urlsplit(events_dsn)
    dsn = ensure_database(urlunsplit(parts._replace(path=f"{parts.path}_retention_{uuid.uuid4().hex[:6]}")))
    ensure_schema(dsn)
    yield dsn
    drop_database(dsn)


def record_champion(dsn: str, version: str, previous: str | None = None) -> None:
    """A completed promotion of `version`: its decision, deployment and history rows."""
    from include.core import names
    from include.promotion.history import Record, complete_decision, connect, record_decision

    with connect(dsn) as conn, conn.transaction():
        decision = record_decision(conn, Record(names.REGISTERED_MODEL_NAME, version, "promote", "promoted",
                                                previous, [], {}, {}, state="pending"))
        complete_decision(conn, decision, f"models:/{names.REGISTERED_MODEL_NAME}/{version}")
