"""Decision thresholds and calibration chosen on validation scores with a known optimum."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import ThresholdChoice
from pipelines.errors import TrainingError
from pipelines.model.thresholds import choose_threshold, fit_calibration

# Scores in descending order with their labels: at >= 0.7 (3 rows: 2 positives) F1 = 2*(2/3)*(2/3)/(4/3) = 0.667;
# at >= 0.4 (5 rows, 3 positives) precision 0.6, recall 1.0, F1 0.75 (the maximum); at >= 0.8 precision 1, recall 1/3.
SCORES = np.array([0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1])
LABELS = np.array([1, 0, 1, 0, 1, 0, 0, 0])


def test_max_f1_finds_the_known_optimum() -> None:
    result = choose_threshold(LABELS, SCORES, ThresholdChoice(objective="max_f1"), fixed=0.5)
    assert result.threshold == 0.4
    assert result.validation["f1"] == pytest.approx(0.75)
    assert result.constraint_met


def test_max_recall_subject_to_precision() -> None:
    # Precision >= 0.66: only thresholds 0.9 (1/1), 0.7 (2/3) qualify; 0.7 has the higher recall.
    result = choose_threshold(LABELS, SCORES, ThresholdChoice(objective="max_recall", min_precision=0.66), fixed=0.5)
    assert result.threshold == 0.7
    assert result.validation["recall"] == pytest.approx(2 / 3)


def test_max_precision_subject_to_recall_prefers_the_higher_threshold_on_ties() -> None:
    result = choose_threshold(LABELS, SCORES, ThresholdChoice(objective="max_precision", min_recall=1.0), fixed=0.5)
    assert result.threshold == 0.4


def test_min_cost_follows_the_cost_matrix() -> None:
    # FN costly: flag down to the last positive (0.4: 2 FP, 0 FN -> cost 2) rather than 0.9 (0 FP, 2 FN -> 20).
    costly_fn = choose_threshold(LABELS, SCORES, ThresholdChoice(objective="min_cost", cost_fn=10), fixed=0.5)
    assert costly_fn.threshold == 0.4
    # FP costly: flag only the top row (0 FP, 2 FN -> 2) rather than 0.4 (2 FP -> 20).
    costly_fp = choose_threshold(LABELS, SCORES, ThresholdChoice(objective="min_cost", cost_fp=10), fixed=0.5)
    assert costly_fp.threshold == 0.9


def test_unmeetable_constraint_falls_back_to_max_f1_and_says_so() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 0])  # the top score is a negative: precision never reaches 0.9
    result = choose_threshold(labels, SCORES, ThresholdChoice(objective="max_recall", min_precision=0.9), fixed=0.5)
    best_f1 = choose_threshold(labels, SCORES, ThresholdChoice(objective="max_f1"), fixed=0.5)
    assert not result.constraint_met
    assert result.threshold == best_f1.threshold


def test_fixed_objective_keeps_the_spec_threshold() -> None:
    result = choose_threshold(LABELS, SCORES, ThresholdChoice(), fixed=0.65)
    assert (result.threshold, result.objective) == (0.65, "fixed")


def test_tied_scores_are_one_candidate() -> None:
    result = choose_threshold(
        np.array([1, 0, 1, 0]), np.array([0.6, 0.6, 0.6, 0.1]), ThresholdChoice(objective="max_f1"), fixed=0.5
    )
    assert result.threshold == 0.6


def test_platt_recovers_a_known_slope_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=20_000)
    # True probability sigmoid(0.5 * logit - 1): the model's logits are overconfident and biased.
    labels = (rng.random(logits.size) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))).astype(float)
    platt = fit_calibration(labels, logits, "platt")
    assert platt.scale == pytest.approx(0.5, abs=0.05)
    assert platt.bias == pytest.approx(-1.0, abs=0.05)
    order = np.argsort(logits)
    assert np.all(np.diff(platt.apply(logits)[order]) >= 0)
    temperature = fit_calibration(labels, logits, "temperature")
    assert temperature.bias == 0.0 and 0 < temperature.scale < 1


def test_calibration_needs_both_classes() -> None:
    with pytest.raises(TrainingError, match="both classes"):
        fit_calibration(np.zeros(5), np.arange(5.0), "platt")
    assert fit_calibration(np.zeros(5), np.arange(5.0), "none").method == "none"
