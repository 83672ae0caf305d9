"""How long the canary takes to decide, and how often it is wrong, by simulation.

    python -m bench.canary [--experiments 500] [--households 2000 5000 10000 20000] [--seed 22]

Simulates canary experiments with the project's numbers and feeds every daily look through
`include.promotion.canary.decide` (CANARY_POLICY: share, alpha, min_exposure, min_days,
mixing_variance), then prints:

1. for a +2 and a -2 point change in kept share: the share of experiments that reach the right
   decision by the policy's `max_days`, and the median and 80th percentile of the days to it
   (the 80th percentile is the days needed for 80% power); the rule's `max_days` is lifted to
   `--horizon` for this so that days beyond the policy's are visible;
2. A/A (both arms with the same keep rate, the policy's max_days): the false-positive rate of
   the rule (any promote or regression rollback), next to what the same data give with the
   binomial variance alone (meals as independent) and with a fixed-horizon z-test read daily.

The world (from include/events/generate.py, measured over 1,500 simulated households x 8 weeks):
- a household accepts a weekly plan with probability 0.85 x 0.92 = 0.78 (plans in 85% of weeks,
  8% never accepted) on a random day of the week, with 5-7 meals (uniform): 0.67 meals with an
  outcome per household per day;
- kept share 0.445 (the dataset's kept share, policy.json: 'always replaced' scores 0.555);
- households differ persistently: the logit of a household's mean true keep probability has
  standard deviation 0.69 (affinity, mode, restrictions, budget), so meals of one household
  are correlated and the unit of randomisation is the household;
- a change of the model moves every household's keep probability by the same points.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from include.promotion.canary import CANARY_POLICY, ArmCounts, CanaryLook, Decision, decide

PLAN_RATE = 0.85 * 0.92  # accepted weekly plans per household-week
MEALS = (5, 7)  # meals per plan, uniform inclusive
KEEP_RATE = 0.445
HOUSEHOLD_LOGIT_SD = 0.69
MEALS_PER_HOUSEHOLD_DAY = PLAN_RATE * (MEALS[0] + MEALS[1]) / 2 / 7


def _household_rates(rng: np.random.Generator, n: int, base: float, lift: float, logit_sd: float) -> np.ndarray:
    logit = math.log(base / (1 - base)) + rng.normal(0.0, logit_sd, n)
    return np.clip(1.0 / (1.0 + np.exp(-logit)) + lift, 0.0, 1.0)


def _arm_days(rng: np.random.Generator, rates: np.ndarray, days: int) -> np.ndarray:
    """Cumulative (meals, kept, households, sum k^2, sum m^2, sum k m) after each day, (days, 6)."""
    weeks = -(-days // 7)
    n = rates.size
    plans = rng.random((weeks, n)) < PLAN_RATE
    meals = np.where(plans, rng.integers(MEALS[0], MEALS[1] + 1, (weeks, n)), 0)
    kept = rng.binomial(meals, rates[None, :])
    day = np.arange(weeks)[:, None] * 7 + rng.integers(0, 7, (weeks, n))
    m_prev = np.cumsum(meals, axis=0) - meals
    k_prev = np.cumsum(kept, axis=0) - kept
    first = (meals > 0) & (m_prev == 0)
    increments = np.stack([meals, kept, first, 2 * k_prev * kept + kept * kept, 2 * m_prev * meals + meals * meals,
                           k_prev * meals + m_prev * kept + kept * meals]).reshape(6, -1).astype(float)
    flat_day = day.reshape(-1)
    keep = flat_day < days
    per_day = np.stack([np.bincount(flat_day[keep], weights=row[keep], minlength=days) for row in increments], axis=1)
    return np.cumsum(per_day, axis=0)


def simulate_clustered(rng: np.random.Generator, households: int, days: int, share: float, lift: float,
                       base: float = KEEP_RATE, logit_sd: float = HOUSEHOLD_LOGIT_SD) -> list[CanaryLook]:
    """Daily looks of one experiment, household by household (heterogeneous households)."""
    n_canary = int(rng.binomial(households, share))
    champion = _arm_days(rng, _household_rates(rng, households - n_canary, base, 0.0, logit_sd), days)
    canary = _arm_days(rng, _household_rates(rng, n_canary, base, lift, logit_sd), days)
    return [CanaryLook(d + 1, _counts(champion[d]), _counts(canary[d])) for d in range(days)]


def simulate_meals(rng: np.random.Generator, households: int, days: int, share: float, lift: float,
                   base: float = KEEP_RATE) -> list[CanaryLook]:
    """Daily looks of one experiment with independent meals (binomial counts per arm and day)."""
    looks, totals = [], np.zeros((2, 2))
    arms = np.array([households * (1 - share), households * share]) * MEALS_PER_HOUSEHOLD_DAY
    rates = np.array([base, base + lift])
    for d in range(days):
        meals = rng.poisson(arms)
        totals += np.stack([meals, rng.binomial(meals, rates)], axis=1)
        looks.append(CanaryLook(d + 1, ArmCounts(int(totals[0, 0]), int(totals[0, 1])),
                                ArmCounts(int(totals[1, 0]), int(totals[1, 1]))))
    return looks


def _counts(row: np.ndarray) -> ArmCounts:
    m, k, h, kk, mm, km = row
    return ArmCounts(int(m), int(k), int(h), float(kk), float(mm), float(km))


def binomial_only(look: CanaryLook) -> CanaryLook:
    """The same look without the per-household sums (the variance then treats meals as independent)."""
    return CanaryLook(look.day, ArmCounts(look.champion.meals, look.champion.kept),
                      ArmCounts(look.canary.meals, look.canary.kept))


def first_decision(looks: list[CanaryLook], policy: dict) -> Decision:
    """The first decision that is not continue (or the last look's)."""
    decision = None
    for look in looks:
        decision = decide(look, policy, decision)
        if decision.action != "continue":
            break
    return decision


def wrong_in_aa(decision: Decision) -> bool:
    """A/A: a promote, or a rollback *for a regression* (not the max_days 'no difference')."""
    return decision.action == "promote" or (decision.action == "rollback" and decision.ci[1] < 0)


def peeking_z_rejects(looks: list[CanaryLook], policy: dict) -> bool:
    """A fixed-horizon two-sided z-test read every day, stopped at the first |z| > z_(1-alpha/2)."""
    from statistics import NormalDist
    z_crit = NormalDist().inv_cdf(1 - policy["alpha"] / 2)
    for look in looks:
        if look.day < policy["min_days"] or min(look.champion.meals, look.canary.meals) < policy["min_exposure"]:
            continue
        v = look.champion.variance() + look.canary.variance()
        if abs(look.canary.rate - look.champion.rate) / math.sqrt(v) > z_crit:
            return True
    return False


def _fmt_days(days: list[float], q: float, horizon: int) -> str:
    ordered = sorted(days)
    v = ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # the q-quantile: that share decided by then
    return f"{v:.0f}" if math.isfinite(v) else f">{horizon}"


def power_table(households: list[int], experiments: int, horizon: int, seed: int, policy: dict) -> list[dict]:
    rows = []
    long = {**policy, "max_days": horizon}
    for n in households:
        for lift in (0.02, -0.02):
            rng = np.random.default_rng([seed, n, 1 if lift > 0 else 2])
            days = []
            for _ in range(experiments):
                d = first_decision(simulate_clustered(rng, n, horizon, policy["share"], lift), long)
                right = d.ci[0] > 0 if lift > 0 else d.ci[1] < 0  # promote / rollback for a regression
                days.append(d.day if right else math.inf)
            rows.append({"households": n, "canary_households": round(n * policy["share"]), "lift": lift,
                         "power_by_max_days": sum(x <= policy["max_days"] for x in days) / experiments,
                         "median_days": _fmt_days(days, 0.5, horizon), "p80_days": _fmt_days(days, 0.8, horizon)})
    return rows


def aa_rates(households: int, experiments: int, seed: int, policy: dict) -> dict:
    rng = np.random.default_rng([seed, households, 0])
    days = policy["max_days"]
    wrong = {"rule_clustered": 0, "rule_binomial_variance": 0, "peeking_z": 0, "rule_meal_level": 0}
    for _ in range(experiments):
        looks = simulate_clustered(rng, households, days, policy["share"], 0.0)
        wrong["rule_clustered"] += wrong_in_aa(first_decision(looks, policy))
        wrong["rule_binomial_variance"] += wrong_in_aa(first_decision([binomial_only(x) for x in looks], policy))
        wrong["peeking_z"] += peeking_z_rejects(looks, policy)
        wrong["rule_meal_level"] += wrong_in_aa(
            first_decision(simulate_meals(rng, households, days, policy["share"], 0.0), policy))
    return {k: v / experiments for k, v in wrong.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=500)
    parser.add_argument("--households", type=int, nargs="+", default=[2000, 5000, 10000, 20000])
    parser.add_argument("--horizon", type=int, default=112, help="days simulated for the power table")
    parser.add_argument("--seed", type=int, default=22)
    args = parser.parse_args(argv)
    policy = dict(CANARY_POLICY)
    started = time.perf_counter()
    print(f"policy: share {policy['share']}, alpha {policy['alpha']}, min_exposure {policy['min_exposure']} meals/arm, "
          f"min_days {policy['min_days']}, max_days {policy['max_days']}, tau^2 {policy['mixing_variance']:.2e}")
    print(f"world: {MEALS_PER_HOUSEHOLD_DAY:.3f} meals with an outcome / household / day, kept share {KEEP_RATE}, "
          f"household logit sd {HOUSEHOLD_LOGIT_SD}; {args.experiments} experiments per row")
    print()
    print(f"power (households clustered; the rule run to {args.horizon} days; days = days to the right decision)")
    print("| households | canary households | change | right by max_days | median days | days for 80% power |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in power_table(args.households, args.experiments, args.horizon, args.seed, policy):
        print(f"| {row['households']:,} | {row['canary_households']:,} | {row['lift'] * 100:+.0f} pt | "
              f"{row['power_by_max_days']:.0%} | {row['median_days']} | {row['p80_days']} |")
    print()
    print(f"A/A false-positive rate (same keep rate in both arms, {policy['max_days']} daily looks, "
          f"alpha {policy['alpha']})")
    print("| households | rule (cluster variance) | rule, binomial variance | rule, independent meals | daily z-test |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.households:
        r = aa_rates(n, args.experiments, args.seed, policy)
        print(f"| {n:,} | {r['rule_clustered']:.3f} | {r['rule_binomial_variance']:.3f} | {r['rule_meal_level']:.3f} | "
              f"{r['peeking_z']:.3f} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
