"""The trainer's metrics are written by hand (the training image carries no scikit-learn):
checked against scikit-learn and against hand-computed values, ties included."""
from __future__ import annotations

import math
import random

import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from include.training.modeling import classification_metrics, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_scikit_learn_with_ties(seed):
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(300)]
    scores = [round(rng.random() * 0.5 + 0.3 * y, 1) for y in labels]  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_hand_computed_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.9]))
    labels, probs = [1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]
    metrics = classification_metrics(labels, probs)
    assert metrics["accuracy"] == accuracy_score(labels, [p >= 0.5 for p in probs]) == 0.5
    assert metrics["loss"] == pytest.approx(log_loss(labels, probs))
