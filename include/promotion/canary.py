"""The decision rule of an online canary: champion against candidate on the share of proposed
meals kept, decided from logged events, valid although it is looked at every day.

    decide(CanaryLook(day, champion=ArmCounts(...), canary=ArmCounts(...)), CANARY_POLICY) -> Decision

Households are split by `include.serving.assignment.in_canary` (a share of them sees the
candidate, the rest the champion); each day the proposed meals with an outcome and the kept
ones are counted per arm, and `decide` says `promote`, `continue` or `rollback`.

**Why a sequential test.** A fixed-horizon z-test read every day and stopped at the first
p < alpha rejects a true null far more often than alpha (42 daily looks at alpha 0.05: 0.22 of
simulated A/A experiments, tests/promotion/test_canary.py). An
*always-valid* test keeps P(ever rejecting a true null) <= alpha however often, and whenever,
it is looked at.

**No library.** Neither `confseq` (PyPI 0.0.11, January 2023: an sdist only, a pybind11 C++
extension built at install, a 0.0.x API) nor `expectation` (0.x) is in .venv, and neither
offers a stable API worth pinning for a test that is a few lines of closed form. So this module
implements it, standard library only.

**The test: mixture SPRT (mSPRT), normal approximation** (Johari, Pekelis, Walsh, "Always valid
inference: continuous monitoring of A/B tests", 2017/2022; Robbins 1970). Let
`theta = p_canary - p_champion`, its estimate `d = k_c/n_c - k_0/n_0`, and `V` the estimate's
variance (below). With `d ~ N(theta, V)` and a normal mixture `theta ~ N(0, tau^2)` over the
alternatives, the mixture likelihood ratio against `theta = 0` is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

a non-negative martingale under the null, so by Ville's inequality P(sup Lambda >= 1/alpha)
<= alpha. The always-valid p-value is the running minimum of `1 / Lambda` over the looks; the
always-valid confidence sequence (the set of theta0 not rejected) is

    d +- sqrt(2 V (V + tau^2) / tau^2 * (log(1/alpha) + log((V + tau^2) / V) / 2))

and its running intersection. `tau^2` (`mixing_variance`) sets which effects the test is
quickest for: about the square of the effect one expects to matter (0.02^2 for 2 points);
any value keeps the error guarantee, only the power changes.

**Variance, and households.** Meals of one household are not independent (a persistent
household effect: `affinity` and the household's mode, restrictions and budget in
include/events/generate.py), and arms are assigned per household. With the per-household sums
of `ArmCounts` (`households`, `sum_kept_sq`, `sum_meals_sq`, `sum_kept_meals`: one GROUP BY
household, then sums) the variance of each arm's rate is the cluster-robust (ratio-estimator)
one, `H/(H-1) * sum_h (k_h - p m_h)^2 / M^2`; without them, the binomial `p(1-p)/M`, which
treats meals as independent and is too small when households differ (bench/canary.py shows
the A/A false-positive rate that costs). The larger of the two is used.

**The rule** (every key in CANARY_POLICY):

1. fewer than `min_days` days, or fewer than `min_exposure` meals with an outcome in either arm:
   `continue` (or, at `max_days`, `rollback`: not enough exposure, keep the champion);
2. the running confidence sequence excludes 0 (equivalently the always-valid p <= alpha):
   above 0 `promote`, below 0 `rollback`;
3. at `max_days` without that: `rollback`, "no difference: keep champion" (a candidate that
   cannot show it is better is not worth the switch);
4. otherwise `continue`.

Pass the previous look's Decision as `previous` to carry the running p-value and interval;
without it, each look stands alone (the decisions are the same, since a look that would have
stopped the experiment ends it; only the reported p and interval differ).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ROLLOUTS = ("direct", "canary")
ACTIONS = ("promote", "continue", "rollback")

CANARY_POLICY: dict[str, Any] = {
    "rollout": "canary",
    "share": 0.2,
    "alpha": 0.05,
    "min_exposure": 2000,
    "min_days": 7,
    "max_days": 42,
    "mixing_variance": 0.02 ** 2,
    "experiment_id": "{model_name}:v{model_version}:canary",
    "policy_version_id": "{model_name}:v{model_version}",
}
"""The canary's defaults; `include/promotion/policy.json` (`rollout`, `canary`) sets them, see
`from_policy_file`.

- `rollout`: `canary` (the default for runs the Asset starts: the gate's pass starts an online
  experiment and `decide` moves `champion` or not) or `direct` (the gate moves `champion` at once;
  runs from the trigger form, and the first model);
- `share`: the share of households in the canary arm, (0, 1) (`include.serving.assignment`);
  0.2 keeps 80% of households on the proven model while the canary still gathers a fifth of the
  traffic; ramping it up later keeps every canary household in the canary (monotone);
- `alpha`: the chance, over the whole experiment and all its daily looks, of promoting (or
  rolling back) when the two arms keep meals at the same rate;
