"""Atomic publication on a local root: a reader never sees a half-written version (object
storage: tests/core/test_object_storage.py, against a real S3 server)."""
from __future__ import annotations

import json

import pytest

from include.core import names, storage
from include.core.local_postgres import airflow_connection_json


def _staging_with(final_uri: str, content: str):
    staging = storage.new_staging_dir(final_uri)
    (staging / "training.parquet").write_text(content)
    (staging / "schema.json").write_text("{}")
    return staging


def test_local_publish_is_one_rename_with_success_marker(tmp_path):
    final = str(tmp_path / "datasets" / "planner" / "2026-11-23")
    staging = _staging_with(final, "v1")
    assert staging.parent.parent == tmp_path / "datasets" / "planner"  # same filesystem: atomic rename
    assert not storage.is_complete(final)

    storage.publish_dir(staging, final)

    assert storage.is_complete(final) and not staging.exists()
    assert (tmp_path / "datasets/planner/2026-11-23/training.parquet").read_text() == "v1"


def test_republish_replaces_the_version_whole(tmp_path):
    final = str(tmp_path / "v")
    storage.publish_dir(_staging_with(final, "v1"), final)
    staging = _staging_with(final, "v2")
    (storage.local_path(final) / "stale.txt").write_text("from v1")

    storage.publish_dir(staging, final)

    assert (tmp_path / "v/training.parquet").read_text() == "v2"
    assert not (tmp_path / "v/stale.txt").exists()
    assert [p.name for p in (tmp_path / storage.STAGING_DIR).iterdir()] == []


def test_an_interrupted_write_leaves_nothing_that_looks_complete(tmp_path):
    final = str(tmp_path / "v")
    staging = _staging_with(final, "partial")
    # the writer dies here: no publish
    assert not storage.is_complete(final) and not storage.local_path(final).exists()
    assert not (staging / names.SUCCESS_MARKER).exists()


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://postgres@127.0.0.1:5432/planner_events",
     {"conn_type": "postgres", "host": "127.0.0.1", "login": "postgres", "schema": "planner_events", "port": 5432}),
    ("postgresql://postgres:@/planner_events?host=/tmp/pg-socket",
     {"conn_type": "postgres", "host": "/tmp/pg-socket", "login": "postgres", "schema": "planner_events"}),
    ("postgresql://ml%40team:p%40ss@db.internal:6432/events?sslmode=require",
     {"conn_type": "postgres", "host": "db.internal", "login": "ml@team", "password": "p@ss", "schema": "events",
      "port": 6432, "extra": {"sslmode": "require"}}),
])
def test_airflow_connection_from_a_libpq_uri(dsn, expected):
    assert json.loads(airflow_connection_json(dsn)) == expected


def test_a_republish_that_fails_at_the_rename_puts_the_old_version_back(tmp_path, monkeypatch):
    import os

    final = str(tmp_path / "v")
    storage.publish_dir(_staging_with(final, "v1"), final)
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the first moves the old version aside, the second would move the new one in
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        storage.publish_dir(_staging_with(final, "v2"), final)
    monkeypatch.setattr(os, "rename", real)
    assert storage.is_complete(final) and (tmp_path / "v/training.parquet").read_text() == "v1"
