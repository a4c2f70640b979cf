"""Paired comparisons: bootstrap intervals and McNemar's test, checked against brute force and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import Comparison, Gate
from pipelines.gate.comparison import (
    _weighted_metrics,
    bootstrap_metric_differences,
    compare_paired,
    gate_comparisons,
    mcnemar_midp,
    percentile_interval,
    resample_counts,
)
from pipelines.gate.evaluation import compute_metrics, holdout_scores_frame

METRICS = ["accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc"]


def noisy_scores(n: int, seed: int, positives: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a model that ranks positives somewhat higher, with ties from rounding."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positives).astype(int)
    prob = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)
    return y, prob


def flip(prob: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of ``prob`` whose ``rows`` are pushed to the other side of 0.5."""
    out = prob.copy()
    out[rows] = np.where(prob[rows] >= 0.5, 0.1, 0.9)
    return out


def test_weighted_metrics_match_compute_metrics_on_the_expanded_resample() -> None:
    y, prob = noisy_scores(300, seed=1)
    truth, pred = y.astype(bool), prob >= 0.5
    counts = resample_counts(np.random.default_rng(7), 5, y.size)
    weighted = _weighted_metrics(counts, truth, prob, pred, METRICS)
    for b in range(5):
        rows = np.repeat(np.arange(y.size), counts[b].astype(int))
        expected = compute_metrics(y[rows], prob[rows])
        for metric in METRICS:
            assert weighted[metric][b] == pytest.approx(expected[metric], abs=1e-12), metric


def test_resample_counts_draw_n_rows_each() -> None:
    counts = resample_counts(np.random.default_rng(0), 4, 50)
    assert counts.shape == (4, 50)
    assert (counts.sum(axis=1) == 50).all()


def test_same_seed_same_interval_other_seed_other_draws() -> None:
    y, a = noisy_scores(400, seed=2)
    _, b = noisy_scores(400, seed=3)
    config = Comparison(resamples=500, seed=11)
    kwargs = {"challenger_threshold": 0.5, "reference_threshold": 0.5, "metrics": ["recall", "auroc"]}
    first = compare_paired(y, a, b, config=config, **kwargs)
    again = compare_paired(y, a, b, config=config, **kwargs)
    assert first == again
    other = compare_paired(y, a, b, config=config.model_copy(update={"seed": 12}), **kwargs)
    assert other.differences["auroc"].ci_low != first.differences["auroc"].ci_low


def test_draws_do_not_depend_on_the_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.gate import comparison

    y, a = noisy_scores(200, seed=4)
    _, b = noisy_scores(200, seed=5)
    args = (y.astype(bool), (a, a >= 0.5), (b, b >= 0.5))
    whole = bootstrap_metric_differences(*args, metrics=["f1", "auroc"], resamples=300, seed=1)
    monkeypatch.setattr(comparison, "_CELLS_PER_CHUNK", 200 * 7)  # 7 resamples per chunk
    chunked = bootstrap_metric_differences(*args, metrics=["f1", "auroc"], resamples=300, seed=1)
    for metric in ("f1", "auroc"):
        np.testing.assert_array_equal(whole[metric], chunked[metric])


def test_a_model_compared_with_itself_differs_by_exactly_zero() -> None:
    y, prob = noisy_scores(300, seed=6)
    result = compare_paired(
        y, prob, prob, challenger_threshold=0.5, reference_threshold=0.5, metrics=METRICS, config=Comparison()
    )
    for diff in result.differences.values():
        assert (diff.delta, diff.ci_low, diff.ci_high, diff.significant_drop) == (0.0, 0.0, 0.0, False)
    assert result.differences["accuracy"].p_worse == 1.0  # no discordant rows: no evidence


def test_small_noisy_drop_is_not_significant_but_a_large_drop_is() -> None:
    y, champion = noisy_scores(1000, seed=8)
    positives = np.flatnonzero(y == 1)
    caught, missed = positives[champion[positives] >= 0.5], positives[champion[positives] < 0.5]
    config = Comparison(resamples=1000, seed=0)
    kwargs = {"challenger_threshold": 0.5, "reference_threshold": 0.5, "metrics": ["recall"], "config": config}

    # A retrain that misses 8 positives the champion caught and catches 5 it missed: net -3.
    noisy = flip(champion, np.r_[caught[:8], missed[:5]])
    small = compare_paired(y, noisy, champion, **kwargs).differences["recall"]
    assert small.delta == pytest.approx(-3 / positives.size)
    assert small.ci_low < 0 < small.ci_high
    assert not small.significant_drop

    worse = flip(champion, np.r_[caught[:40], missed[:5]])
    large = compare_paired(y, worse, champion, **kwargs).differences["recall"]
    assert large.delta == pytest.approx(-35 / positives.size)
    assert large.ci_high < 0 and large.significant_drop