- `min_exposure`: meals with an outcome (kept or replaced) needed in *each* arm before any
  decision: the normal approximation and the variance estimate need counts, not a handful;
- `min_days`: days before any decision: plans are weekly, so one full week of every weekday;
- `max_days`: the experiment's length; at the end, without evidence either way, the champion
  stays (the canary is rolled back);
- `mixing_variance`: tau^2 of the mSPRT's normal mixture, the squared lift the test is tuned
  for (0.02^2: two points of kept share);
- `experiment_id`: the scheme of the experiment id, formatted with `model_name` and
  `model_version`: one experiment per candidate version, so each candidate gets its own,
  independent draw of canary households, and re-running the same version's canary keeps them;
- `policy_version_id`: the scheme of the `context.policy_version_id` a served plan carries, one
  per model version: how the online evaluation tells which arm served an event.
"""


def experiment_id(model_name: str, model_version: int | str, policy: Mapping[str, Any] | None = None) -> str:
    """The experiment id of a candidate's canary, from the policy's scheme."""
    scheme = (policy or CANARY_POLICY)["experiment_id"]
    return scheme.format(model_name=model_name, model_version=model_version)


def policy_version_id(model_name: str, model_version: int | str, policy: Mapping[str, Any] | None = None) -> str:
    """The `context.policy_version_id` of plans served by this model version."""
    scheme = (policy or CANARY_POLICY)["policy_version_id"]
    return scheme.format(model_name=model_name, model_version=model_version)


def from_policy_file(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The canary policy from the promotion policy (`load_policy()`): its `rollout` value and `canary` section."""
    section = {key: entry["value"] if isinstance(entry, Mapping) else entry
               for key, entry in (policy.get("canary") or {}).items() if key not in ("about", "why")}
    rollout = policy.get("rollout", {})
    section["rollout"] = rollout.get("value", CANARY_POLICY["rollout"]) if isinstance(rollout, Mapping) else rollout
    return validate_policy(section)


def validate_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy with defaults filled in, or ValueError naming the first bad key."""
    unknown = set(policy) - set(CANARY_POLICY)
    if unknown:
        raise ValueError(f"unknown canary policy keys: {sorted(unknown)}")
    p = {**CANARY_POLICY, **policy}
    if p["rollout"] not in ROLLOUTS:
        raise ValueError(f"rollout must be one of {ROLLOUTS}, got {p['rollout']!r}")
    if not 0.0 < float(p["share"]) < 1.0:
        raise ValueError(f"share must be in (0, 1), got {p['share']!r}")
    if not 0.0 < float(p["alpha"]) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {p['alpha']!r}")
    for key in ("min_exposure", "min_days", "max_days"):
        if int(p[key]) != p[key] or p[key] < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {p[key]!r}")
    if p["max_days"] < max(1, p["min_days"]):
        raise ValueError(f"max_days ({p['max_days']}) must be >= min_days ({p['min_days']}) and >= 1")
    if not float(p["mixing_variance"]) > 0.0:
        raise ValueError(f"mixing_variance must be > 0, got {p['mixing_variance']!r}")
    for key in ("experiment_id", "policy_version_id"):
        if "{model_version}" not in str(p[key]):
            raise ValueError(f"{key} scheme must contain {{model_version}}")
    return p


@dataclass(frozen=True)
class ArmCounts:
    """One arm's cumulative counts since the experiment started.

    `meals`: proposed meals with an outcome; `kept`: those kept. Optional, for the
    cluster-robust variance: `households` (with at least one meal) and, over them,
    `sum_kept_sq` = sum k_h^2, `sum_meals_sq` = sum m_h^2, `sum_kept_meals` = sum k_h m_h.
    """
    meals: int
    kept: int
    households: int | None = None
    sum_kept_sq: float | None = None
    sum_meals_sq: float | None = None
    sum_kept_meals: float | None = None

    def __post_init__(self):
        if self.meals < 0 or self.kept < 0 or self.kept > self.meals:
            raise ValueError(f"need 0 <= kept <= meals, got kept={self.kept}, meals={self.meals}")
        stats = (self.households, self.sum_kept_sq, self.sum_meals_sq, self.sum_kept_meals)
        if any(s is None for s in stats) and not all(s is None for s in stats):
            raise ValueError("give all four per-household sums or none")

    @classmethod
    def from_households(cls, per_household: Iterable[tuple[int, int]]) -> ArmCounts:
        """From (meals, kept) per household: the counts with the per-household sums."""
        meals = kept = households = 0
        kk = mm = km = 0
        for m, k in per_household:
            if m <= 0:
                continue
            meals, kept, households = meals + m, kept + k, households + 1
            kk, mm, km = kk + k * k, mm + m * m, km + k * m
        return cls(meals, kept, households, kk, mm, km)

    @property
    def rate(self) -> float:
        return self.kept / self.meals if self.meals else 0.0

    def variance(self) -> float:
        """Variance of this arm's kept share: max(binomial, cluster-robust when given)."""
        n = self.meals
        if n == 0:
            return math.inf
        # Clipped away from 0 and 1 so that an arm with no (or only) kept meals still has
        # a variance; min_exposure keeps that from mattering in practice.
        p = min(max(self.rate, 0.5 / n), 1.0 - 0.5 / n)
        binomial = p * (1.0 - p) / n
        if self.households is None or self.households < 2:
            return binomial
        p = self.rate
        residual = self.sum_kept_sq - 2.0 * p * self.sum_kept_meals + p * p * self.sum_meals_sq
        h = self.households
        cluster = h / (h - 1) * max(residual, 0.0) / (n * n)
        return max(binomial, cluster)


