"""Properties of the canary assignment (include/serving/assignment.py).

`hypothesis` is not installed in .venv, so the properties are checked over seeded random
inputs (random.Random with fixed seeds): the same inputs on every run, many of them.

Tolerances: over n households the canary count is Binomial(n, share), so the observed share has
standard deviation sqrt(share * (1 - share) / n); every share check allows 4 of those (a correct
hash fails one check with probability ~6e-5).
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from include.serving.assignment import arm, assignment_fraction, in_canary

N = 100_000
EXPERIMENT = "planner_acceptance:v7:canary"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _households(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


HOUSEHOLDS = _households(N, seed=22)


def _tolerance(share: float, n: int = N) -> float:
    return 4.0 * math.sqrt(share * (1.0 - share) / n)


def test_known_values_pin_the_scheme():
    # The serving side and the analysis must agree on every household's arm: a change of the
    # hashed text (separator, order, digest bytes) would silently reassign households.
    assert assignment_fraction("h-0001", EXPERIMENT) == 0.4406215760395942
    assert assignment_fraction("00000000-0000-4000-8000-000000000000", "exp-a") == 0.15949790639701206
    assert in_canary("00000000-0000-4000-8000-000000000000", "exp-a", 0.2)
    assert not in_canary("h-0001", EXPERIMENT, 0.2)
    assert arm("h-0001", EXPERIMENT, 0.5) == "canary"


def test_stable_across_calls_and_processes():
    first = [in_canary(h, EXPERIMENT, 0.2) for h in HOUSEHOLDS[:2000]]
    assert first == [in_canary(h, EXPERIMENT, 0.2) for h in HOUSEHOLDS[:2000]]
    # Another interpreter with another str-hash salt gives the same arms (no use of hash()).
    code = ("import sys; from include.serving.assignment import in_canary; "
            "print(''.join('1' if in_canary(h, sys.argv[1], 0.2) else '0' for h in sys.argv[2:]))")
    out = subprocess.run([sys.executable, "-c", code, EXPERIMENT, *HOUSEHOLDS[:200]], cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "".join("1" if a else "0" for a in first[:200])


@pytest.mark.parametrize("share", [0.01, 0.05, 0.2, 0.5, 0.9])
def test_observed_share_is_binomial(share):
    observed = sum(in_canary(h, EXPERIMENT, share) for h in HOUSEHOLDS) / N
    assert abs(observed - share) <= _tolerance(share), (observed, share, _tolerance(share))


def test_fractions_are_uniform_over_deciles():
    counts = [0] * 10
    for h in HOUSEHOLDS:
        counts[int(assignment_fraction(h, EXPERIMENT) * 10)] += 1
    for c in counts:
        assert abs(c / N - 0.1) <= _tolerance(0.1), counts


def test_edges_and_bad_input():
    assert not any(in_canary(h, EXPERIMENT, 0.0) for h in HOUSEHOLDS[:1000])
    assert all(in_canary(h, EXPERIMENT, 1.0) for h in HOUSEHOLDS[:1000])
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError):
            in_canary("h", EXPERIMENT, bad)
    with pytest.raises(ValueError):
        in_canary("h", "", 0.2)
    with pytest.raises(TypeError):
        in_canary(123, EXPERIMENT, 0.2)  # type: ignore[arg-type]


def test_independent_of_order_and_of_arm_history():
    sample = HOUSEHOLDS[:5000]
    expected = {h: in_canary(h, EXPERIMENT, 0.2) for h in sample}
    for seed in range(3):
        rng = random.Random(seed)
        shuffled = sample[:]
        rng.shuffle(shuffled)
        got = {}
        for h in shuffled:
            # Interleave unrelated assignments (other experiments, other shares): no state.
            in_canary(rng.choice(sample), f"other-{rng.randrange(5)}", rng.random())
            got[h] = in_canary(h, EXPERIMENT, 0.2)
        assert got == expected


def test_monotone_in_share_so_ramp_ups_keep_households_in_their_arm():
    # A ramp 5% -> 20% -> 50% only adds households to the canary: nobody who saw the canary
    # model is moved back to the champion (which would split its exposure across arms).
    rng = random.Random(7)
    for h in HOUSEHOLDS[:20_000]:
        s, t = sorted((rng.random(), rng.random()))
        if in_canary(h, EXPERIMENT, s):
            assert in_canary(h, EXPERIMENT, t), (h, s, t)
    ramp = [0.05, 0.2, 0.5]
    arms = [{h for h in HOUSEHOLDS if in_canary(h, EXPERIMENT, s)} for s in ramp]
    assert arms[0] <= arms[1] <= arms[2]


def test_different_experiments_assign_independently():
    a, b, s = "planner_acceptance:v7:canary", "planner_acceptance:v8:canary", 0.2
    in_a = [in_canary(h, a, s) for h in HOUSEHOLDS]
    in_b = [in_canary(h, b, s) for h in HOUSEHOLDS]
    both = sum(x and y for x, y in zip(in_a, in_b)) / N
    # Independent: P(in both) = s * s; the same households in both would give s.
    assert abs(both - s * s) <= _tolerance(s * s), both
    # Among the canary of `a`, the share also in the canary of `b` is s (not 1, not 0).
    n_a = sum(in_a)
    cond = sum(x and y for x, y in zip(in_a, in_b)) / n_a
    assert abs(cond - s) <= _tolerance(s, n_a), cond
    # The positions themselves are uncorrelated across experiments.
    fa = [assignment_fraction(h, a) for h in HOUSEHOLDS[:20_000]]
    fb = [assignment_fraction(h, b) for h in HOUSEHOLDS[:20_000]]
    mean_a, mean_b = sum(fa) / len(fa), sum(fb) / len(fb)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(fa, fb)) / len(fa)
    corr = cov / (1.0 / 12.0)
    assert abs(corr) <= 4.0 / math.sqrt(len(fa)), corr
