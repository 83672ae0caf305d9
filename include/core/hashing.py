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


def content_digest(uri: str, name: str) -> str:
    """sha256 of a file under a local root; the filesystem's own checksum (e.g. the S3 ETag) elsewhere."""
    from include.core import storage

    if storage.is_local(uri):
        return file_sha256(storage.local_path(uri) / name)
    fs, path = storage.filesystem(uri)
    return str(fs.checksum(f"{path.rstrip('/')}/{name}"))