@dataclass(frozen=True)
class CanaryLook:
    """The counts after `day` full days of the experiment (day 1 = after the first day)."""
    day: int
    champion: ArmCounts
    canary: ArmCounts


@dataclass(frozen=True)
class Decision:
    action: str  # promote | continue | rollback
    reason: str
    statistic: float  # log of the mixture likelihood ratio Lambda at this look (0.0 before exposure)
    p_value_always_valid: float  # running min over looks of min(1, 1 / Lambda)
    lift: float  # canary kept share - champion kept share
    ci: tuple[float, float]  # running (1 - alpha) confidence sequence for the lift
    day: int = 0
    champion_rate: float = 0.0
    canary_rate: float = 0.0


def msprt(lift: float, variance: float, mixing_variance: float, alpha: float) -> tuple[float, tuple[float, float]]:
    """log Lambda for H0: lift = 0, and the (1 - alpha) confidence interval of this look."""
    v, t2 = variance, mixing_variance
    log_lambda = 0.5 * math.log(v / (v + t2)) + t2 * lift * lift / (2.0 * v * (v + t2))
    half = math.sqrt(2.0 * v * (v + t2) / t2 * (math.log(1.0 / alpha) + 0.5 * math.log((v + t2) / v)))
    return log_lambda, (lift - half, lift + half)


def decide(look: CanaryLook, policy: Mapping[str, Any] | None = None, previous: Decision | None = None) -> Decision:
    """promote, continue or rollback after this look (module docstring: the rule)."""
    p = validate_policy(policy or {})
    alpha, day = float(p["alpha"]), int(look.day)
    champion, canary = look.champion, look.canary
    lift = canary.rate - champion.rate
    prev_p = previous.p_value_always_valid if previous is not None else 1.0
    prev_ci = previous.ci if previous is not None else (-math.inf, math.inf)
    common = {"day": day, "champion_rate": champion.rate, "canary_rate": canary.rate, "lift": lift}
    at_end = day >= p["max_days"]

    exposure = min(champion.meals, canary.meals)
    if exposure < p["min_exposure"] or day < p["min_days"]:
        if at_end:
            return Decision("rollback", f"not enough exposure by day {day} (max_days {p['max_days']}): "
                            f"{exposure} meals in the smaller arm, {p['min_exposure']} needed; keep champion",
                            0.0, prev_p, ci=prev_ci, **common)
        why = (f"day {day} < min_days {p['min_days']}" if day < p["min_days"]
               else f"{exposure} meals in the smaller arm < min_exposure {p['min_exposure']}")
        return Decision("continue", f"collecting: {why}", 0.0, prev_p, ci=prev_ci, **common)

    variance = champion.variance() + canary.variance()
    log_lambda, (lo, hi) = msprt(lift, variance, float(p["mixing_variance"]), alpha)
    p_value = min(prev_p, 1.0, math.exp(-log_lambda) if log_lambda < 700 else 0.0)
    run_lo, run_hi = max(lo, prev_ci[0]), min(hi, prev_ci[1])
    if run_lo > run_hi:  # the running intersection emptied: the arms drifted; report this look's
        run_lo, run_hi = lo, hi
    ci = (run_lo, run_hi)
    figures = (f"lift {lift:+.4f} (champion {champion.rate:.4f}, canary {canary.rate:.4f}), "
               f"{1 - alpha:.0%} CS [{run_lo:+.4f}, {run_hi:+.4f}], always-valid p {p_value:.4g}")
    if run_lo > 0.0:
        return Decision("promote", f"canary keeps more meals: {figures}", log_lambda, p_value, ci=ci, **common)
    if run_hi < 0.0:
        return Decision("rollback", f"canary keeps fewer meals (regression): {figures}", log_lambda, p_value,
                        ci=ci, **common)
    if at_end:
        return Decision("rollback", f"no difference by day {day} (max_days {p['max_days']}): keep champion; "
                        f"{figures}", log_lambda, p_value, ci=ci, **common)
    return Decision("continue", f"no decision yet: {figures}", log_lambda, p_value, ci=ci, **common)


def run_looks(looks: Iterable[CanaryLook], policy: Mapping[str, Any] | None = None) -> Decision:
    """Feed the daily looks in order until a decision other than continue (or the last look)."""
    decision = None
    for look in looks:
        decision = decide(look, policy, decision)
        if decision.action != "continue":
            break
    if decision is None:
        raise ValueError("no looks")
    return decision
