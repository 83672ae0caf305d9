"""Storage layout and atomic publication of a directory of files (docs/contracts.md).

A version (a dataset, a model directory, a replay set) has one logical URI,
`<root>/datasets/planner/<version>`, `<root>/models/planner_acceptance/<run id>`, ..., and
every reader goes through `resolve` to find its published content:

- A local root publishes by renaming a fully written staging directory into place (one
  syscall, so a reader never sees half a version): the content is the directory itself,
  with `_SUCCESS` written last.
- An object-storage root (any fsspec URL: s3://, gs://, ...) has no rename. Each publish
  uploads into an attempt prefix of its own, `<uri>/_attempt-<utc time>-<token>/`, with
  `_SUCCESS` last there, and then writes the small pointer object `<uri>/_PUBLISHED` (a
  single PUT, atomic on every object store) naming that attempt. Readers follow the
  pointer, so the previous version stays readable until the new one is whole, an upload
  that breaks off is never seen, and a retry simply publishes another attempt.
- Versions written before the pointer existed (`_SUCCESS` directly under the URI) still
  resolve; a pointer, once written, takes precedence.
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
POINTER = "_PUBLISHED"
ATTEMPT_PREFIX = "_attempt-"


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
    # No listing cache: another worker's publish must be seen by the next call, not a stale listing.
    return fsspec.core.url_to_fs(uri, use_listings_cache=False)


def resolve(uri: str) -> str | None:
    """Where the published content of the version at `uri` lies, or None while nothing is
    published (still being written, interrupted, or absent)."""
    import json

    fs, path = filesystem(uri)
    pointer = join(path, POINTER)
    if not is_local(uri):
        try:
            attempt = json.loads(fs.cat_file(pointer))["attempt"]
        except FileNotFoundError:
            attempt = None
        if attempt is not None:
            if "/" in attempt or not attempt.startswith(ATTEMPT_PREFIX):
                raise ValueError(f"{pointer} names {attempt!r}, which is not an attempt of this version")
            return join(uri, attempt) if fs.isfile(join(path, attempt, names.SUCCESS_MARKER)) else None
    return uri if fs.isfile(join(path, names.SUCCESS_MARKER)) else None


def is_complete(uri: str) -> bool:
    """A version is complete when it is published: its pointer, or its `_SUCCESS` marker (written last)."""
    return resolve(uri) is not None


def published(uri: str):
    """(filesystem, path) of the version's published content, where readers read its files; the
    URI itself while nothing is published (so a read fails with the file's name)."""
    return filesystem(resolve(uri) or uri)


def publish_dir(staging: Path, final_uri: str) -> str:
    """Publish a fully written staging directory as `final_uri`, `_SUCCESS` last.

    Re-publishing a version replaces it whole. Locally the new directory is renamed into
    place before the old one is deleted; on object storage the new attempt is uploaded whole
    before the pointer switches to it, so readers see the old version until then.
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

    import json
    from datetime import UTC, datetime

    fs, path = filesystem(final_uri)
    attempt = f"{ATTEMPT_PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    for file in files:
        fs.put_file(str(file), join(path, attempt, file.relative_to(staging).as_posix()))
    fs.pipe_file(join(path, attempt, names.SUCCESS_MARKER), b"")
    fs.pipe_file(join(path, POINTER), json.dumps({
        "attempt": attempt, "files": len(files), "published_at": datetime.now(UTC).isoformat()}).encode())
    shutil.rmtree(staging, ignore_errors=True)
    return final_uri


def download_dir(uri: str, target: Path) -> Path:
    """A local copy of the version's published content (a scratch copy: the caller removes it)."""
    fs, path = published(uri)
    target.mkdir(parents=True, exist_ok=True)
    for remote in sorted(fs.find(path)):
        relative = remote[len(path.rstrip("/")) + 1:]
        local = target / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
    return target


def list_files(uri: str) -> dict[str, int]:
    """{relative name: size} of every file of the version's published content."""
    fs, path = published(uri)
    prefix = path.rstrip("/") + "/"
    return {name[len(prefix):]: int(info.get("size") or 0)
            for name, info in sorted(fs.find(path, detail=True).items()) if name.startswith(prefix)}


def rsplit_name(uri: str) -> str:
    """The last segment of a URI or path."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


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
    fs, path = published(uri)
    return fs.cat_file(join(path, name)).decode()
