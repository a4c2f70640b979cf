"""Holdout metrics in plain numpy: JSON-ready numbers for the gate, DVC and the report."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import SliceGate
from pipelines.errors import TrainingError
from pipelines.layout import write_bytes_atomic


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


#: Column names of the holdout scores frame (see `holdout_scores_frame`).
LABEL, CHALLENGER, CHAMPION = "label", "challenger", "champion"
BASELINE_PREFIX, SLICE_PREFIX = "baseline:", "slice:"
#: The slice value of rows whose slice column is empty.
MISSING_SLICE = "__missing__"


@dataclass(frozen=True)
class SliceMetrics:
    """One value of a slice column: its size and, when large enough, its metrics."""

    column: str
    value: str
    rows: int
    positives: int
    #: None when the slice is below ``min_rows`` or ``min_positives`` (skipped).
    metrics: dict[str, Any] | None

    @property
    def skipped(self) -> bool:
        return self.metrics is None


def slice_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    values: np.ndarray,
    *,
    column: str,
    threshold: float,
    min_rows: int,
    min_positives: int,
) -> list[SliceMetrics]:
    """`compute_metrics` per distinct value of ``values`` (one per holdout row), sorted by value.

    Values are compared as `slice_values` tokens (None/NaN become ``"__missing__"``).
    Slices below ``min_rows`` rows or ``min_positives`` positives come back
    with ``metrics=None``: recall on three positives is noise, not evidence.
    """
    truth, prob = _validate(y_true, y_prob)
    keys = np.array([_slice_token(v) for v in np.asarray(values, dtype=object)], dtype=object)
    if keys.size != truth.size:
        raise ValueError(f"slice column {column!r} has {keys.size} values for {truth.size} rows")
    results = []
    for value in sorted(set(keys.tolist())):
        rows = keys == value
        positives = int(truth[rows].sum())
        big_enough = int(rows.sum()) >= min_rows and positives >= min_positives
        metrics = compute_metrics(truth[rows], prob[rows], threshold) if big_enough else None
        results.append(SliceMetrics(column, value, int(rows.sum()), positives, metrics))
    return results


def slice_values(series: pd.Series) -> np.ndarray:
    """A slice column's values as strings, the way reports name them.

    Integral floats read as ints (a column that gained a NaN still says
    ``12``, not ``12.0``); missing values become ``__missing__``.
    """
    return np.array([_slice_token(v) for v in series.to_numpy(dtype=object)], dtype=object)


def _slice_token(value: Any) -> str:
    if _is_missing(value):
        return MISSING_SLICE
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def holdout_scores_frame(
    y_true: np.ndarray,
    challenger: np.ndarray,
    *,
    champion: np.ndarray | None = None,
    baselines: dict[str, np.ndarray] | None = None,
    slices: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per holdout row: label, every model's probability, slice values.

    Columns: ``label`` (0/1), ``challenger``, ``champion`` (when there is one),
    ``baseline:<name>`` and ``slice:<column>``.  The gate's paired tests and
    slice checks read this instead of rescoring models.
    """
    columns: dict[str, Any] = {
        LABEL: np.asarray(y_true, dtype=np.int8),
        CHALLENGER: np.asarray(challenger, dtype=np.float64),
    }
    if champion is not None:
        columns[CHAMPION] = np.asarray(champion, dtype=np.float64)
    for name, prob in (baselines or {}).items():
        columns[f"{BASELINE_PREFIX}{name}"] = np.asarray(prob, dtype=np.float64)
    for column, values in (slices or {}).items():
        columns[f"{SLICE_PREFIX}{column}"] = pd.array(values, dtype="string")
    return pd.DataFrame(columns)


def write_holdout_scores(path: Path, scores: pd.DataFrame) -> str:
    """Write the scores frame as parquet (atomically); return the file's sha256."""
    buffer = io.BytesIO()
    scores.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_holdout_scores(path: Path, sha256: str | None) -> pd.DataFrame:
    """Read scores written by `write_holdout_scores`, refusing a file whose hash differs.

    Raises FileNotFoundError or ValueError: a paired test on rows other than
    the ones evaluate scored would compare the wrong things.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no holdout scores at {path}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"holdout scores {path} do not match the evaluate record (changed since)")
    return pd.read_parquet(io.BytesIO(data))


def gate_slice_metrics(
    slices: list[SliceGate], scores: pd.DataFrame, challenger: dict[str, Any]
) -> dict[str, list[SliceMetrics]]:
    """`slice_metrics` of the challenger for every slice the gate names that the scores hold."""
    return {
        s.column: slice_metrics(
            scores[LABEL].to_numpy(),
            scores[CHALLENGER].to_numpy(),
            scores[f"{SLICE_PREFIX}{s.column}"].to_numpy(dtype=object),
            column=s.column,
            threshold=float(challenger["threshold"]),
            min_rows=s.min_rows,
            min_positives=s.min_positives,
        )
        for s in slices
        if f"{SLICE_PREFIX}{s.column}" in scores.columns
    }


def _validate(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true).reshape(-1)
    prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if truth.shape != prob.shape:
        raise ValueError(f"y_true has {truth.size} rows but y_prob has {prob.size}")
    if np.isnan(prob).any():
        raise TrainingError(
            f"{int(np.isnan(prob).sum())} predicted probabilities are NaN; the model diverged — "
            "lower model.learning_rate or check the features for extreme values"
        )
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
