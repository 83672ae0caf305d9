"""The retention policy: maximum ages per kind, from `policy.json` beside this module."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

KINDS = ("staging", "replaced", "superseded_attempt", "dataset_revision", "model_dir", "replay_set", "checkpoint")
MIN_AGE_DAYS = 1  # never less: a directory being written right now must not be deleted under its writer


class PolicyError(ValueError):
    """The policy file is not usable; the message says what is wrong."""


def load_policy(path: str | Path | None = None) -> dict:
    """The policy, checked: {"scheduled_dry_run": bool, "kinds": {kind: {"max_age_days": float | None, ...}}}."""
    text = Path(path).read_text() if path else resources.files("include.retention").joinpath("policy.json").read_text()
    return check_policy(json.loads(text))


def check_policy(policy: dict) -> dict:
    problems = []
    kinds = policy.get("kinds")
    if not isinstance(kinds, dict):
        raise PolicyError("the retention policy has no `kinds` object")
    for kind in KINDS:
        entry = kinds.get(kind)
        if not isinstance(entry, dict) or "max_age_days" not in entry:
            problems.append(f"kind {kind!r}: missing, or without max_age_days")
            continue
        age = entry["max_age_days"]
        if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or age < MIN_AGE_DAYS):
            problems.append(f"kind {kind!r}: max_age_days must be null (keep forever) or a number >= {MIN_AGE_DAYS}, "
                            f"got {age!r}")
        if not str(entry.get("description") or "").strip():
            problems.append(f"kind {kind!r}: no description")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        problems.append(f"unknown kinds {unknown} (known: {list(KINDS)})")
    if not isinstance(policy.get("scheduled_dry_run", False), bool):
        problems.append("scheduled_dry_run must be true or false")
    if problems:
        raise PolicyError("retention policy:\n- " + "\n- ".join(problems))
    return {**policy, "scheduled_dry_run": policy.get("scheduled_dry_run", False)}


def effective_dry_run(run_type: str | None, dry_run_param: bool | None, policy: dict) -> bool:
    """A scheduled run follows the policy's `scheduled_dry_run`; any other run (the trigger form, the REST
    API, a backfill) the `dry_run` Param, which defaults to True."""
    if str(getattr(run_type, "value", run_type) or "") == "scheduled":
        return bool(policy.get("scheduled_dry_run", False))
    return True if dry_run_param is None else bool(dry_run_param)
