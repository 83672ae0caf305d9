"""Content digests shared by the phases (dataset digests, model manifests)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stream_sha256(fs, path: str) -> str:
    """sha256 of a file on any fsspec filesystem, read in blocks (object storage included)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=8 << 20) as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(uri: str, name: str) -> str:
    """sha256 of a file of a published version, wherever it lies: the same bytes give the same
    digest on a local root and on object storage."""
    from include.core import storage

    fs, path = storage.published(uri)
    if storage.is_local(uri):
        return file_sha256(Path(path) / name)
    return stream_sha256(fs, f"{path.rstrip('/')}/{name}")


def feature_code_sha256() -> str:
    """The sha256 of include/core/features.py as this process imports it: the trainer records it in the
    manifest, and registration refuses a model whose texts came from other feature code."""
    from include.core import features

    return file_sha256(Path(features.__file__))
