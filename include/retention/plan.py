"""What retention removes: a plan made from storage listings alone, then applied (or only listed).

Only names this project writes are ever candidates, under the layout of docs/contracts.md:

| kind | where (under the storage root) |
|---|---|
| `staging`, `replaced` | local roots only: `{datasets/planner,models/planner_acceptance,replays/planner}/_staging/<name>-<12 hex>/` and `.../_staging/replaced-<name>-<12 hex>/`, `<name>` a version name of that place |
| `superseded_attempt` | `<version>/_attempt-<time>-<8 hex>/` that the version's `_PUBLISHED` pointer does not name |
| `dataset_revision` | `datasets/planner/<YYYY-MM-DD>/rev-<16 hex>/` that the pointer does not name (a version without a pointer keeps all its revisions) |
| `model_dir` | `models/planner_acceptance/<training run id>/` |
| `replay_set` | `replays/planner/<YYYY-MM-DD>_<YYYY-MM-DD>/` |
| `checkpoint` | `checkpoints/<training run id>/` (skipped while `checkpoints/` does not exist) |

Everything else (a file beside them, a directory of another name, a symbolic link, the files of a
version itself, `_PUBLISHED`) is left alone. An item is removed only when it is older than its kind's
`max_age_days` (its age: since the newest modification time of anything inside it) and nothing in
`Referenced` lies in it or contains it.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from include.core import names, storage
from include.retention.references import Referenced

log = logging.getLogger(__name__)

DAY_S = 86400.0
DATE = r"\d{4}-\d{2}-\d{2}"
DATASET_VERSION = re.compile(rf"^{DATE}$")
REPLAY_WINDOW = re.compile(rf"^{DATE}_{DATE}$")
TRAINING_RUN_ID = re.compile(names.TRAINING_RUN_ID_PATTERN)
ATTEMPT = re.compile(rf"^{re.escape(storage.ATTEMPT_PREFIX)}\d{{8}}T\d{{6}}-[0-9a-f]{{8}}$")
REVISION = re.compile(rf"^{re.escape(storage.REVISION_PREFIX)}[0-9a-f]{{16}}$")
STAGING_ENTRY = re.compile(r"^(?P<replaced>replaced-)?(?P<name>.+)-[0-9a-f]{12}$")
# Kinds whose items a champion the registry lost might still need (its files are unknown).
HELD_BY_UNRESOLVED = ("model_dir", "dataset_revision", "checkpoint")


@dataclass(frozen=True)
class Removal:
    uri: str
    kind: str
    reason: str
    age_days: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Kept:
    uri: str
    kind: str
    reason: str


def location_key(uri: str) -> str:
    """One spelling per location: a resolved absolute path locally, `<scheme>://<path>` otherwise."""
    uri = str(uri).strip()
    if storage.is_local(uri):
        return os.path.realpath(os.path.abspath(storage.local_path(uri)))
    scheme, _, rest = uri.partition("://")
    return f"{scheme.lower()}://{re.sub('/+', '/', rest).rstrip('/')}"


def _mtime(info: dict) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created", "updated", "timeCreated"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None


def newest_mtime(fs, path: str) -> float | None:
    """The newest modification time of the item and anything inside it (None: none is known)."""
    times = []
    try:
        times.append(_mtime(fs.info(path)))
    except FileNotFoundError:
        pass
    prefix = path.rstrip("/") + "/"
    for name, info in fs.find(path, withdirs=True, detail=True).items():
        if name.startswith(prefix):
            times.append(_mtime(info))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _children(fs, path: str) -> list[tuple[str, str, bool]]:
    """(name, path, is_directory) of the entries directly under `path`; none when it is not a directory."""
    if not fs.isdir(path):
        return []
    out = []
    for info in fs.ls(path, detail=True):
        full = info["name"].rstrip("/")
        if full == path.rstrip("/"):
            continue
        # A link is listed like a directory, so that the plan records it as kept (never followed, never removed).
        out.append((full.rsplit("/", 1)[-1], full, info.get("type") == "directory" or bool(info.get("islink"))))
    return sorted(out)


class _Planner:
    def __init__(self, root: str, policy: dict, now: datetime, referenced: Referenced):
        self.root = root.rstrip("/")
        self.local = storage.is_local(root)
        self.fs, self.root_path = storage.filesystem(self.root)
        self.kinds = policy["kinds"]
        self.now = now.timestamp()
        self.referenced = referenced
        self.reference_keys = {location_key(uri): why for uri, why in referenced.locations.items()}
        self.removals: list[Removal] = []
        self.kept: list[Kept] = []

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def path(self, *parts: str) -> str:
        return storage.join(self.root_path, *parts)

    def protected_by(self, uri: str) -> str | None:
        key = location_key(uri)
        for ref, why in self.reference_keys.items():
            if ref == key or ref.startswith(key + "/") or key.startswith(ref + "/"):
                return why
        return None

    def consider(self, uri: str, path: str, kind: str, what: str, open_run: str | None = None) -> None:
        """Remove `uri` if it is old enough and nothing needs it; else record why it stays."""
        max_age = self.kinds[kind]["max_age_days"]
        if self.local and os.path.islink(path):
            self.kept.append(Kept(uri, kind, "a symbolic link: not something this project writes"))
            return
        why = self.protected_by(uri)
        if why:
            self.kept.append(Kept(uri, kind, f"referenced: {why}"))
            return
        if open_run and open_run in self.referenced.open_training_runs:
            self.kept.append(Kept(uri, kind, f"training run {open_run} is open: "
                                             f"{self.referenced.open_training_runs[open_run]}"))
            return
        if kind in HELD_BY_UNRESOLVED and self.referenced.unresolved:
            self.kept.append(Kept(uri, kind, "held: " + "; ".join(self.referenced.unresolved)))
            return
        if max_age is None:
            self.kept.append(Kept(uri, kind, "the policy keeps this kind forever (max_age_days null)"))
            return
        newest = newest_mtime(self.fs, path)
        if newest is None:
            self.kept.append(Kept(uri, kind, "no modification time known: its age cannot be told"))
            return
        age_days = (self.now - newest) / DAY_S
        if age_days <= max_age:
            self.kept.append(Kept(uri, kind, f"{age_days:.1f} days old, the policy keeps {kind} {max_age} days"))
            return
        self.removals.append(Removal(uri, kind, f"{what}, older than {max_age} days", round(age_days, 3)))

    # --- the places of the layout -------------------------------------------------------------

    def staging(self, parts: tuple[str, ...], version_name: re.Pattern) -> None:
        if not self.local:
            return  # object storage stages in local scratch directories, never under the root
        for name, path, is_dir in _children(self.fs, self.path(*parts, storage.STAGING_DIR)):
            match = STAGING_ENTRY.match(name)
            if not is_dir or not match or not version_name.match(match["name"]):
                continue
            kind = "replaced" if match["replaced"] else "staging"
            what = ("the previous content of a republished version, left renamed aside" if match["replaced"]
                    else "an unpublished staging directory (a failed or interrupted write)")
            self.consider(self.uri(*parts, storage.STAGING_DIR, name), path, kind, what, open_run=match["name"])

    def inside_version(self, parts: tuple[str, ...], revisions: bool) -> None:
        """Superseded attempts (and, for datasets, revisions) of one version; never what the pointer names."""
        version_uri = self.uri(*parts)
        if self.local and os.path.islink(self.path(*parts)):
            self.kept.append(Kept(version_uri, "version", "a symbolic link: not something this project writes"))
            return
        try:
            pointer = storage.read_pointer(version_uri)
        except (ValueError, OSError) as exc:
            self.kept.append(Kept(version_uri, "version", f"its pointer cannot be read ({exc}): nothing inside "
                                                          "it is removed"))
            return
        current = pointer["attempt"] if pointer else None
        for name, path, is_dir in _children(self.fs, self.path(*parts)):
            if not is_dir or name == current:
                continue
            if ATTEMPT.match(name):
                self.consider(self.uri(*parts, name), path, "superseded_attempt",
                              f"an attempt that {storage.POINTER} does not name")
            elif revisions and REVISION.match(name):
                if pointer is None:
                    self.kept.append(Kept(self.uri(*parts, name), "dataset_revision",
                                          f"the version has no {storage.POINTER} pointer: a revision may yet be "
                                          "pointed at"))
                else:
                    self.consider(self.uri(*parts, name), path, "dataset_revision",
                                  f"a revision that {storage.POINTER} does not name")

    def datasets(self) -> None:
        parts = ("datasets", names.DATASET_NAME)
        self.staging(parts, DATASET_VERSION)
        for name, _, is_dir in _children(self.fs, self.path(*parts)):
            if is_dir and DATASET_VERSION.match(name):
                self.inside_version((*parts, name), revisions=True)

    def models(self) -> None:
        parts = ("models", names.REGISTERED_MODEL_NAME)
        self.staging(parts, TRAINING_RUN_ID)
        for name, path, is_dir in _children(self.fs, self.path(*parts)):
            if not is_dir or not TRAINING_RUN_ID.match(name):
                continue
            before = len(self.removals)
            self.consider(self.uri(*parts, name), path, "model_dir",
                          "a model directory no registered version, champion or open run names", open_run=name)
            if len(self.removals) == before and not (self.local and os.path.islink(path)):
                self.inside_version((*parts, name), revisions=False)

    def replays(self) -> None:
        parts = ("replays", names.DATASET_NAME)
        self.staging(parts, REPLAY_WINDOW)
        for name, path, is_dir in _children(self.fs, self.path(*parts)):
            if not is_dir or not REPLAY_WINDOW.match(name):
                continue
            before = len(self.removals)
            self.consider(self.uri(*parts, name), path, "replay_set",
                          "a replay set no evaluation of a registered version or open run used")
            if len(self.removals) == before and not (self.local and os.path.islink(path)):
                self.inside_version((*parts, name), revisions=False)

    def checkpoints(self) -> None:
        for name, path, is_dir in _children(self.fs, self.path("checkpoints")):
            if is_dir and TRAINING_RUN_ID.match(name):
                self.consider(self.uri("checkpoints", name), path, "checkpoint",
                              "checkpoints of a finished training run", open_run=name)


def plan_removals(root: str, policy: dict, now: datetime, referenced: Referenced,
                  kept: list[Kept] | None = None) -> list[Removal]:
    """What retention would remove under `root` (a local path or an fsspec URL) at `now`, in layout
    order. Reads listings only; `kept`, when given, receives every candidate that stays, with why."""
    planner = _Planner(root, policy, now, referenced)
    planner.datasets()
    planner.models()
    planner.replays()
    planner.checkpoints()
    if kept is not None:
        kept.extend(planner.kept)
    return planner.removals


def _still_superseded(removal: Removal) -> bool:
    """An attempt or revision must still not be the one its version's pointer names (a rebuild with
    identical content may have pointed a dataset back at an old revision since the plan was made)."""
    if removal.kind not in ("superseded_attempt", "dataset_revision"):
        return True
    version_uri, child = removal.uri.rstrip("/").rsplit("/", 1)
    pointer = storage.read_pointer(version_uri)
    return pointer is not None and pointer["attempt"] != child


def remove_location(uri: str) -> bool:
    """Delete a directory (locally) or every object under a prefix (object storage); False when absent."""
    fs, path = storage.filesystem(uri)
    if storage.is_local(uri):
        if not os.path.lexists(path):
            return False
        fs.rm(path, recursive=True)
        return True
    prefix = path.rstrip("/") + "/"
    objects = [name for name in fs.find(path) if name.startswith(prefix)]  # never a sibling sharing the prefix
    if not objects:
        return False
    fs.rm(objects)
    return True


def apply_removals(removals: list[Removal], dry_run: bool) -> list[dict]:
    """Remove each planned item (or, in a dry run, only list it); returns one record per item:
    {uri, kind, reason, age_days, action}, action one of would_remove, removed, absent, kept (became
    current since the plan), failed (with `error`). Going on after a failure; the caller decides."""
    done = []
    for removal in removals:
        record = removal.as_dict()
        if dry_run:
            done.append({**record, "action": "would_remove"})
            continue
        try:
            if not _still_superseded(removal):
                done.append({**record, "action": "kept", "error": "its version's pointer names it now"})
                continue
            removed = remove_location(removal.uri)
            done.append({**record, "action": "removed" if removed else "absent"})
            log.info("%s %s (%s): %s", "removed" if removed else "already gone", removal.uri, removal.kind,
                     removal.reason)
        except Exception as exc:  # noqa: BLE001 - every other item is still tried; the failures are reported
            done.append({**record, "action": "failed", "error": f"{type(exc).__name__}: {exc}"})
            log.warning("could not remove %s: %s", removal.uri, exc)
    return done


def still_planned(previous: list[dict], fresh: list[Removal]) -> tuple[list[Removal], list[dict]]:
    """(items of an earlier plan that a fresh plan still removes, items it no longer does): apply what
    both agree on, so nothing registered or pointed at between the two is deleted."""
    fresh_by_key = {(r.uri, r.kind): r for r in fresh}
    agreed = [fresh_by_key[(p["uri"], p["kind"])] for p in previous if (p["uri"], p["kind"]) in fresh_by_key]
    dropped = [p for p in previous if (p["uri"], p["kind"]) not in fresh_by_key]
    return agreed, dropped
