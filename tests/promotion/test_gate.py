"""The promotion gate as a table: every kind of threshold passing and failing, missing metrics,
the first model, the overrides, and rollback targets. Pure functions: no Airflow, no I/O."""
from __future__ import annotations

import pytest

from include.promotion.gate import PolicyError, decide, gate_inputs, load_policy
from include.promotion.history import rollback_target

GOOD = {"accuracy": 0.74, "roc_auc": 0.81, "log_loss": 0.52, "latency_p95_ms": 15.0, "val_loss": 0.50,
        "plan_ranking": 0.40, "examples": 5000, "floor_roc_auc": 0.70}
CHAMPION = {"accuracy": 0.73, "roc_auc": 0.80, "log_loss": 0.53, "plan_ranking": 0.39}


@pytest.fixture()
def policy():
    return load_policy(env={})


def failed(decision) -> set[str]:
    return {c.name for c in decision.checks if not c.passed}


def test_the_defaults_are_the_file_and_every_override_applies():
    defaults = load_policy(env={})
    assert defaults["absolute"]["min_accuracy"]["value"] == 0.65
    assert defaults["absolute"]["max_latency_p95_ms"]["value"] == 500
    overridden = load_policy(env={"DEPLOY_ACCURACY_THRESHOLD": "0.85", "DEPLOY_LATENCY_THRESHOLD": "200",
                                  "DEPLOY_LOSS_THRESHOLD": "0.3", "DEPLOY_VAL_LOSS_THRESHOLD": "0.35",
                                  "DEPLOY_MAX_AUC_DROP": "0", "DEPLOY_MIN_REPLAY_EXAMPLES": "10"})
    assert overridden["absolute"]["min_accuracy"]["value"] == 0.85
    assert overridden["absolute"]["max_latency_p95_ms"]["value"] == 200
    assert overridden["absolute"]["max_log_loss"]["value"] == 0.3
    assert overridden["absolute"]["max_val_loss"]["value"] == 0.35
    assert overridden["change"]["roc_auc"]["max_drop"] == 0
    assert overridden["min_replay_examples"]["value"] == 10
    with pytest.raises(PolicyError, match="DEPLOY_ACCURACY_THRESHOLD='high' is not a number"):
        load_policy(env={"DEPLOY_ACCURACY_THRESHOLD": "high"})


def test_a_good_candidate_passes_every_check(policy):
    decision = decide(policy, GOOD, CHAMPION, slices={})
    assert decision.passed and decision.reasons == []
    assert {c.name for c in decision.checks} >= {"min_accuracy", "min_roc_auc", "max_log_loss", "max_latency_p95_ms",
                                                 "max_val_loss", "beats_floor", "min_replay_examples",
                                                 "change_roc_auc", "change_log_loss", "change_plan_ranking",
                                                 "slice_guard"}


@pytest.mark.parametrize("change, failing", [
    ({"accuracy": 0.60}, {"min_accuracy"}),
    ({"roc_auc": 0.65, "floor_roc_auc": 0.60}, {"min_roc_auc", "change_roc_auc"}),
    ({"log_loss": 0.70}, {"max_log_loss", "change_log_loss"}),
    ({"latency_p95_ms": 501.0}, {"max_latency_p95_ms"}),
    ({"val_loss": 0.70}, {"max_val_loss"}),
    ({"floor_roc_auc": 0.81}, {"beats_floor"}),
    ({"examples": 499}, {"min_replay_examples"}),
    ({"roc_auc": 0.789}, {"change_roc_auc"}),            # dropped 0.011 > 0.01
    ({"plan_ranking": 0.35}, {"change_plan_ranking"}),
    ({"log_loss": 0.551}, {"change_log_loss"}),          # rose 0.021 > 0.02
])
def test_each_threshold_fails_on_its_own(policy, change, failing):
    decision = decide(policy, {**GOOD, **change}, CHAMPION, slices={})
    assert not decision.passed
    assert failed(decision) == failing
    assert len(decision.reasons) == len(failing)


def test_limits_are_inclusive(policy):
    edge = {**GOOD, "accuracy": 0.65, "roc_auc": 0.79, "log_loss": 0.55, "latency_p95_ms": 500.0, "examples": 500}
    assert decide(policy, edge, CHAMPION, slices={}).passed


