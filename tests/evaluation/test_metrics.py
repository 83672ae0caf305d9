"""Evaluation metrics against hand-computed values and, where installed, scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest

from include.evaluation import metrics

LABELS = [1, 0, 1, 1, 0, 0]
PROBS = [0.9, 0.8, 0.7, 0.4, 0.3, 0.4]


def test_hand_computed_values():
    # AUC: positives 0.9, 0.7, 0.4 vs negatives 0.8, 0.3, 0.4 -> wins 2+1+... = (3 + 2 + 1.5) / 9... by pairs:
    # 0.9 beats all 3 (3); 0.7 beats 0.3, 0.4 (2); 0.4 beats 0.3, ties 0.4 (1.5) -> 6.5 / 9
    assert metrics.roc_auc(LABELS, PROBS) == pytest.approx(6.5 / 9)
    t = metrics.threshold_metrics(LABELS, PROBS)
    # predicted kept: 0.9, 0.8, 0.7 -> tp 2, fp 1, fn 1
    assert t == pytest.approx({"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert metrics.brier(LABELS, PROBS) == pytest.approx((0.01 + 0.64 + 0.09 + 0.36 + 0.09 + 0.16) / 6)
    expected_loss = -(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.4) + math.log(0.7) + math.log(0.6)) / 6
    assert metrics.log_loss(LABELS, PROBS) == pytest.approx(expected_loss)
    # ECE, 10 bins: bin 9 {0.9: y1} |1-0.9|; bin 8 {0.8: y0} 0.8; bin 7 {0.7: y1} 0.3; bin 4 {0.4 y1, 0.4 y0} |0.5-0.4|*2;
    # bin 3 {0.3 y0} 0.3  -> (0.1 + 0.8 + 0.3 + 0.2 + 0.3) / 6
    assert metrics.expected_calibration_error(LABELS, PROBS) == pytest.approx(1.7 / 6)


def test_plan_ranking_counts_plans_whose_kept_meals_all_outrank_the_replaced():
    plans = ["a", "a", "b", "b", "c", "c", "d"]
    labels = [1, 0, 1, 0, 1, 0, 1]
    probs = [0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.3]  # a ranks right, b wrong, c tied, d has no replaced meal
    assert metrics.plan_ranking(plans, labels, probs) == pytest.approx((1 + 0 + 0.5) / 3)


def test_degenerate_and_bad_input():
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="no examples"):
        metrics.log_loss([], [])
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.brier([2], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.brier([1], [1.5])
    with pytest.raises(ValueError, match="equal length"):
        metrics.brier([1, 0], [0.5])


def test_latency_percentiles():
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert metrics.percentiles_ms(samples) == pytest.approx({"p50_ms": 50, "p95_ms": 95, "p99_ms": 99})


def test_against_scikit_learn_on_random_data():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 5000)
    probs = np.clip(labels * 0.3 + rng.random(5000) * 0.7, 0, 1).round(2)  # rounded: many ties
    assert metrics.roc_auc(labels, probs) == pytest.approx(sklearn_metrics.roc_auc_score(labels, probs))
    assert metrics.log_loss(labels, probs) == pytest.approx(sklearn_metrics.log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)))
    assert metrics.brier(labels, probs) == pytest.approx(sklearn_metrics.brier_score_loss(labels, probs))
    t = metrics.threshold_metrics(labels, probs)
    predicted = probs >= 0.5
    assert t["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted))
    assert t["precision"] == pytest.approx(sklearn_metrics.precision_score(labels, predicted))
    assert t["recall"] == pytest.approx(sklearn_metrics.recall_score(labels, predicted))
    assert t["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, predicted))
    fpr, tpr = metrics.roc_curve(labels, probs)
    sk_fpr, sk_tpr, _ = sklearn_metrics.roc_curve(labels, probs, drop_intermediate=False)
    assert fpr == pytest.approx(sk_fpr.tolist()) and tpr == pytest.approx(sk_tpr.tolist())
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(labels, probs))


def test_roc_curve_and_size_buckets_by_hand():
    fpr, tpr = metrics.roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1])
    assert (fpr, tpr) == ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    assert [metrics.size_bucket(s) for s in (None, 1, 2, 3, 4, 5, 9)] == ["unknown", "1", "2", "3-4", "3-4", "5+", "5+"]
