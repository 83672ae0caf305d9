"""Which model directory may be registered, and whether it is complete and intact.

Pure decisions on paths and manifests (no MLflow, no Airflow): the `model_path` Param comes
from a person's trigger form or an Asset event, so it is validated before anything reads it,
and a directory is registered only when every file in its manifest is there with its sha256.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from include.core import names, storage
from include.core.hashing import file_sha256, stream_sha256


class ModelPathError(ValueError):
    """The model path is not one registration may read; the message says why."""


def resolve_model_path(model_path: str, models_root: str, must_exist: bool = True) -> Path:
    """The real directory of `model_path` if it lies inside the local models root.

    Refuses other schemes, `..` segments and anything that resolves (through symlinks)
    outside the root; a relative path is taken relative to the root. With `must_exist`
    false, a directory that training has not published yet is accepted (a sensor waits
    for it), but never a file.
    """
    if not model_path or not model_path.strip():
        raise ModelPathError("model_path is empty")
    if "://" in model_path and not model_path.startswith("file://"):
        raise ModelPathError(f"model_path {model_path!r}: only paths under the models root are accepted, "
                             f"not other schemes")
    raw = model_path[len("file://"):] if model_path.startswith("file://") else model_path
    if ".." in Path(raw).parts:
        raise ModelPathError(f"model_path {model_path!r} contains '..'")
    root = Path(models_root).resolve()
    candidate = Path(raw) if os.path.isabs(raw) else root / raw
    resolved = candidate.resolve()
    if resolved == root or root not in resolved.parents:
        raise ModelPathError(f"model_path {model_path!r} resolves to {resolved}, which is not inside the models "
                             f"root {root}")
    if (must_exist or resolved.exists()) and not resolved.is_dir():
        raise ModelPathError(f"model_path {model_path!r} is not a directory")
    return resolved


def resolve_model_uri(model_path: str, models_root: str, must_exist: bool = True) -> str:
    """The model directory `model_path` names, checked to lie inside the models root: a local
    root's real path (`resolve_model_path`), or a URI under an object-storage root.

    On object storage the same rules hold: the root's scheme and bucket only, a key under the
    root's prefix (never the root itself, never a sibling prefix that merely starts alike), no
    `..`, `.` or empty segments; a relative path is taken relative to the root.
    """
    if storage.is_local(models_root):
        return str(resolve_model_path(model_path, storage.local_path(models_root).as_posix(), must_exist))
    if not model_path or not model_path.strip():
        raise ModelPathError("model_path is empty")
    given = model_path.strip()
    scheme, _, rest = models_root.rstrip("/").partition("://")
    bucket, _, prefix = rest.partition("/")
    if "://" in given:
        their_scheme, _, their_rest = given.partition("://")
        their_bucket, _, key = their_rest.partition("/")
        if their_scheme != scheme:
            raise ModelPathError(f"model_path {model_path!r}: the models root is {models_root}, so only {scheme}:// "
                                 f"paths under it are accepted, not other schemes")
        if their_bucket != bucket:
            raise ModelPathError(f"model_path {model_path!r} is in bucket {their_bucket!r}, not in the models "
                                 f"root's bucket {bucket!r}")
    elif given.startswith("/"):
        raise ModelPathError(f"model_path {model_path!r} is a local path, but the models root is {models_root}")
    else:
        key = f"{prefix}/{given}" if prefix else given
    segments = key.rstrip("/").split("/")
    if ".." in segments or "." in segments:
        raise ModelPathError(f"model_path {model_path!r} contains '..' or '.'")
    if "" in segments:
        raise ModelPathError(f"model_path {model_path!r} has an empty path segment")
    key = "/".join(segments)
    if prefix and not key.startswith(prefix.rstrip("/") + "/"):
        raise ModelPathError(f"model_path {model_path!r} is not inside the models root {models_root}")
    uri = f"{scheme}://{bucket}/{key}"
    fs, path = storage.filesystem(uri)
    if (must_exist or fs.exists(path)) and fs.isfile(path):
        raise ModelPathError(f"model_path {model_path!r} is not a directory")
    return uri


def load_problems(directory: Path) -> list[str]:
    """What stops the model, its tokenizer or its recipe catalogue from loading (empty: they load
    and score one example)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    problems = []
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        problems.append(f"the tokenizer does not load: {exc}")
        tokenizer = None
    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the model does not load: {exc}")
        model = None
    if tokenizer is not None and model is not None:
        try:
            with torch.inference_mode():
                logits = model(**tokenizer(["workflow weekly"], ["cuisine any"], return_tensors="pt")).logits
            if tuple(logits.shape) != (1, 2):
                problems.append(f"the model returns logits of shape {tuple(logits.shape)}, not (1, 2)")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the model does not score an example: {exc}")
    try:
        pq.read_schema(directory / names.MODEL_RECIPES_FILE)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{names.MODEL_RECIPES_FILE} does not read: {exc}")
    return problems


