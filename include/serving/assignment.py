"""Deterministic assignment of households to the canary arm of an online experiment.

    in_canary(household_id, experiment_id, share) -> bool

A household's position in an experiment is `u = fraction(sha256(experiment_id, household_id))`,
a number in [0, 1) read from the first 8 bytes of the digest; it is in the canary when
`u < share`. Standard library only: the serving side imports this module.

Properties (tests/serving/test_assignment.py):

- **stable**: the same household gets the same arm in every process, on every call, on every
  machine (sha256, not Python's salted `hash`), so no arm table has to be stored or shared;
- **pure**: the answer depends on nothing but the three arguments: not on the order in which
  households arrive, nor on who was assigned before;
- **monotone in share**: `u < s` implies `u < s'` for every `s' >= s`, so ramping a canary up
  (5% -> 20% -> 50%) only *adds* households to it; none moves back to the champion. That matters
  because a household that switched arms mid-experiment would have seen both models: its later
  meals would count for one arm while being shaped by the other (carry-over), and its exposure
  would be split between arms, which the per-arm counts of the decision rule do not allow for.
  Ramping down is the reverse (households only leave the canary);
- **independent across experiments**: the experiment id is part of the hashed text, so each
  experiment (one per candidate version, `include.promotion.canary.experiment_id`) draws a fresh,
  independent canary; the same households are not always the ones exposed to new models.

The hashed text is length-prefixed (`"<len(experiment_id)>:<experiment_id><household_id>"`), so
no pair of ids can collide by moving a separator from one to the other.
"""
from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def assignment_fraction(household_id: str, experiment_id: str) -> float:
    """The household's position in [0, 1) for this experiment (uniform over households)."""
    if not isinstance(household_id, str) or not isinstance(experiment_id, str):
        raise TypeError("household_id and experiment_id must be str")
    if not experiment_id:
        raise ValueError("experiment_id must not be empty")
    text = f"{len(experiment_id)}:{experiment_id}{household_id}".encode()
    digest = hashlib.sha256(text).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_canary(household_id: str, experiment_id: str, share: float) -> bool:
    """True when the household is in the canary arm of `experiment_id` at this share.

    `share` is the canary's share of households, in [0, 1]: 0 puts nobody in it, 1 everybody.
    """
    share = float(share)
    if not 0.0 <= share <= 1.0:  # also rejects NaN
        raise ValueError(f"share must be in [0, 1], got {share!r}")
    return assignment_fraction(household_id, experiment_id) < share


def arm(household_id: str, experiment_id: str, share: float) -> str:
    """'canary' or 'champion': the arm name logged with each served plan."""
    return "canary" if in_canary(household_id, experiment_id, share) else "champion"
