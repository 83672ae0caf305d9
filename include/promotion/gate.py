"""The promotion gate: the policy (a data file with environment overrides) and a pure decision.

`decide(policy, candidate, champion)` has no I/O: it takes plain metric dicts and returns every
check with its verdict, so the whole table of outcomes is tested without Airflow or MLflow.
The first model (no champion) is gated on the absolute thresholds, the floor and the replay
size only.
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources

POLICY_FILE = "policy.json"


class PolicyError(ValueError):
    """The policy file or an override is unusable; the message names it."""


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError as exc:
        raise PolicyError(f"{name}={raw!r} is not a number") from exc
    if math.isnan(value) or math.isinf(value):
        raise PolicyError(f"{name}={raw!r} is not a finite number")
    return value


def load_policy(env: Mapping[str, str] | None = None) -> dict:
    """The policy file with every `env` override applied (the file names each override)."""
    env = os.environ if env is None else env
    policy = json.loads(resources.files("include.promotion").joinpath(POLICY_FILE).read_text())
    resolved = copy.deepcopy(policy)

    def override(entry: dict, key: str) -> None:
        name = entry.get("env")
        if name and str(env.get(name, "")).strip():
            entry[key] = _number(name, str(env[name]).strip())

    for entry in resolved["absolute"].values():
        override(entry, "value")
    override(resolved["beats_floor"], "min_margin")
    for entry in resolved["change"].values():
        override(entry, "max_drop" if "max_drop" in entry else "max_rise")
    override(resolved["min_replay_examples"], "value")
    override(resolved["slice_guard"], "max_drop")
    rollout = resolved.get("rollout")
    if rollout and str(env.get(rollout["env"], "")).strip():
        rollout["value"] = str(env[rollout["env"]]).strip()
    if rollout and rollout["value"] not in ("direct", "canary"):
        raise PolicyError(f"{rollout['env']}={rollout['value']!r}: rollout must be direct or canary")
    for key, entry in (resolved.get("canary") or {}).items():
        if isinstance(entry, dict):
            override(entry, "value")
            if key in ("min_exposure", "min_days", "max_days") and float(entry["value"]).is_integer():
                entry["value"] = int(entry["value"])
    return resolved


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why it failed (empty when it passed)."""
        return [c.detail for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def _value(metrics: Mapping | None, key: str):
    value = (metrics or {}).get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def decide(policy: dict, candidate: Mapping, champion: Mapping | None, slices: Mapping | None = None) -> Decision:
    """Every check of the policy on the candidate's metrics (and the champion's, on the same rows).

    `candidate`/`champion`: metric name -> value (accuracy, roc_auc, log_loss, latency_p95_ms,
    plan_ranking, val_loss, examples, floor_roc_auc). `slices`: dimension -> value ->
    {examples, candidate{metric}, champion{metric}}. A metric the policy needs and the
    candidate lacks fails its check: nothing passes by default.
    """
    checks: list[Check] = []

    for name, rule in policy["absolute"].items():
        value, limit = _value(candidate, rule["metric"]), rule["value"]
        if value is None:
            checks.append(Check(name, False, f"{rule['metric']} is missing: cannot check {name} ({limit})"))
            continue
        ok = value >= limit if name.startswith("min_") else value <= limit
        relation = ">=" if name.startswith("min_") else "<="
        checks.append(Check(name, ok, f"{rule['metric']} {value:.4f} {'' if ok else 'not '}{relation} {limit}"))

    floor_rule = policy["beats_floor"]
    value, floor = _value(candidate, floor_rule["metric"]), _value(candidate, f"floor_{floor_rule['metric']}")
    if value is None or floor is None:
        checks.append(Check("beats_floor", False, f"{floor_rule['metric']} of the candidate or of the keep-rate "
                                                  "floor is missing"))
    else:
        ok = value - floor > floor_rule["min_margin"]
        checks.append(Check("beats_floor", ok, f"{floor_rule['metric']} {value:.4f} vs keep-rate floor {floor:.4f} "
                                               f"(margin {value - floor:+.4f}, must exceed {floor_rule['min_margin']})"))

    examples, minimum = _value(candidate, "examples"), policy["min_replay_examples"]["value"]
    checks.append(Check("min_replay_examples", examples is not None and examples >= minimum,
                        f"{int(examples or 0)} replayed examples (at least {int(minimum)} needed)"))

    if champion is not None:
        for metric, rule in policy["change"].items():
            new, old = _value(candidate, metric), _value(champion, metric)
            if new is None or old is None:
                checks.append(Check(f"change_{metric}", False, f"{metric} of the candidate or of the champion is missing"))
                continue
            if "max_drop" in rule:
                ok = old - new <= rule["max_drop"] + 1e-12
                detail = f"{metric} {new:.4f} vs champion {old:.4f} (change {new - old:+.4f}, may drop {rule['max_drop']})"
            else:
                ok = new - old <= rule["max_rise"] + 1e-12
                detail = f"{metric} {new:.4f} vs champion {old:.4f} (change {new - old:+.4f}, may rise {rule['max_rise']})"
            checks.append(Check(f"change_{metric}", ok, detail))

        guard = policy["slice_guard"]
        worst = []
        for dimension, values in (slices or {}).items():
            for slice_value, entry in values.items():
                if entry.get("examples", 0) < guard["min_examples"]:
                    continue
                new, old = _value(entry.get("candidate"), guard["metric"]), _value(entry.get("champion"), guard["metric"])
                if new is not None and old is not None and old - new > guard["max_drop"] + 1e-12:
                    worst.append(f"{dimension}={slice_value} {guard['metric']} {new:.4f} vs champion {old:.4f}")
        detail = (f"slices that lost more than {guard['max_drop']}: " + "; ".join(worst) if worst
                  else f"no slice of >= {guard['min_examples']} examples lost more than {guard['max_drop']}")
        checks.append(Check("slice_guard", not worst, detail))
    return Decision(passed=all(c.passed for c in checks), checks=checks)


def gate_inputs(report: dict, version_tags: Mapping[str, str]) -> tuple[dict, dict | None, dict]:
    """(candidate, champion, slices) for `decide`, from an evaluation report and the version's tags."""
    models = report["models"]
    candidate = dict(models["candidate"])
    candidate["floor_roc_auc"] = (models.get("keep_rate") or {}).get("roc_auc")
    candidate["examples"] = report["counts"]["examples"]
    val_loss = version_tags.get("val_loss")
    candidate["val_loss"] = float(val_loss) if val_loss not in (None, "") else None
    champion = dict(models["champion"]) if models.get("champion") else None
    return candidate, champion, report.get("slices") or {}