def test_mcnemar_counts_discordant_rows_and_recall_uses_positives_only() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    champion = np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1])
    challenger = np.array([0.1, 0.1, 0.9, 0.9, 0.1, 0.9, 0.1, 0.1])
    result = compare_paired(
        y,
        challenger,
        champion,
        challenger_threshold=0.5,
        reference_threshold=0.5,
        metrics=["accuracy", "recall", "f1"],
        config=Comparison(method="mcnemar"),
    )
    recall, accuracy, f1 = (result.differences[m] for m in ("recall", "accuracy", "f1"))
    # Positives: rows 0, 1 only the champion got right, row 3 only the challenger.
    assert (recall.reference_only, recall.challenger_only, recall.test) == (2, 1, "mcnemar")
    # All rows: plus row 5 (champion right) and row 6 (challenger right).
    assert (accuracy.reference_only, accuracy.challenger_only) == (3, 2)
    assert recall.p_worse == pytest.approx(mcnemar_midp(2, 1))
    # McNemar has no form for F1: the bootstrap decides there.
    assert (f1.test, f1.p_worse) == ("bootstrap", None)


def test_mcnemar_midp_by_hand() -> None:
    # Binomial(6, 1/2): P(X > 5) + P(X = 5) / 2 = 1/64 + 3/64 = 0.0625.
    assert mcnemar_midp(5, 1) == pytest.approx(0.0625)
    assert mcnemar_midp(1, 5) == pytest.approx(0.9375)
    assert mcnemar_midp(4, 4) == pytest.approx(0.5)
    assert mcnemar_midp(0, 0) == 1.0
    # Large counts stay finite (log space).
    assert 0.0 < mcnemar_midp(5000, 4800) < 0.05


def test_mcnemar_decides_significance_under_its_method() -> None:
    y = np.array([1] * 40 + [0] * 160)
    champion = np.where(y == 1, 0.9, 0.1)
    challenger = champion.copy()
    challenger[:8] = 0.1  # 8 positives lost, none gained: p = 0.5^8 / 2
    kwargs = {"challenger_threshold": 0.5, "reference_threshold": 0.5, "metrics": ["recall"]}
    mcnemar = compare_paired(y, challenger, champion, config=Comparison(method="mcnemar"), **kwargs)
    assert mcnemar.differences["recall"].p_worse == pytest.approx(0.5**8 / 2)
    assert mcnemar.differences["recall"].significant_drop
    lenient = compare_paired(y, challenger, champion, config=Comparison(method="mcnemar", confidence=0.999), **kwargs)
    assert not lenient.differences["recall"].significant_drop


def test_percentile_interval_ignores_undefined_draws() -> None:
    assert percentile_interval(np.array([np.nan, np.nan]), 0.95) == (None, None)
    low, high = percentile_interval(np.r_[np.arange(101.0), np.nan], 0.9)
    assert (low, high) == (pytest.approx(5.0), pytest.approx(95.0))


def test_each_model_uses_its_own_decision_threshold() -> None:
    y = np.array([1, 0, 1, 0])
    prob = np.array([0.6, 0.4, 0.3, 0.2])
    result = compare_paired(
        y, prob, prob, challenger_threshold=0.5, reference_threshold=0.25, metrics=["recall"], config=Comparison()
    )
    assert result.differences["recall"].challenger == 0.5
    assert result.differences["recall"].reference == 1.0


def test_bad_inputs_are_refused() -> None:
    config = Comparison()
    with pytest.raises(ValueError, match="differ in length"):
        compare_paired(
            np.array([0, 1]), np.array([0.1]), np.array([0.2, 0.3]),
            challenger_threshold=0.5, reference_threshold=0.5, metrics=["f1"], config=config,
        )  # fmt: skip
    with pytest.raises(ValueError, match="cannot compare"):
        compare_paired(
            np.array([0, 1]), np.array([0.1, 0.2]), np.array([0.2, 0.3]),
            challenger_threshold=0.5, reference_threshold=0.5, metrics=["specificity"], config=config,
        )  # fmt: skip


def test_gate_comparisons_pick_references_from_the_scores() -> None:
    y, a = noisy_scores(300, seed=9)
    _, b = noisy_scores(300, seed=10)
    gate = Gate(thresholds={"accuracy": 0.5, "recall": 0.5, "f1": 0.3}, champion_tolerance={"auroc": 0.02})
    frame = holdout_scores_frame(y, a, champion=b, baselines={"logistic": b, "majority": np.zeros(300)})
    thresholds = {"challenger": 0.5, "champion": 0.5, "logistic": 0.5, "majority": 0.5}
    both = gate_comparisons(frame, gate, thresholds)
    assert sorted(both) == ["champion", "logistic"]
    assert sorted(both["champion"].differences) == ["accuracy", "auroc", "f1", "recall"]
    assert sorted(both["logistic"].differences) == ["auroc"]
    no_champion = holdout_scores_frame(y, a, baselines={"logistic": b})
    assert sorted(gate_comparisons(no_champion, gate, thresholds)) == ["logistic"]
    point = gate.model_copy(update={"comparison": Comparison(method="point")})
    assert gate_comparisons(frame, point, thresholds) == {}
    primary = gate.model_copy(update={"comparison": Comparison(metrics=["recall"])})
    assert list(gate_comparisons(frame, primary, thresholds)["champion"].differences) == ["recall"]


def test_comparison_is_json_ready() -> None:
    import json

    y, a = noisy_scores(100, seed=12)
    result = compare_paired(
        y, a, a[::-1].copy(), challenger_threshold=0.5, reference_threshold=0.5, metrics=METRICS,
        config=Comparison(method="mcnemar", resamples=200),
    )  # fmt: skip
    assert json.loads(json.dumps(result.to_dict()))["differences"]["recall"]["test"] == "mcnemar"
