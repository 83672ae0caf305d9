"""The canary's decision rule (include/promotion/canary.py): an always-valid mSPRT on the
difference of kept shares, looked at daily.

Simulated experiments come from bench/canary.py (numpy draws with the project's numbers:
0.67 meals with an outcome per household per day, kept share 0.445, household effects with
logit sd 0.69). Everything is seeded, so each run sees the same experiments.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.canary import (
    binomial_only,
    first_decision,
    peeking_z_rejects,
    simulate_clustered,
    simulate_meals,
    wrong_in_aa,
)
from include.promotion.canary import (
    CANARY_POLICY,
    ArmCounts,
    CanaryLook,
    Decision,
    decide,
    experiment_id,
    msprt,
    run_looks,
    validate_policy,
)

POLICY = dict(CANARY_POLICY)
ALPHA = POLICY["alpha"]
AA_EXPERIMENTS = 400


def _margin(n: int) -> float:
    """Two binomial standard deviations of an observed rate over n experiments at rate alpha."""
    return 2.0 * math.sqrt(ALPHA * (1 - ALPHA) / n)


def _look(day, n0, k0, n1, k1) -> CanaryLook:
    return CanaryLook(day, ArmCounts(n0, k0), ArmCounts(n1, k1))


# --- the closed form ------------------------------------------------------------------------

def test_mixture_likelihood_ratio_matches_numerical_integration():
    lift, v, t2 = 0.013, 4e-5, 4e-4
    log_lambda, (lo, hi) = msprt(lift, v, t2, ALPHA)
    theta = np.linspace(-0.3, 0.3, 600_001)
    prior = np.exp(-theta ** 2 / (2 * t2)) / math.sqrt(2 * math.pi * t2)
    ratio = np.exp(-((lift - theta) ** 2 - lift ** 2) / (2 * v))  # N(d; theta, V) / N(d; 0, V)
    numeric = float(np.sum(prior * ratio) * (theta[1] - theta[0]))
    assert log_lambda == pytest.approx(math.log(numeric), abs=1e-6)
    # The interval is the set of theta0 the test does not reject: on its ends Lambda = 1/alpha.
    for end in (lo, hi):
        at_end, _ = msprt(lift - end, v, t2, ALPHA)
        assert at_end == pytest.approx(math.log(1 / ALPHA), abs=1e-9)
    assert lo < lift < hi


def test_cluster_variance_from_per_household_sums():
    per_household = [(6, 5), (7, 1), (5, 0), (6, 6), (12, 4), (6, 3)]
    arm = ArmCounts.from_households(per_household + [(0, 0)])
    assert (arm.meals, arm.kept, arm.households) == (42, 19, 6)
    p = 19 / 42
    direct = 6 / 5 * sum((k - p * m) ** 2 for m, k in per_household) / 42 ** 2
    assert arm.variance() == pytest.approx(max(direct, p * (1 - p) / 42))
    assert direct > p * (1 - p) / 42  # these households differ: the cluster variance is larger
    assert ArmCounts(42, 19).variance() == pytest.approx(p * (1 - p) / 42)
    with pytest.raises(ValueError):
        ArmCounts(10, 11)
    with pytest.raises(ValueError):
        ArmCounts(10, 5, households=3)


# --- the rule on given counts -----------------------------------------------------------------

def test_clear_lift_is_promoted():
    # 14 days of a 10,000-household canary at share 0.2: +3 points of kept share.
    d = decide(_look(14, 75_000, 33_375, 18_750, 8_906), POLICY)
    assert d.action == "promote", d
    assert d.lift == pytest.approx(8_906 / 18_750 - 0.445)
    assert d.ci[0] > 0 and d.p_value_always_valid <= ALPHA
    assert "keeps more" in d.reason


def test_planted_regression_is_rolled_back():
    d = decide(_look(14, 75_000, 33_375, 18_750, 7_781), POLICY)
    assert d.action == "rollback", d
    assert d.ci[1] < 0 and d.p_value_always_valid <= ALPHA
    assert "regression" in d.reason


def test_exposure_and_days_before_any_decision():
    huge_lift = (50_000, 20_000, 50_000, 30_000)
    early = decide(_look(POLICY["min_days"] - 1, *huge_lift), POLICY)
    assert early.action == "continue" and "min_days" in early.reason
    few = decide(_look(10, 1_000, 400, POLICY["min_exposure"] - 1, 1_500), POLICY)
    assert few.action == "continue" and "min_exposure" in few.reason
    late = decide(_look(POLICY["max_days"], 1_000, 400, POLICY["min_exposure"] - 1, 1_500), POLICY)
    assert late.action == "rollback" and "not enough exposure" in late.reason
    assert decide(_look(POLICY["min_days"], *huge_lift), POLICY).action == "promote"


def test_no_difference_by_max_days_keeps_the_champion():
    look = _look(POLICY["max_days"], 40_000, 17_800, 10_000, 4_460)
    d = decide(look, POLICY)
    assert d.action == "rollback" and "no difference" in d.reason and d.ci[0] < 0 < d.ci[1]
    assert decide(CanaryLook(POLICY["max_days"] - 1, look.champion, look.canary), POLICY).action == "continue"


def test_previous_look_carries_the_running_p_value_and_interval():
    first = decide(_look(10, 30_000, 13_350, 7_500, 3_450), POLICY)
    assert first.action == "continue"
    second = decide(_look(11, 33_000, 14_685, 8_250, 3_671), POLICY, first)
    alone = decide(_look(11, 33_000, 14_685, 8_250, 3_671), POLICY)
    assert second.p_value_always_valid == min(first.p_value_always_valid, alone.p_value_always_valid)
    assert second.ci == (max(first.ci[0], alone.ci[0]), min(first.ci[1], alone.ci[1]))
    assert isinstance(second, Decision) and second.action == alone.action


def test_policy_and_experiment_id():
    assert experiment_id("planner_acceptance", 7) == "planner_acceptance:v7:canary"
    assert validate_policy({}) == CANARY_POLICY
    for bad in ({"rollout": "blue-green"}, {"share": 0.0}, {"alpha": 1.5}, {"max_days": 3},
                {"min_exposure": -1}, {"mixing_variance": 0}, {"experiment_id": "fixed"}, {"sharee": 0.2}):
        with pytest.raises(ValueError):
            validate_policy(bad)


# --- simulated experiments --------------------------------------------------------------------

@pytest.mark.parametrize("lift,expected", [(0.03, "promote"), (-0.03, "rollback")])
def test_simulated_three_point_changes_are_found(lift, expected):
    rng = np.random.default_rng(3)
    actions = [first_decision(simulate_clustered(rng, 10_000, POLICY["max_days"], POLICY["share"], lift), POLICY)
               for _ in range(20)]
    right = [d for d in actions if d.action == expected and (d.ci[0] > 0 if lift > 0 else d.ci[1] < 0)]
    print(f"\n{lift:+.2f}: {len(right)}/20 {expected}, days {sorted(d.day for d in right)}")
    assert len(right) >= 19
    assert not any(d.action == "promote" for d in actions) if lift < 0 else True


def _aa_rate(simulate, n: int, transform=lambda looks: looks) -> float:
    rng = np.random.default_rng(22)
    wrong = sum(wrong_in_aa(first_decision(transform(simulate(rng)), POLICY)) for _ in range(n))
    return wrong / n


def test_aa_independent_meals_false_positive_rate_within_alpha():
    days, share = POLICY["max_days"], POLICY["share"]
    rate = _aa_rate(lambda rng: simulate_meals(rng, 10_000, days, share, 0.0), AA_EXPERIMENTS)
    print(f"\nA/A, independent meals, {AA_EXPERIMENTS} experiments x {days} daily looks: "
          f"false-positive rate {rate:.4f} (alpha {ALPHA}, bound {ALPHA + _margin(AA_EXPERIMENTS):.4f})")
    assert rate <= ALPHA + _margin(AA_EXPERIMENTS)


def test_aa_households_false_positive_rate_within_alpha():
    days, share, n = POLICY["max_days"], POLICY["share"], 200
    rate = _aa_rate(lambda rng: simulate_clustered(rng, 2_000, days, share, 0.0), n)
    print(f"\nA/A, households (cluster variance), {n} experiments x {days} daily looks: "
          f"false-positive rate {rate:.4f} (alpha {ALPHA}, bound {ALPHA + _margin(n):.4f})")
    assert rate <= ALPHA + _margin(n)


def test_the_aa_check_catches_an_invalid_rule():
    # The same harness fails the rules that are not valid here: treating correlated meals of a
    # household as independent, and a fixed-horizon z-test read every day.
    days, share, n = POLICY["max_days"], POLICY["share"], 200
    naive = _aa_rate(lambda rng: simulate_clustered(rng, 2_000, days, share, 0.0), n,
                     lambda looks: [binomial_only(x) for x in looks])
    rng = np.random.default_rng(22)
    peeking = sum(peeking_z_rejects(simulate_meals(rng, 10_000, days, share, 0.0), POLICY) for _ in range(n)) / n
    print(f"\nA/A, binomial variance on households: {naive:.4f}; daily z-test on independent meals: {peeking:.4f}")
    assert naive > ALPHA + _margin(n)
    assert peeking > ALPHA + _margin(n)


def test_run_looks_stops_at_the_first_decision():
    rng = np.random.default_rng(5)
    looks = simulate_meals(rng, 10_000, POLICY["max_days"], POLICY["share"], 0.05)
    d = run_looks(looks, POLICY)
    assert d.action == "promote" and d.day < POLICY["max_days"]
    assert first_decision(looks, POLICY) == d
