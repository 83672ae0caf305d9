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
REVISION_PREFIX = "rev-"
REVISION_FILE = "revision.json"     # inside a revision: its digest and files (not part of the digest)
UNDIGESTED_FILES = {names.SUCCESS_MARKER, REVISION_FILE, names.DATASET_VALIDATION_FILE}


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def datasets_root(root: str | None = None) -> str:
    return join(root or settings().storage_root, "datasets", names.DATASET_NAME)


def dataset_uri(version: str, root: str | None = None) -> str:
    return join(datasets_root(root), version)


def models_root(root: str | None = None) -> str:
    return join(root or settings().storage_root, "models", names.REGISTERED_MODEL_NAME)


def checkpoints_root(root: str | None = None) -> str:
    """Where training checkpoints go, `<root>/checkpoints/<training run id>/` (outside every model directory)."""
    return join(root or settings().storage_root, "checkpoints")


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


def read_pointer(uri: str) -> dict | None:
    """The version's `_PUBLISHED` pointer ({"attempt": <child>, ...}), or None where it has none."""
    import json

    fs, path = filesystem(uri)
    try:
        pointer = json.loads(fs.cat_file(join(path, POINTER)))
    except FileNotFoundError:
        return None
    child = pointer.get("attempt")
    if not isinstance(child, str) or "/" in child or not child.startswith((ATTEMPT_PREFIX, REVISION_PREFIX)):
        raise ValueError(f"{join(uri, POINTER)} names {child!r}, which is not an attempt or revision of this version")
    return pointer


def published_content(uri: str) -> dict | None:
    """{"uri": where the version's published content lies, "revision": its revision name ("" for
    an attempt or a version from before revisions), "digest": its content digest (or "")}, read
    from one look at the pointer; None while nothing is published (being written, interrupted, absent)."""
    fs, path = filesystem(uri)
    pointer = read_pointer(uri)
    if pointer is not None:
        child = pointer["attempt"]
        if not fs.isfile(join(path, child, names.SUCCESS_MARKER)):
            return None
        is_revision = child.startswith(REVISION_PREFIX)
        return {"uri": join(uri, child), "revision": child if is_revision else "",
                "digest": pointer.get("digest", "") if is_revision else ""}
    return {"uri": uri, "revision": "", "digest": ""} if fs.isfile(join(path, names.SUCCESS_MARKER)) else None


def resolve(uri: str) -> str | None:
    """Where the published content of the version at `uri` lies, or None while nothing is published."""
    content = published_content(uri)
    return content["uri"] if content else None


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
        try:
            os.rename(staging, final)
        except BaseException:
            if old is not None and not final.exists():
                os.rename(old, final)  # put the old version back: never neither
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)

    from datetime import UTC, datetime

    fs, path = filesystem(final_uri)
    attempt = f"{ATTEMPT_PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    for file in files:
        fs.put_file(str(file), join(path, attempt, file.relative_to(staging).as_posix()))
    fs.pipe_file(join(path, attempt, names.SUCCESS_MARKER), b"")
    _write_pointer(final_uri, attempt, files=len(files))
    shutil.rmtree(staging, ignore_errors=True)
    return final_uri


