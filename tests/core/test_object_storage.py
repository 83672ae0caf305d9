"""Publication on object storage, against a real S3-protocol server on loopback: every attempt
uploads into its own prefix and the `_PUBLISHED` pointer, written last, makes it the version;
an upload killed half-way is never visible, the previous version stays readable throughout,
and a retry converges. Versions written before the pointer (`_SUCCESS` at the top) still resolve."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from include.core import names, storage

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _staging_with(final_uri: str, content: str, files: int = 1, size: int = 0) -> Path:
    staging = storage.new_staging_dir(final_uri)
    (staging / names.DATASET_TRAINING_FILE).write_text(content)
    (staging / names.DATASET_SCHEMA_FILE).write_text("{}")
    for index in range(files - 1):
        (staging / f"part-{index:03d}.bin").write_bytes(os.urandom(size))
    return staging


def _read(uri: str) -> str:
    return storage.read_text(uri, names.DATASET_TRAINING_FILE)


def test_publish_uploads_an_attempt_then_the_pointer_and_republish_switches_it(s3_root):
    uri = storage.dataset_uri("2026-11-23")
    assert storage.resolve(uri) is None

    storage.publish_dir(_staging_with(uri, "v1"), uri)
    first = storage.resolve(uri)
    assert first.startswith(uri + "/" + storage.ATTEMPT_PREFIX) and _read(uri) == "v1"
    assert sorted(storage.list_files(uri)) == [names.SUCCESS_MARKER, names.DATASET_SCHEMA_FILE,
                                               names.DATASET_TRAINING_FILE]

    storage.publish_dir(_staging_with(uri, "v2"), uri)
    assert storage.resolve(uri) != first and _read(uri) == "v2"
    fs, path = storage.filesystem(first)
    assert fs.cat_file(storage.join(path, names.DATASET_TRAINING_FILE)) == b"v1"  # nothing deleted under readers
    assert storage.newest_complete_child(storage.datasets_root()) == "2026-11-23"


def test_a_version_written_before_the_pointer_still_resolves_until_a_new_one_is_published(s3_root):
    uri = storage.dataset_uri("2026-11-16")
    fs, path = storage.filesystem(uri)
    fs.pipe_file(storage.join(path, names.DATASET_TRAINING_FILE), b"legacy")
    assert storage.resolve(uri) is None  # no marker yet: incomplete
    fs.pipe_file(storage.join(path, names.SUCCESS_MARKER), b"")
    assert storage.resolve(uri) == uri and _read(uri) == "legacy"

    storage.publish_dir(_staging_with(uri, "new"), uri)
    assert _read(uri) == "new"


PUBLISH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from include.core import storage
    storage.publish_dir(Path(sys.argv[1]), sys.argv[2])
""")


@pytest.mark.timeout(300)
def test_an_upload_killed_half_way_is_never_visible_and_a_retry_converges(s3_root, tmp_path):
    uri = storage.dataset_uri("2026-11-23")
    storage.publish_dir(_staging_with(uri, "v1"), uri)
    old = storage.resolve(uri)
    staging = _staging_with(uri, "v2", files=60, size=1 << 20)
    fs, path = storage.filesystem(uri)

    upload = subprocess.Popen([sys.executable, "-c", PUBLISH, str(staging), uri], cwd=PROJECT_ROOT,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        attempts = [p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1] != storage.rsplit_name(old)
                    and storage.ATTEMPT_PREFIX in p.rsplit("/", 1)[-1]]
        if attempts and fs.find(attempts[0]):
            break
        assert upload.poll() is None, "the upload finished before it could be interrupted"
        time.sleep(0.05)
    upload.send_signal(signal.SIGKILL)
    upload.wait()
    [partial] = attempts
    assert 0 < len(fs.find(partial)) < 61  # some of the 61 files of the new attempt landed, not all

    assert storage.resolve(uri) == old and _read(uri) == "v1"  # readers never see the broken attempt
    assert not fs.isfile(storage.join(partial, names.SUCCESS_MARKER))

    storage.publish_dir(staging, uri)  # the retry (the staging directory survived the kill)
    assert _read(uri) == "v2" and storage.resolve(uri) not in (old, f"s3://{partial}")
    assert len(storage.list_files(uri)) == 61 + 1  # 61 files and _SUCCESS


def test_a_pointer_naming_something_else_is_refused(s3_root):
    uri = storage.dataset_uri("2026-11-23")
    fs, path = storage.filesystem(uri)
    fs.pipe_file(storage.join(path, storage.POINTER), json.dumps({"attempt": "../../models/x"}).encode())
    with pytest.raises(ValueError, match="not an attempt"):
        storage.resolve(uri)


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path, monkeypatch):
    """The same test on a local root and on the S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_root")
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", str(tmp_path / "storage"))
    return str(tmp_path / "storage")


def _files(uri: str) -> dict[str, bytes]:
    fs, path = storage.filesystem(uri)
    return {name: fs.cat_file(storage.join(path, name)) for name in storage.list_files(uri)}


def test_revisions_are_immutable_identical_content_is_a_no_op_and_the_newest_is_the_version(any_root):
    uri = storage.dataset_uri("2026-11-23")
    first = storage.publish_revision(_staging_with(uri, "rows of a 28-day window"), uri)
    assert first["created"] and storage.resolve(uri) == first["revision_uri"]
    kept = _files(first["revision_uri"])

    again = storage.publish_revision(_staging_with(uri, "rows of a 28-day window"), uri)
    assert not again["created"] and again["revision_uri"] == first["revision_uri"]

    other = storage.publish_revision(_staging_with(uri, "rows with late events"), uri)
    assert other["created"] and other["revision"] != first["revision"]
    assert storage.resolve(uri) == other["revision_uri"] and _read(uri) == "rows with late events"
    assert _files(first["revision_uri"]) == kept  # never rewritten or deleted
    assert storage.published_content(uri) == {"uri": other["revision_uri"], "revision": other["revision"],
                                              "digest": other["digest"]}
    assert storage.verify_revision(first["revision_uri"], first["digest"]) == []
    assert "not the" in storage.verify_revision(first["revision_uri"], other["digest"])[0]


def test_a_rebuild_never_points_at_a_revision_whose_files_changed_since(any_root):
    uri = storage.dataset_uri("2026-11-23")
    first = storage.publish_revision(_staging_with(uri, "rows"), uri)
    fs, path = storage.filesystem(first["revision_uri"])
    fs.pipe_file(storage.join(path, names.DATASET_TRAINING_FILE), b"rows, tampered with")
    storage.publish_revision(_staging_with(uri, "other rows"), uri)  # the version now points elsewhere

    with pytest.raises(storage.RevisionCorrupted, match="not the"):
        storage.publish_revision(_staging_with(uri, "rows"), uri)  # identical to the first build
    assert _read(uri) == "other rows"