def _listing(directory: Path | str):
    """(files, read text of a file, sha256 of a file) of a local directory or a published URI; the
    hashes of a URI are computed from the object store itself, not from a copy."""
    if isinstance(directory, Path) or storage.is_local(directory):
        root = storage.local_path(str(directory))
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return files, lambda name: (root / name).read_text(), lambda name: file_sha256(root / name)
    fs, path = storage.published(directory)
    files = sorted(storage.list_files(directory)) if storage.is_complete(directory) else []
    return (files, lambda name: fs.cat_file(storage.join(path, name)).decode(),
            lambda name: stream_sha256(fs, storage.join(path, name)))


def _unpublished(uri: str) -> str:
    """Why a URI has no published content: no pointer, a pointer naming an attempt that is not
    complete, or a pointer that names nothing of this version."""
    try:
        pointer = storage.read_pointer(uri)
    except ValueError as exc:
        return str(exc)
    if pointer is None:
        return f"{uri} is not published"
    return (f"{uri} is not published: its {storage.POINTER} pointer names {pointer['attempt']}, which has no "
            f"{names.SUCCESS_MARKER} (an incomplete or removed attempt)")


def feature_code_problems(manifest: dict) -> list[str]:
    """A model trained on other row texts than the feature code registration would package with it (a
    training image or wheel older or newer than this deployment) would score wrongly without an error.
    A manifest without the digest comes from a trainer older than the feature code registered now (the
    digest came with it), so it is refused too: retrain it."""
    from include.core.hashing import feature_code_sha256

    trained = manifest.get("feature_code_sha256")
    here = feature_code_sha256()
    if not trained:
        return ["its manifest does not say which feature code it was trained with (a trainer older than this "
                "deployment's feature code, include/core/features.py sha256 " + here[:12] + "...): registering it "
                "would score it with texts it never learned from; retrain it with this deployment's trainer"]
    if trained != here:
        return [f"it was trained with other feature code (include/core/features.py sha256 {trained[:12]}...) than "
                f"this deployment would register it with ({here[:12]}...): the training image or wheel and the "
                "Airflow deployment must run the same planner code; rebuild the one that is behind and retrain"]
    return []


def artifact_problems(directory: Path | str) -> list[str]:
    """Everything wrong with a model directory or published model URI (empty list: complete and intact)."""
    problems = []
    files, read_text, sha256 = _listing(directory)
    if not files:
        return [f"{directory} is empty" if isinstance(directory, Path) else _unpublished(directory)]
    if names.SUCCESS_MARKER not in files:
        problems.append(f"{names.SUCCESS_MARKER} is missing: training did not finish publishing")
    for required in names.MODEL_REQUIRED_FILES:
        if required not in files:
            problems.append(f"{required} is missing")
    try:
        if names.MODEL_MANIFEST_FILE not in files:
            raise FileNotFoundError(names.MODEL_MANIFEST_FILE)
        manifest = json.loads(read_text(names.MODEL_MANIFEST_FILE))
        listed = manifest["files"]
    except FileNotFoundError:
        return [*problems, f"{names.MODEL_MANIFEST_FILE} is missing"]
    except (ValueError, KeyError, TypeError) as exc:
        return [*problems, f"{names.MODEL_MANIFEST_FILE} is unreadable: {exc}"]
    present = set(files)
    for name, digest in sorted(listed.items()):
        if name not in present:
            problems.append(f"{name} is in the manifest but missing")
        elif sha256(name) != digest:
            problems.append(f"{name} does not match its sha256 in the manifest")
    unlisted = set(files) - set(listed) - {names.MODEL_MANIFEST_FILE, names.SUCCESS_MARKER}
    problems += [f"{name} is not in the manifest" for name in sorted(unlisted)]
    return problems
