"""Naive baselines the challenger must beat, fitted on the train split and scored on the holdout.

* ``majority``: predicts the train split's majority class for every row.  Its
  balanced accuracy is 0.5 and its AUROC 0.5 whatever the class balance; its
  plain accuracy is the majority's share (0.94 on a 6 %-positive holdout), which
  is why the gate compares against it on balanced accuracy, not accuracy.
* ``logistic``: an L2-regularised logistic regression on the same preprocessed
  features (the `Preprocessor` fitted on the same train split), with the same
  class weighting and decision threshold as the vertical's model.  If a linear
  model does as well, the MLP is not earning its keep.

Pure numpy, deterministic (Newton's method from zero weights: no seed, no
sampling), a fraction of a second on the demo data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import VerticalSpec
from pipelines.errors import TrainingError
from pipelines.gate.evaluation import compute_metrics
from pipelines.model.features import Preprocessor, label_vector

_MAX_NEWTON_STEPS = 50
_GRADIENT_TOLERANCE = 1e-8
#: A linear baseline's estimate is settled long before this many rows; above it
#: a seeded sample keeps the fit to a few seconds and ~100 MB on any vertical.
MAX_LOGISTIC_TRAIN_ROWS = 200_000


@dataclass(frozen=True)
class LogisticFit:
    """Weights of a fitted logistic regression (the last entry is the intercept)."""

    coef: np.ndarray
    iterations: int
    converged: bool

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(_with_intercept(x) @ self.coef)


@dataclass(frozen=True)
class BaselineScores:
    """One baseline's holdout probabilities and metrics."""

    name: str
    prob: np.ndarray
    metrics: dict[str, Any]
    detail: dict[str, Any]

    def to_record(self) -> dict[str, Any]:
        """JSON-ready: metrics and how the baseline was built (no per-row arrays)."""
        return {**self.metrics, **self.detail}


def majority_baseline(y_train: np.ndarray, y_holdout: np.ndarray) -> BaselineScores:
    """Predict the train split's majority class (ties: negative) for every holdout row."""
    positive_share = float(np.mean(y_train)) if len(y_train) else 0.0
    majority = 1 if positive_share > 0.5 else 0
    prob = np.full(len(y_holdout), float(majority))
    # Hard 0/1 scores at threshold 0.5: the majority class whatever the spec's threshold.
    metrics = compute_metrics(y_holdout, prob, threshold=0.5)
    return BaselineScores(
        "majority", prob, metrics, {"majority_class": majority, "train_positive_share": positive_share}
    )


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, c: float = 1.0, sample_weight: np.ndarray | None = None
) -> LogisticFit:
    """L2 logistic regression by Newton's method, scikit-learn's objective.

    Minimises ``C * sum(w_i * logloss_i) + ||beta||^2 / 2`` (intercept not
    penalised).  The problem is strictly convex, so Newton steps from zero
    converge in a handful of iterations; a step is halved while it would
    raise the objective, which keeps separable data from overshooting.
    """
    problem = _Problem.build(x, y, c=c, sample_weight=sample_weight)
    coef = np.zeros(problem.design.shape[1])
    loss = problem.objective(coef)
    for step in range(1, _MAX_NEWTON_STEPS + 1):
        gradient, hessian = problem.derivatives(coef)
        if np.max(np.abs(gradient)) < _GRADIENT_TOLERANCE * max(1.0, float(problem.weight.sum())):
            return LogisticFit(coef, step - 1, True)
        # A tiny ridge keeps the solve defined when a one-hot column is empty in train.
        direction = np.linalg.solve(hessian + 1e-10 * np.eye(hessian.shape[0]), gradient)
        coef, loss = problem.line_search(coef, direction, loss)
    return LogisticFit(coef, _MAX_NEWTON_STEPS, False)


