"""Naive baselines: the majority class and an L2 logistic regression on the same features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Features, Label, VerticalSpec
from pipelines.model.baselines import class_weights, fit_logistic, logistic_baseline, majority_baseline


def spec(**model: object) -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "toy",
            "description": "toy",
            "owner": "team",
            "source": {"kind": "sql", "table": "toy"},
            "key": "id",
            "label": Label(column="y", positive="yes").model_dump(),
            "features": Features(numeric=["x1", "x2"], categorical=["colour"]).model_dump(),
            "model": model,
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["a@example.com"]},
        }
    )


def toy_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "blue", "green"], size=n)
    logit = 1.5 * x1 - 1.0 * x2 + (colour == "red") - 1.5
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"id": range(n), "x1": x1, "x2": x2, "colour": colour, "y": np.where(y, "yes", "no")})


def test_majority_negative_scores_like_a_constant() -> None:
    scores = majority_baseline(np.array([0, 0, 0, 1]), np.array([0, 1, 0, 0, 1]))
    m = scores.metrics
    assert scores.detail == {"majority_class": 0, "train_positive_share": 0.25}
    assert m["accuracy"] == pytest.approx(0.6)  # the negative share of the holdout
    assert (m["recall"], m["f1"], m["balanced_accuracy"], m["auroc"]) == (0.0, 0.0, 0.5, 0.5)


def test_majority_positive_predicts_everyone_positive() -> None:
    m = majority_baseline(np.array([1, 1, 0]), np.array([0, 1, 1, 1])).metrics
    assert (m["recall"], m["precision"], m["balanced_accuracy"]) == (1.0, 0.75, 0.5)


def test_majority_ignores_the_models_decision_threshold() -> None:
    # Even where the spec predicts positive at 0.05, the majority baseline says negative.
    scores = majority_baseline(np.array([0] * 95 + [1] * 5), np.array([0, 1]))
    assert scores.metrics["confusion_matrix"] == [[1, 0], [1, 0]]


def test_logistic_matches_a_general_purpose_optimiser() -> None:
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(size=300) > 0).astype(float)
    weight = class_weights(y)
    fit = fit_logistic(x, y, c=0.5, sample_weight=weight)
    assert fit.converged and fit.iterations < 20

    design = np.hstack([x, np.ones((300, 1))])

    def objective(beta: np.ndarray) -> float:
        z = design @ beta
        return float(0.5 * weight @ (np.logaddexp(0, z) - y * z) + 0.5 * beta[:-1] @ beta[:-1])

    reference = minimize(objective, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(fit.coef, reference, atol=1e-5)


def test_logistic_on_separable_data_stays_finite() -> None:
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    fit = fit_logistic(x, np.array([0.0, 0.0, 1.0, 1.0]))
    assert fit.converged and np.isfinite(fit.coef).all()
    assert (fit.predict_proba(x) > 0.5).tolist() == [False, False, True, True]


def test_class_weights_balance_the_classes() -> None:
    w = class_weights(np.array([1, 0, 0, 0]))
    assert w.tolist() == [3.0, 1.0, 1.0, 1.0]
    assert class_weights(np.array([0, 0])).tolist() == [1.0, 1.0]


def test_logistic_baseline_learns_the_signal_deterministically() -> None:
    train, holdout = toy_frame(800, seed=1), toy_frame(400, seed=2)
    first = logistic_baseline(train, holdout, spec())
    again = logistic_baseline(train, holdout, spec())
    np.testing.assert_array_equal(first.prob, again.prob)
    assert first.metrics["auroc"] > 0.75
    assert first.detail == {"c": 1.0, "iterations": first.detail["iterations"], "balanced": True, "train_rows": 800}
    assert first.metrics["threshold"] == 0.5
    record = first.to_record()
    assert "prob" not in record and record["auroc"] == first.metrics["auroc"]


def test_logistic_baseline_follows_the_models_class_weighting() -> None:
    train, holdout = toy_frame(800, seed=3), toy_frame(400, seed=4)
    balanced = logistic_baseline(train, holdout, spec(balance_classes=True))
    plain = logistic_baseline(train, holdout, spec(balance_classes=False))
    # Weighting the rare positives up predicts more of them.
    assert balanced.metrics["recall"] > plain.metrics["recall"]
    assert balanced.metrics["auroc"] == pytest.approx(plain.metrics["auroc"], abs=0.03)


def test_logistic_baseline_fits_on_a_seeded_sample_of_a_huge_train_split(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.model import baselines

    monkeypatch.setattr(baselines, "MAX_LOGISTIC_TRAIN_ROWS", 300)
    train, holdout = toy_frame(800, seed=5), toy_frame(200, seed=6)
    first, again = logistic_baseline(train, holdout, spec()), logistic_baseline(train, holdout, spec())
    assert first.detail["train_rows"] == 300
    np.testing.assert_array_equal(first.prob, again.prob)
    assert first.metrics["auroc"] > 0.7
