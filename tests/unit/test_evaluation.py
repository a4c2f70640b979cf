from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import SliceGate
from pipelines.errors import TrainingError
from pipelines.gate.evaluation import (
    MISSING_SLICE,
    auroc,
    compute_metrics,
    gate_slice_metrics,
    holdout_scores_frame,
    read_holdout_scores,
    roc_points,
    slice_metrics,
    slice_values,
    write_holdout_scores,
)

Y = np.array([1, 1, 0, 0, 1])
P = np.array([0.9, 0.4, 0.6, 0.1, 0.5])


def test_metrics_match_hand_computed_values() -> None:
    m = compute_metrics(Y, P, threshold=0.5)
    # Predicted [1, 0, 1, 0, 1]: tp=2 (rows 0, 4), fp=1 (row 2), fn=1 (row 1), tn=1 (row 3).
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # Positive/negative pairs ranked right: 0.9>0.6, 0.9>0.1, 0.4>0.1, 0.5>0.1 -> 4 of 6.
    assert m["auroc"] == pytest.approx(4 / 6)
    assert (m["n"], m["positives"]) == (5, 3)


def test_metrics_are_plain_json_types() -> None:
    m = compute_metrics(Y.astype(np.float32), P.astype(np.float32))
    assert json.loads(json.dumps(m)) == m
    assert all(type(m[k]) is float for k in ("accuracy", "precision", "recall", "f1", "auroc"))
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_threshold_is_inclusive() -> None:
    assert compute_metrics(np.array([1]), np.array([0.7]), threshold=0.7)["confusion_matrix"] == [[0, 0], [0, 1]]
    assert compute_metrics(np.array([1]), np.array([0.7]), threshold=0.71)["confusion_matrix"] == [[0, 0], [1, 0]]


def test_zero_denominators_give_zero() -> None:
    nothing_predicted = compute_metrics(np.array([1, 0]), np.array([0.1, 0.2]))
    assert nothing_predicted["precision"] == 0.0
    assert nothing_predicted["recall"] == 0.0
    assert nothing_predicted["f1"] == 0.0
    no_positives = compute_metrics(np.array([0, 0]), np.array([0.9, 0.2]))
    assert no_positives["recall"] == 0.0
    assert no_positives["auroc"] is None
    empty = compute_metrics(np.array([]), np.array([]))
    assert empty["accuracy"] == 0.0
    assert empty["n"] == 0


def test_auroc_single_class_is_none() -> None:
    assert auroc(np.array([1, 1]), np.array([0.3, 0.8])) is None
    assert compute_metrics(np.array([1, 1]), np.array([0.3, 0.8]))["auroc"] is None


def test_auroc_ties_count_half() -> None:
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    # Pairs: (0.5 vs 0.5) = 0.5, (0.5 vs 0.2) = 1, (0.8 vs 0.5) = 1, (0.8 vs 0.2) = 1 -> 3.5 / 4.
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.8])) == pytest.approx(0.875)


def test_auroc_extremes() -> None:
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="3 rows but y_prob has 2"):
        compute_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(TrainingError, match="NaN"):
        compute_metrics(np.array([0, 1]), np.array([0.1, np.nan]))


def test_roc_points_by_hand() -> None:
    points = roc_points(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.8]))
    assert points == [
        {"fpr": 0.0, "tpr": 0.0, "threshold": 1.0},
        {"fpr": 0.0, "tpr": 0.5, "threshold": 0.8},
        {"fpr": 0.5, "tpr": 1.0, "threshold": 0.5},  # the tied pair enters together
        {"fpr": 1.0, "tpr": 1.0, "threshold": 0.2},
    ]


def test_roc_area_matches_auroc() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + y * 0.3, 2)  # rounded: plenty of ties
    points = roc_points(y, p, max_points=10_000)
    fpr = np.array([pt["fpr"] for pt in points])
    tpr = np.array([pt["tpr"] for pt in points])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auroc(y, p), abs=1e-12)


def test_roc_points_thinned_keep_both_ends() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000)
    points = roc_points(y, rng.random(1000), max_points=11)
    assert len(points) <= 11
    assert (points[0]["fpr"], points[0]["tpr"]) == (0.0, 0.0)
    assert (points[-1]["fpr"], points[-1]["tpr"]) == (1.0, 1.0)
    assert [p["fpr"] for p in points] == sorted(p["fpr"] for p in points)


