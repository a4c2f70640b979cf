"""Holdout metrics and ROC as they were before scikit-learn (kept as the reference).

A verbatim copy of the plain-numpy `compute_metrics`, `auroc` and `roc_points`
that `pipelines.evaluation` used until they moved to `sklearn.metrics`.
`test_evaluation.py` checks the new ones against these on the same inputs.
Test-only: nothing in `pipelines` imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def compute_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Classification metrics of probabilities ``y_prob`` against 0/1 labels ``y_true``.

    A row is predicted positive when its probability is at or above
    ``threshold``.  Precision, recall, specificity and F1 are 0.0 when their
    denominator is 0; ``auroc`` is None when the labels hold a single class (it is undefined
    there, and a made-up 0.5 would pass or fail a gate for the wrong reason).
    """
    truth, prob = _validate(y_true, y_prob)
    pred = prob >= threshold
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    tn = int(np.sum(~pred & ~truth))
    n = truth.size
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "auroc": auroc(truth, prob),
        "specificity": specificity,
        # Mean of the per-class recalls: 0.5 for any constant predictor, whatever the class balance.
        "balanced_accuracy": (recall + specificity) / 2.0,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(n),
        "positives": int(tp + fn),
        "threshold": float(threshold),
    }


def auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic; ties count half.

    None when ``y_true`` holds only one class.
    """
    truth, prob = _validate(y_true, y_prob)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(prob)
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_points(y_true: np.ndarray, y_prob: np.ndarray, max_points: int = 101) -> list[dict[str, float]]:
    """ROC curve as ``[{fpr, tpr, threshold}, ...]`` from (0, 0) to (1, 1), for DVC plots.

    One point per distinct probability (predict positive at ``>= threshold``),
    thinned evenly to at most ``max_points`` while keeping both ends.  Empty
    when ``y_true`` holds a single class, where the curve is undefined.
    """
    truth, prob = _validate(y_true, y_prob)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return []
    order = np.argsort(-prob, kind="stable")
    sorted_prob, sorted_truth = prob[order], truth[order]
    # Last index of each run of equal probabilities: rows tied on score enter together.
    cut = np.r_[np.nonzero(np.diff(sorted_prob))[0], sorted_prob.size - 1]
    tps = np.cumsum(sorted_truth)[cut]
    fps = (cut + 1) - tps
    # Above the highest score nothing is predicted positive: the (0, 0) point.
    top = 1.0 if sorted_prob[0] < 1.0 else float(np.nextafter(sorted_prob[0], np.inf))
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[top, sorted_prob[cut]]
    keep = _thin(fpr.size, max_points)
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": float(thresholds[i])} for i in keep]


def _validate(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true).reshape(-1)
    prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if truth.shape != prob.shape:
        raise ValueError(f"y_true has {truth.size} rows but y_prob has {prob.size}")
    labels = set(np.unique(truth).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"y_true must hold only 0 and 1, got {sorted(labels)[:5]}")
    return truth.astype(bool), prob


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_values))[0] + 1]
    ends = np.r_[starts[1:], sorted_values.size]
    group_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _thin(size: int, max_points: int) -> list[int]:
    if size <= max_points:
        return list(range(size))
    return sorted({int(i) for i in np.linspace(0, size - 1, max(max_points, 2)).round()})


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0
