"""The logistic baseline's fit as it was before scikit-learn (kept as the reference).

A verbatim copy of the Newton's-method L2 logistic regression that
`pipelines.model.baselines.fit_logistic` used until it moved to scikit-learn's
`LogisticRegression`.  `test_baselines.py` checks the new fit's coefficients
and metrics against it on the same data.  Test-only: nothing in `pipelines`
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The result type is unchanged: the old fit returns the one the new code does.
from pipelines.model.baselines import LogisticFit, _sigmoid, _with_intercept  # unchanged helpers

_MAX_NEWTON_STEPS = 50
_GRADIENT_TOLERANCE = 1e-8


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
