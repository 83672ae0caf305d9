"""Offline evaluation metrics: plain functions over labels and keep probabilities (numpy only),
checked against hand-computed values and against scikit-learn where it is installed.

Every function takes `labels` (0/1: was the proposed meal kept) and `probabilities` (the
model's keep probability) of equal length; a threshold of 0.5 turns probabilities into
decisions for the threshold metrics.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPS = 1e-7


def _arrays(labels: Sequence[int], probabilities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int8)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and probabilities must be 1-d and of equal length, got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("no examples to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def roc_auc(labels, probabilities) -> float:
    """Mann-Whitney rank statistic with ties averaged; NaN when only one class is present."""
    y, p = _arrays(labels, probabilities)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # average rank per tie group
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels, probabilities) -> float:
    y, p = _arrays(labels, probabilities)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(labels, probabilities) -> float:
    y, p = _arrays(labels, probabilities)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width probability bins (of the keep class)."""
    table = reliability_bins(labels, probabilities, bins)
    return sum(b["count"] * abs(b["keep_rate"] - b["mean_probability"]) for b in table) / sum(b["count"] for b in table)


def reliability_bins(labels, probabilities, bins: int = 10) -> list[dict]:
    """Per bin: mean predicted probability, observed keep rate, count (for the reliability diagram)."""
    y, p = _arrays(labels, probabilities)
    index = np.minimum((p * bins).astype(int), bins - 1)
    return [{"bin": b, "mean_probability": float(p[index == b].mean()), "keep_rate": float(y[index == b].mean()),
             "count": int((index == b).sum())} for b in range(bins) if (index == b).any()]


def threshold_metrics(labels, probabilities, threshold: float = 0.5) -> dict[str, float]:
    y, p = _arrays(labels, probabilities)
    predicted = p >= threshold
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float((predicted == (y == 1)).mean()), "precision": precision, "recall": recall, "f1": f1}


def plan_ranking(plan_ids: Sequence[str], labels, probabilities) -> float:
    """Share of plans (with both kept and replaced meals) in which every kept meal scores above
    every replaced one of the same plan; ties count half. NaN when no plan has both."""
    y, p = _arrays(labels, probabilities)
    plans = np.asarray(plan_ids)
    if plans.shape != y.shape:
        raise ValueError("plan_ids must have one entry per example")
    scores = []
    order = np.argsort(plans, kind="mergesort")
    boundaries = np.flatnonzero(plans[order][1:] != plans[order][:-1]) + 1
    for group in np.split(order, boundaries):
        kept, replaced = p[group][y[group] == 1], p[group][y[group] == 0]
        if len(kept) and len(replaced):
            lowest_kept, highest_replaced = kept.min(), replaced.max()
            scores.append(1.0 if lowest_kept > highest_replaced else 0.5 if lowest_kept == highest_replaced else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def quality_metrics(labels, probabilities, plan_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Every quality metric of one model on one set of examples."""
    metrics = {**threshold_metrics(labels, probabilities), "roc_auc": roc_auc(labels, probabilities),
               "log_loss": log_loss(labels, probabilities), "brier": brier(labels, probabilities),
               "ece": expected_calibration_error(labels, probabilities), "examples": float(len(labels))}
    if plan_ids is not None:
        metrics["plan_ranking"] = plan_ranking(plan_ids, labels, probabilities)
    return metrics


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 latency in milliseconds (nearest-rank on the sorted sample)."""
    if not seconds:
        raise ValueError("no latency samples")
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000  # noqa: E731
    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99)}


def roc_curve(labels, probabilities) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    y, p = _arrays(labels, probabilities)
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    positives, negatives = max(int(y.sum()), 1), max(len(y) - int(y.sum()), 1)
    return [0.0, *(fp / negatives).tolist()], [0.0, *(tp / positives).tolist()]


def size_bucket(size) -> str:
    """Household size as a slice value."""
    if size is None:
        return "unknown"
    size = int(size)
    return "1" if size <= 1 else "2" if size == 2 else "3-4" if size <= 4 else "5+"
