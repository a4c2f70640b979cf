"""Decision thresholds and calibration chosen on the validation split, in plain numpy.

The spec states the objective (`pipelines.config.ThresholdChoice`); the
threshold that meets it on validation travels in the model artefact, so
evaluation, the gate, serving and the baselines all use the same operating
point.  Calibration (Platt or temperature) maps a model's logit to a
probability; both are monotonic, so AUROC never changes, only what the
probabilities mean (and hence where a threshold lands).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.config import ThresholdChoice
from pipelines.errors import TrainingError

#: Platt's fit barely regularised: two parameters, hundreds of rows.
_PLATT_C = 1e4


@dataclass(frozen=True)
class Calibration:
    """``probability = sigmoid(scale * logit + bias)``; identity is (1, 0)."""

    method: str = "none"
    scale: float = 1.0
    bias: float = 0.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``logits``."""
        z = self.scale * np.asarray(logits, dtype=np.float64) + self.bias
        return np.exp(-np.logaddexp(0.0, -z))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ThresholdResult:
    """The chosen threshold and what it achieved on validation."""

    threshold: float
    objective: str
    #: False when a constraint (e.g. precision >= p) could not be met; max F1 was used instead.
    constraint_met: bool
    validation: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_calibration(y: np.ndarray, logits: np.ndarray, method: str) -> Calibration:
    """Fit ``method`` (``none``, ``platt``, ``temperature``) on validation labels and logits."""
    from pipelines.model.baselines import fit_logistic

    truth = np.asarray(y, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if method == "none":
        return Calibration()
    if truth.min() == truth.max():
        raise TrainingError(f"{method} calibration needs both classes in the validation split; widen it")
    if method == "platt":
        fit = fit_logistic(z.reshape(-1, 1), truth, c=_PLATT_C)
        scale, bias = float(fit.coef[0]), float(fit.coef[1])
        if scale <= 0:
            # A non-positive slope would reverse the ranking: the model scores are no better than chance.
            raise TrainingError(
                f"Platt calibration found a non-positive slope ({scale:.3g}): the model ranks validation rows "
                "no better than chance; use calibration: temperature or none"
            )
        return Calibration("platt", scale, bias)
    if method == "temperature":
        return Calibration("temperature", _temperature_scale(truth, z), 0.0)
    raise TrainingError(f"unknown calibration method {method!r}")


def _temperature_scale(truth: np.ndarray, z: np.ndarray) -> float:
    """1/T minimising the log loss, by golden-section search on log(1/T) in [-5, 5]."""

    def loss(log_scale: float) -> float:
        s = np.exp(log_scale) * z
        return float(np.mean(np.logaddexp(0.0, s) - truth * s))

    low, high = -5.0, 5.0
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if loss(a) <= loss(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2.0))


def choose_threshold(y: np.ndarray, prob: np.ndarray, choice: ThresholdChoice, *, fixed: float) -> ThresholdResult:
    """The threshold meeting ``choice`` on (``y``, ``prob``); ``fixed`` when the objective is ``fixed``.

    Candidates are the distinct scores (a row is positive at ``prob >=
    threshold``).  Ties in the objective go to the higher threshold (fewer
    alerts for the same value).  When a constraint (``min_precision`` or
    ``min_recall``) cannot be met at any threshold, max F1 is used and
    ``constraint_met`` is False, so the record says so.
    """
    truth = np.asarray(y, dtype=np.float64) > 0.5
    scores = np.asarray(prob, dtype=np.float64)
    if truth.size == 0:
        raise TrainingError("cannot choose a decision threshold on an empty validation split")
    if choice.objective == "fixed":
        return ThresholdResult(float(fixed), "fixed", True, _counts_at(truth, scores, fixed))
    candidates, tp, fp = _cumulative_counts(truth, scores)
    positives = float(truth.sum())
    fn = positives - tp
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, positives, out=np.zeros_like(tp), where=positives > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    feasible = np.ones_like(tp, dtype=bool)
    if choice.objective == "max_f1":
        value = f1
    elif choice.objective == "max_recall":
        value, feasible = recall, precision >= choice.min_precision
    elif choice.objective == "max_precision":
        value, feasible = precision, recall >= choice.min_recall
    elif choice.objective == "min_cost":
        value = -(choice.cost_fp * fp + choice.cost_fn * fn)
    else:  # pragma: no cover - the schema allows no other value
        raise TrainingError(f"unknown threshold objective {choice.objective!r}")
    met = bool(feasible.any())
    if not met:
        value, feasible = f1, np.ones_like(feasible)
    masked = np.where(feasible, value, -np.inf)
    # Candidates are in descending order: argmax picks the first (highest) threshold among ties.
    best = int(np.argmax(masked))
    threshold = float(candidates[best])
    return ThresholdResult(threshold, choice.objective, met, _counts_at(truth, scores, threshold))


def _cumulative_counts(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (descending) and TP/FP when predicting positive at ``>=`` each."""
    order = np.argsort(-scores, kind="stable")
    ordered, hits = scores[order], truth[order].astype(np.float64)
    tp_all, fp_all = np.cumsum(hits), np.cumsum(1.0 - hits)
    # The last row of each run of equal scores: everything at that score is predicted positive.
    last = np.r_[ordered[1:] != ordered[:-1], True]
    return ordered[last], tp_all[last], fp_all[last]


def _counts_at(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    pred = scores >= threshold
    tp = float(np.sum(pred & truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "rows": float(truth.size), "positives": tp + fn}


def reliability_bins(y: np.ndarray, prob: np.ndarray, *, bins: int = 10) -> list[dict[str, Any]]:
    """Observed positive rate vs mean predicted probability in ``bins`` equal-width bins of ``prob``.

    The data of a reliability diagram (kept in ``model.json``, drawn in the
    model card).  Every bin is listed, empty ones with ``count`` 0 and null
    rates, so the record shows where the model never predicts.  A probability
    of exactly 1.0 falls in the last bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    truth = np.asarray(y, dtype=np.float64) > 0.5
    scores = np.asarray(prob, dtype=np.float64)
    index = np.clip(np.floor(scores * bins).astype(int), 0, bins - 1)
    out: list[dict[str, Any]] = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        out.append(
            {
                "lower": round(b / bins, 6),
                "upper": round((b + 1) / bins, 6),
                "count": count,
                "mean_predicted": round(float(scores[mask].mean()), 6) if count else None,
                "observed_rate": round(float(truth[mask].mean()), 6) if count else None,
            }
        )
    return out