def logistic_baseline(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    spec: VerticalSpec,
    *,
    c: float = 1.0,
    validation: pd.DataFrame | None = None,
) -> BaselineScores:
    """Fit the logistic baseline on ``train`` and score ``holdout``, as the spec's model is.

    The preprocessing is fitted on the whole train split, like the model's;
    the regression itself on at most `MAX_LOGISTIC_TRAIN_ROWS` of its rows
    (a sample seeded by ``model.seed``).  With ``validation`` (the model's
    validation split), the calibration and decision threshold are chosen on
    it by the spec's ``model.threshold`` rule, exactly as for the model, so
    the comparison is between two models at their own chosen operating points.
    """
    from pipelines.model.thresholds import choose_threshold, fit_calibration

    preprocessor = Preprocessor.fit(train, spec.features, max_categories=spec.model.max_categories)
    if len(train) > MAX_LOGISTIC_TRAIN_ROWS:
        rows = np.random.default_rng(spec.model.seed).choice(len(train), MAX_LOGISTIC_TRAIN_ROWS, replace=False)
        train = train.iloc[np.sort(rows)]
    x_train, y_train = preprocessor.transform(train), label_vector(train, spec.label)
    weight = class_weights(y_train) if spec.model.balance_classes else None
    fit = fit_logistic(x_train, y_train, c=c, sample_weight=weight)
    if not fit.converged:
        raise TrainingError(
            f"the logistic baseline did not converge in {_MAX_NEWTON_STEPS} Newton steps; "
            "lower gate.baselines.logistic_c (stronger regularisation)",
            vertical=spec.name,
        )
    prob = fit.predict_proba(preprocessor.transform(holdout))
    threshold = spec.model.decision_threshold
    detail: dict[str, Any] = {
        "c": c,
        "iterations": fit.iterations,
        "balanced": spec.model.balance_classes,
        "train_rows": len(train),
    }
    if validation is not None:
        y_val = label_vector(validation, spec.label)
        val_logits = _with_intercept(preprocessor.transform(validation)) @ fit.coef
        calibration = fit_calibration(y_val, val_logits, spec.model.threshold.calibration)
        chosen = choose_threshold(
            y_val, calibration.apply(val_logits), spec.model.threshold, fixed=spec.model.decision_threshold
        )
        prob = calibration.apply(_with_intercept(preprocessor.transform(holdout)) @ fit.coef)
        threshold = chosen.threshold
        detail |= {"threshold_choice": chosen.to_dict(), "calibration": calibration.to_dict()}
    metrics = compute_metrics(label_vector(holdout, spec.label), prob, threshold)
    return BaselineScores("logistic", prob, metrics, detail)


def class_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights that give both classes the same total weight (the MLP's ``balance_classes``)."""
    y = np.asarray(y, dtype=np.float64)
    positives = float(y.sum())
    negatives = float(y.size - positives)
    if positives == 0 or negatives == 0:
        return np.ones_like(y)
    # Negatives keep weight 1, positives weigh negatives/positives: the usual pos_weight.
    return np.where(y > 0.5, negatives / positives, 1.0)


@dataclass(frozen=True)
class _Problem:
    """Penalised, weighted logistic loss on a design matrix with an intercept column."""

    design: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    penalty: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, y: np.ndarray, *, c: float, sample_weight: np.ndarray | None) -> _Problem:
        design = _with_intercept(np.asarray(x, dtype=np.float64))
        target = np.asarray(y, dtype=np.float64)
        weight = np.ones_like(target) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        penalty = np.full(design.shape[1], 1.0 / c)
        penalty[-1] = 0.0  # the intercept is not shrunk
        return cls(design, target, weight, penalty)

    def objective(self, coef: np.ndarray) -> float:
        z = self.design @ coef
        # log(1 + e^z) - y z, computed without overflow for large |z|.
        logloss = np.logaddexp(0.0, z) - self.target * z
        return float(self.weight @ logloss + 0.5 * np.sum(self.penalty * coef**2))

    def derivatives(self, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = _sigmoid(self.design @ coef)
        gradient = self.design.T @ (self.weight * (p - self.target)) + self.penalty * coef
        curvature = self.weight * p * (1 - p)
        hessian = (self.design * curvature[:, None]).T @ self.design + np.diag(self.penalty)
        return gradient, hessian

    def line_search(self, coef: np.ndarray, direction: np.ndarray, loss: float) -> tuple[np.ndarray, float]:
        scale = 1.0
        for _ in range(30):
            candidate = coef - scale * direction
            new_loss = self.objective(candidate)
            if new_loss <= loss:
                return candidate, new_loss
            scale /= 2.0
        return coef, loss


def _with_intercept(x: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(x, dtype=np.float64), np.ones((x.shape[0], 1))])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))
