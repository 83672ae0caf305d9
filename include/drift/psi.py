"""Population stability index from binned counts (pure: no I/O, no third-party imports).

    PSI = sum over bins b of (a_b - e_b) * ln(a_b / e_b)

where e_b and a_b are the shares of the expected (previous) and actual (current) populations in bin b. A bin empty
on one side would make the term infinite, so every share is floored at `floor` (1e-4: a bin holding nothing counts
as holding one in ten thousand) and the shares are renormalised. Conventional reading: < 0.1 stable, 0.1-0.25 a
moderate shift, > 0.25 a major one (the project's limits are in thresholds.json).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

FLOOR = 1e-4


def shares(counts: Mapping[str, float], bins: list[str] | None = None, floor: float = FLOOR) -> dict[str, float]:
    """Each bin's share of the total, floored at `floor` and renormalised to sum to 1; `bins` adds bins that
    hold nothing (so two populations are compared on the same bins). An empty population has no shares."""
    labels = list(bins) if bins is not None else list(counts)
    for label in counts:
        if label not in labels:
            labels.append(label)
    total = float(sum(counts.get(label, 0) for label in labels))
    if total <= 0:
        raise ValueError("an empty population has no distribution")
    if any(counts.get(label, 0) < 0 for label in labels):
        raise ValueError(f"negative count in {dict(counts)}")
    raw = {label: max(counts.get(label, 0) / total, floor) for label in labels}
    norm = sum(raw.values())
    return {label: value / norm for label, value in raw.items()}


def psi(expected: Mapping[str, float], actual: Mapping[str, float], floor: float = FLOOR) -> float:
    """The PSI of `actual` against `expected`, both {bin: count} (the union of their bins is compared)."""
    bins = list(dict.fromkeys([*expected, *actual]))
    e, a = shares(expected, bins, floor), shares(actual, bins, floor)
    return float(sum((a[b] - e[b]) * math.log(a[b] / e[b]) for b in bins))