def content_digest_of(directory: Path) -> str:
    """sha256 over every file's name and sha256 (validation and bookkeeping files excepted): the
    identity of a revision's content, the same wherever it is published."""
    import hashlib

    from include.core.hashing import file_sha256

    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = file.relative_to(directory).as_posix()
        if name not in UNDIGESTED_FILES:
            digest.update(f"{name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _write_pointer(uri: str, child: str, **facts) -> None:
    """Switch the version to `child` in one atomic step: a single PUT on object storage, a
    rename over the old pointer locally."""
    import json
    from datetime import UTC, datetime

    body = json.dumps({"attempt": child, "published_at": datetime.now(UTC).isoformat(), **facts}).encode()
    if is_local(uri):
        target = local_path(uri) / POINTER
        partial = target.with_name(f"{POINTER}.{uuid.uuid4().hex[:8]}.partial")
        with open(partial, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())  # a power loss must not leave an empty pointer after the rename
        os.replace(partial, target)
    else:
        fs, path = filesystem(uri)
        fs.pipe_file(join(path, POINTER), body)


class RevisionCorrupted(RuntimeError):
    """A published revision no longer holds the content its name says; nothing was changed."""


def publish_revision(staging: Path, final_uri: str) -> dict:
    """Publish a fully written staging directory as an immutable revision of `final_uri`,
    `<final_uri>/rev-<digest>`, and point the version at it.

    A revision is never rewritten or deleted once complete: identical content is a no-op (the
    version points at the existing revision, nothing is written), different content becomes a
    new revision beside the others. Returns {"uri", "revision", "revision_uri", "digest", "created"}.
    """
    import json

    digest = content_digest_of(staging)
    revision = f"{REVISION_PREFIX}{digest[:16]}"
    revision_uri = join(final_uri, revision)
    result = {"uri": final_uri, "revision": revision, "revision_uri": revision_uri, "digest": digest}
    pointer = read_pointer(final_uri)
    if is_complete(revision_uri):
        problems = verify_revision(revision_uri, digest)
        if problems:  # the same content was published before and has changed since: never point at it
            raise RevisionCorrupted("; ".join(problems) + f"; the new build is kept at {staging} for inspection")
        discard_staging(staging)
        if not pointer or pointer["attempt"] != revision:
            _write_pointer(final_uri, revision, digest=digest)
        return {**result, "created": False}
    marker = staging / names.SUCCESS_MARKER
    marker.unlink(missing_ok=True)
    (staging / REVISION_FILE).write_text(json.dumps({"digest": digest, "revision": revision}, indent=2) + "\n")
    if is_local(final_uri):
        target = local_path(revision_uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(revision_uri):  # not a twin build that won the race: something else is there
                raise FileExistsError(f"{target} exists but is not a complete revision (not written by a publish: "
                                      "a publish renames a complete directory); move it aside and retry") from None
            discard_staging(staging)
            if not pointer or pointer["attempt"] != revision:
                _write_pointer(final_uri, revision, digest=digest)
            return {**result, "created": False}
    else:
        fs, path = filesystem(revision_uri)
        for file in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != names.SUCCESS_MARKER):
            fs.put_file(str(file), join(path, file.relative_to(staging).as_posix()))
        fs.pipe_file(join(path, names.SUCCESS_MARKER), b"")
        discard_staging(staging)
    _write_pointer(final_uri, revision, digest=digest)
    return {**result, "created": True}


def revision_digest(revision_uri: str) -> str:
    """`content_digest_of` computed where the revision lies, each file streamed from its store:
    no scratch copy, so it costs one read of the bytes on a local root and on object storage alike."""
    import hashlib

    from include.core.hashing import stream_sha256

    if is_local(revision_uri):
        return content_digest_of(local_path(revision_uri))
    fs, path = filesystem(revision_uri)
    base = path.rstrip("/")
    digest = hashlib.sha256()
    for remote in sorted(fs.find(base)):
        name = remote[len(base) + 1:]
        if name not in UNDIGESTED_FILES:
            digest.update(f"{name}\0{stream_sha256(fs, remote)}\n".encode())
    return digest.hexdigest()


def verify_revision(revision_uri: str, digest: str) -> list[str]:
    """What is wrong with a revision the caller expects to hold `digest` (empty: it does)."""
    if not is_complete(revision_uri):
        return [f"dataset revision {revision_uri} is not complete or no longer exists"]
    found = revision_digest(revision_uri)
    if found != digest:
        return [f"dataset revision {revision_uri} holds content {found[:16]}, not the {digest[:16]} it was "
                f"trained on: its files changed after publication"]
    return []


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
