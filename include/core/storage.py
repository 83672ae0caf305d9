"""Storage layout (DESIGN §3) and atomic publication of a directory of files.

A local root publishes by renaming a fully written staging directory (one syscall, so a
reader never sees half a version). An object-storage root (any fsspec URL) has no rename:
files are uploaded first and `_SUCCESS` last, after removing the old marker, so readers
that gate on `_SUCCESS` (all of ours do) never read a half-written version.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from include.core import names
from include.core.config import settings

STAGING_DIR = "_staging"


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def datasets_root(root: str | None = None) -> str:
    return join(root or settings().storage_root, "datasets", names.DATASET_NAME)


def dataset_uri(version: str, root: str | None = None) -> str:
    return join(datasets_root(root), version)


def models_root(root: str | None = None) -> str:
    return join(root or settings().storage_root, "models", names.REGISTERED_MODEL_NAME)


def replay_uri(window_label: str, root: str | None = None) -> str:
    """Where offline evaluation publishes the rows of a replay window (`<start>_<end>`)."""
    return join(root or settings().storage_root, "replays", names.DATASET_NAME, window_label)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def new_staging_dir(final_uri: str) -> Path:
    """A private local directory to write a version into before publishing it.

    For a local root it sits beside the final directory (same filesystem, so the publish
    rename is atomic); for a remote root it is a local scratch directory.
    """
    token = f"{Path(final_uri.rstrip('/')).name}-{uuid.uuid4().hex[:12]}"
    if is_local(final_uri):
        final = local_path(final_uri)
        staging = final.parent / STAGING_DIR / token
        staging.mkdir(parents=True, exist_ok=False)
        return staging
    return Path(tempfile.mkdtemp(prefix=f"{token}-"))


def filesystem(uri: str):
    """(fsspec filesystem, path) for any root: local paths, file://, s3://, memory://, ..."""
    import fsspec

    if is_local(uri):
        return fsspec.filesystem("file"), str(local_path(uri))
    return fsspec.core.url_to_fs(uri)


def is_complete(uri: str) -> bool:
    """A version is complete when its `_SUCCESS` marker exists (written last)."""
    fs, path = filesystem(uri)
    return fs.isfile(join(path, names.SUCCESS_MARKER))


def publish_dir(staging: Path, final_uri: str) -> str:
    """Publish a fully written staging directory as `final_uri`, `_SUCCESS` last.

    Re-publishing a version replaces it whole. Locally the new directory is renamed into
    place before the old one is deleted; on object storage the old marker and files are
    removed first, so readers see "incomplete" until the new `_SUCCESS` lands.
    """
    marker = staging / names.SUCCESS_MARKER
    if marker.exists():
        marker.unlink()
    if is_local(final_uri):
        final = local_path(final_uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        old = None
        if final.exists():
            old = final.parent / STAGING_DIR / f"replaced-{final.name}-{uuid.uuid4().hex[:12]}"
            old.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, old)
        os.rename(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)

    fs, path = filesystem(final_uri)
    remote_marker = join(path, names.SUCCESS_MARKER)
    if fs.exists(remote_marker):
        fs.rm(remote_marker)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        fs.put_file(str(file), join(path, file.relative_to(staging).as_posix()))
    fs.pipe_file(remote_marker, b"")
    shutil.rmtree(staging, ignore_errors=True)
    return final_uri


def discard_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def newest_complete_child(uri: str) -> str | None:
    """Name of the newest (by name) complete version directly under `uri`, if any."""
    fs, path = filesystem(uri)
    children = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.isdir(path) else []
    for name in sorted(children, reverse=True):
        if not name.startswith("_") and is_complete(join(uri, name)):
            return name
    return None


def read_text(uri: str, name: str) -> str:
    fs, path = filesystem(uri)
    return fs.cat_file(join(path, name)).decode()
