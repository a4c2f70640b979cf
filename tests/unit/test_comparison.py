"""Paired comparisons: bootstrap and DeLong intervals and McNemar's test, checked against the old
row bootstrap, brute force and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import Comparison, Gate
from pipelines.gate.comparison import (
    bootstrap_count_differences,
    compare_paired,
    delong_difference,
    gate_comparisons,
    mcnemar_midp,
    paired_cells,
    percentile_interval,
)
from pipelines.gate.evaluation import compute_metrics, holdout_scores_frame

from . import comparison_reference as old

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


def two_models(n: int, seed: int, drift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated models; ``drift`` weakens the second one's signal."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    shared = rng.random(n)
    a = np.round(np.clip(0.35 * y + 0.65 * shared, 0, 1), 2)
    b = np.round(np.clip((0.35 - drift) * y + 0.65 * (0.7 * shared + 0.3 * rng.random(n)), 0, 1), 2)
    return y, a, b


@pytest.mark.parametrize(("seed", "drift"), [(1, 0.0), (2, 0.03), (3, 0.08), (4, 0.2)])
def test_intervals_match_the_old_row_bootstrap(seed: int, drift: float) -> None:
    """The multinomial bootstrap and DeLong's interval against the row bootstrap they replaced.

    Same inputs, same number of resamples: every interval end within 8 % of the
    interval's width (Monte Carlo noise of two independent 4,000-draw
    bootstraps is ~2-3 %), and the same significance decision wherever the old
    interval is clear of 0 by more than that.
    """
    y, a, b = two_models(3000, seed, drift)
    new = compare_paired(
        y, a, b, challenger_threshold=0.5, reference_threshold=0.45, metrics=METRICS,
        config=Comparison(resamples=4000, seed=seed),
    )  # fmt: skip
    truth = y.astype(bool)
    draws = old.bootstrap_metric_differences(
        truth, (a, a >= 0.5), (b, b >= 0.45), metrics=METRICS, resamples=4000, seed=seed
    )
    for metric in METRICS:
        low, high = old.percentile_interval(draws[metric], 0.95)
        assert low is not None and high is not None
        diff, width = new.differences[metric], high - low
        assert diff.ci_low == pytest.approx(low, abs=0.08 * width), metric
        assert diff.ci_high == pytest.approx(high, abs=0.08 * width), metric
        if abs(high) > 0.08 * width:
            assert diff.significant_drop == (high < 0), metric


def test_mcnemar_midp_matches_the_old_hand_written_one() -> None:
    for reference_only, challenger_only in [(0, 0), (1, 0), (0, 3), (5, 1), (4, 4), (17, 9), (300, 250), (5000, 4800)]:
        assert mcnemar_midp(reference_only, challenger_only) == pytest.approx(
            old.mcnemar_midp(reference_only, challenger_only), rel=1e-9, abs=1e-15
        )


def test_point_values_match_compute_metrics() -> None:
    y, a, b = two_models(500, seed=5, drift=0.05)
    result = compare_paired(
        y, a, b, challenger_threshold=0.5, reference_threshold=0.4, metrics=METRICS, config=Comparison()
    )
    ours, theirs = compute_metrics(y, a, 0.5), compute_metrics(y, b, 0.4)
    for metric in METRICS:
        assert result.differences[metric].challenger == pytest.approx(ours[metric], abs=1e-12), metric
        assert result.differences[metric].reference == pytest.approx(theirs[metric], abs=1e-12), metric


def test_delong_by_brute_force() -> None:
    """Placements from the pairwise comparison matrix (ties half), DeLong's variance by its definition."""
    y, a, b = two_models(120, seed=6, drift=0.1)
    truth = y.astype(bool)

    def placements(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi = (prob[truth][:, None] > prob[~truth][None, :]) + 0.5 * (prob[truth][:, None] == prob[~truth][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (pos_a, neg_a), (pos_b, neg_b) = placements(a), placements(b)
    m, k = truth.sum(), (~truth).sum()
    s10 = np.cov(np.vstack([pos_a, pos_b]))
    s01 = np.cov(np.vstack([neg_a, neg_b]))
    contrast = np.array([1.0, -1.0])
    se = np.sqrt(contrast @ (s10 / m + s01 / k) @ contrast)
    delta = pos_a.mean() - pos_b.mean()
    result = delong_difference(truth, a, b, 0.95)
    assert result.challenger == pytest.approx(compute_metrics(y, a)["auroc"], abs=1e-12)
    assert result.interval[0] == pytest.approx(delta - 1.959963984540054 * se, abs=1e-12)
    assert result.interval[1] == pytest.approx(delta + 1.959963984540054 * se, abs=1e-12)


def test_delong_is_undefined_without_both_classes() -> None:
    prob = np.array([0.2, 0.4, 0.9])
    assert delong_difference(np.zeros(3, dtype=bool), prob, prob, 0.95).interval == (None, None)
    one_positive = delong_difference(np.array([True, False, False]), prob, prob[::-1].copy(), 0.95)
    assert (one_positive.challenger, one_positive.interval) == (0.0, (None, None))


def test_bootstrap_draws_n_rows_and_is_seeded() -> None:
    y, a, b = two_models(400, seed=7, drift=0.05)
    cells = paired_cells(y.astype(bool), a >= 0.5, b >= 0.5)
    assert cells.sum() == 400
    first = bootstrap_count_differences(cells, metrics=["f1", "recall"], resamples=300, seed=1)
    again = bootstrap_count_differences(cells, metrics=["f1", "recall"], resamples=300, seed=1)
    other = bootstrap_count_differences(cells, metrics=["f1", "recall"], resamples=300, seed=2)
    np.testing.assert_array_equal(first["f1"], again["f1"])
    assert not np.array_equal(first["f1"], other["f1"])


def test_time_grows_no_faster_than_n_log_n() -> None:
    """Ten times the rows costs well under a hundred times the time (the old bootstrap was ~quadratic)."""
    import time

    def seconds(n: int) -> float:
        y, a, b = two_models(n, seed=8, drift=0.05)
        start = time.perf_counter()
        compare_paired(y, a, b, challenger_threshold=0.5, reference_threshold=0.5, metrics=METRICS, config=Comparison())
        return time.perf_counter() - start

    seconds(20_000)  # warm the lazy scipy imports
    small, large = min(seconds(20_000) for _ in range(3)), min(seconds(200_000) for _ in range(3))
    assert large < 30 * max(small, 0.005), (small, large)


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
