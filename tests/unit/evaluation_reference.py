"""Holdout AUROC and ROC as they were before scikit-learn (kept as the reference).

A verbatim copy of the plain-numpy `auroc` and `roc_points` that
`pipelines.gate.evaluation` used until they moved to `sklearn.metrics` (its
`compute_metrics` only changed how the confusion matrix is counted).
`test_evaluation.py` checks the new ones against these on the same inputs.
Test-only: nothing in `pipelines` imports it.
"""

from __future__ import annotations

import numpy as np

# Unchanged by the move to scikit-learn: the old code and the new share them.
from pipelines.gate.evaluation import _thin, _validate


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