def test_roc_points_saturated_scores_and_single_class() -> None:
    points = roc_points(np.array([1, 0]), np.array([1.0, 0.0]))
    # Nothing scores above the first threshold, even a probability of exactly 1.0.
    assert points[0]["threshold"] > 1.0
    assert (points[0]["fpr"], points[0]["tpr"]) == (0.0, 0.0)
    assert points[1] == {"fpr": 0.0, "tpr": 1.0, "threshold": 1.0}
    assert roc_points(np.array([0, 0]), np.array([0.1, 0.2])) == []


# -- balanced accuracy, slices, holdout scores ---------------------------------


def test_balanced_accuracy_is_the_mean_of_both_recalls() -> None:
    m = compute_metrics(Y, P, threshold=0.5)
    # recall 2/3; specificity: tn=1 of 2 negatives.
    assert m["specificity"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)
    # A constant predictor scores 0.5 whatever the class balance.
    assert compute_metrics(np.array([0] * 95 + [1] * 5), np.zeros(100))["balanced_accuracy"] == 0.5


def test_slice_metrics_group_skip_and_name_missing_values() -> None:
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.9, 0.9, 0.1, 0.1])
    values = np.array(["lab", "lab", "lab", "lab", "er", "er", None, np.nan], dtype=object)
    parts = slice_metrics(y, p, values, column="clinic", threshold=0.5, min_rows=2, min_positives=1)
    by_value = {s.value: s for s in parts}
    assert [s.value for s in parts] == [MISSING_SLICE, "er", "lab"]
    assert by_value["lab"].metrics is not None and by_value["lab"].metrics["recall"] == 0.5
    assert (by_value["er"].rows, by_value["er"].positives, by_value["er"].metrics["recall"]) == (2, 2, 1.0)
    missing = by_value[MISSING_SLICE]
    assert (missing.rows, missing.positives, missing.skipped) == (2, 0, True)  # no positives: recall is noise


def test_slice_metrics_skip_below_min_rows() -> None:
    parts = slice_metrics(
        np.array([1, 0, 1]), np.array([0.9, 0.1, 0.9]), np.array(["a", "a", "b"]),
        column="c", threshold=0.5, min_rows=2, min_positives=0,
    )  # fmt: skip
    assert [(s.value, s.skipped) for s in parts] == [("a", False), ("b", True)]


def test_slice_values_tokens() -> None:
    series = pd.Series([12.0, None, "x", float("nan"), 3])
    assert slice_values(series).tolist() == ["12", MISSING_SLICE, "x", MISSING_SLICE, "3"]


def test_holdout_scores_round_trip_and_refuse_a_changed_file(tmp_path: Path) -> None:
    frame = holdout_scores_frame(
        np.array([1, 0]),
        np.array([0.7, 0.2]),
        champion=np.array([0.6, 0.4]),
        baselines={"logistic": np.array([0.5, 0.5])},
        slices={"clinic": np.array(["lab", MISSING_SLICE], dtype=object)},
    )
    assert list(frame.columns) == ["label", "challenger", "champion", "baseline:logistic", "slice:clinic"]
    path = tmp_path / "scores.parquet"
    digest = write_holdout_scores(path, frame)
    back = read_holdout_scores(path, digest)
    pd.testing.assert_frame_equal(back, frame)
    with pytest.raises(ValueError, match="do not match the evaluate record"):
        read_holdout_scores(path, "0" * 64)
    with pytest.raises(FileNotFoundError):
        read_holdout_scores(tmp_path / "absent.parquet", digest)


def test_gate_slice_metrics_use_the_challengers_threshold() -> None:
    frame = holdout_scores_frame(
        np.array([1, 1, 0, 1]), np.array([0.4, 0.6, 0.1, 0.45]), slices={"g": np.array(["a", "a", "a", "b"])}
    )
    gate_slices = [SliceGate(column="g", min_rows=1, min_positives=1, thresholds={"recall": 0.5})]
    low = gate_slice_metrics(gate_slices, frame, {"threshold": 0.3})["g"]
    high = gate_slice_metrics(gate_slices, frame, {"threshold": 0.5})["g"]
    assert [s.metrics["recall"] for s in low] == [1.0, 1.0]
    assert [s.metrics["recall"] for s in high] == [0.5, 0.0]