@pytest.mark.parametrize("missing", ["accuracy", "roc_auc", "log_loss", "latency_p95_ms", "val_loss", "floor_roc_auc",
                                     "examples", "plan_ranking"])
def test_a_missing_metric_fails_its_check(policy, missing):
    candidate = {k: v for k, v in GOOD.items() if k != missing}
    decision = decide(policy, candidate, CHAMPION, slices={})
    assert not decision.passed
    assert any("missing" in r or "replayed examples" in r for r in decision.reasons), decision.reasons


def test_nan_counts_as_missing(policy):
    assert "min_roc_auc" in failed(decide(policy, {**GOOD, "roc_auc": float("nan")}, None))


def test_the_first_model_is_gated_on_absolutes_only(policy):
    decision = decide(policy, {**GOOD, "roc_auc": 0.71, "floor_roc_auc": 0.70}, None)
    assert decision.passed
    assert not any(c.name.startswith("change_") or c.name == "slice_guard" for c in decision.checks)
    assert "min_accuracy" in failed(decide(policy, {**GOOD, "accuracy": 0.5}, None))


def test_the_slice_guard_catches_a_large_slice_that_regressed(policy):
    slices = {"mode": {
        "assisted": {"examples": 900, "candidate": {"roc_auc": 0.70}, "champion": {"roc_auc": 0.78}},
        "autopilot": {"examples": 1200, "candidate": {"roc_auc": 0.86}, "champion": {"roc_auc": 0.80}},
        "tiny": {"examples": 50, "candidate": {"roc_auc": 0.40}, "champion": {"roc_auc": 0.90}},  # too small to judge
    }}
    decision = decide(policy, GOOD, CHAMPION, slices=slices)
    assert failed(decision) == {"slice_guard"}
    [reason] = decision.reasons
    assert "mode=assisted" in reason and "tiny" not in reason


def test_gate_inputs_come_from_the_report_and_the_version_tags():
    report = {"models": {"candidate": {"roc_auc": 0.8, "accuracy": 0.7}, "champion": {"roc_auc": 0.79},
                         "keep_rate": {"roc_auc": 0.69}},
              "counts": {"examples": 1234}, "slices": {"mode": {}}}
    candidate, champion, slices = gate_inputs(report, {"val_loss": "0.512000"})
    assert candidate == {"roc_auc": 0.8, "accuracy": 0.7, "floor_roc_auc": 0.69, "examples": 1234, "val_loss": 0.512}
    assert champion == {"roc_auc": 0.79} and slices == {"mode": {}}
    assert gate_inputs({**report, "models": {"candidate": {}}}, {})[1] is None


HISTORY = [{"version": "1", "previous_version": None, "change": "promoted"},
           {"version": "2", "previous_version": "1", "change": "promoted"},
           {"version": "3", "previous_version": "2", "change": "promoted"}]


@pytest.mark.parametrize("history, current, requested, target", [
    (HISTORY, "3", None, "2"),
    (HISTORY + [{"version": "2", "previous_version": "3", "change": "rolled_back"}], "2", None, "1"),
    (HISTORY, "3", "1", "1"),
    (HISTORY, "3", "7", None),      # never champion
    (HISTORY, "3", "3", None),      # already champion
    (HISTORY[:1], "1", None, None),  # the first champion has nothing before it
    ([], None, None, None),
])
def test_rollback_targets(history, current, requested, target):
    found, why = rollback_target(history, current, requested)
    assert found == target, why
    assert why


def test_the_policy_files_rollout_and_canary_are_the_canary_defaults_and_take_overrides():
    from include.promotion.canary import CANARY_POLICY, from_policy_file

    assert from_policy_file(load_policy({})) == CANARY_POLICY  # one set of defaults: the file's = the code's
    overridden = from_policy_file(load_policy({"PLANNER_PROMOTION_ROLLOUT": "direct", "PLANNER_CANARY_SHARE": "0.5",
                                               "PLANNER_CANARY_MIN_DAYS": "3"}))
    assert (overridden["rollout"], overridden["share"], overridden["min_days"]) == ("direct", 0.5, 3)
    assert isinstance(overridden["min_days"], int)
    with pytest.raises(PolicyError, match="rollout must be direct or canary"):
        load_policy({"PLANNER_PROMOTION_ROLLOUT": "sometimes"})
    with pytest.raises(ValueError, match="share"):
        from_policy_file(load_policy({"PLANNER_CANARY_SHARE": "1.5"}))
