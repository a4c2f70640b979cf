"""Paired comparison of two models scored on the same holdout rows.

The gate asks "is the challenger really worse than the champion, or is that
holdout noise?".  Both models are scored on the *same* rows, so the question is
answered on paired data: a seeded, vectorised bootstrap resamples rows (the
same resample for both models) and yields a percentile confidence interval of
``challenger - champion`` for every metric; McNemar's mid-p test uses the
discordant correct/incorrect pairs for accuracy and recall, where it is exact.

Pure functions of arrays: no files, no clocks, the same inputs and seed give
the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Comparison, Gate
from pipelines.gate.evaluation import BASELINE_PREFIX, CHALLENGER, CHAMPION, LABEL

#: Metrics a bootstrap can compare (the gate's and the baselines' metrics).
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc")
#: Metrics McNemar's test is exact for: accuracy (all rows) and recall (positive rows).
MCNEMAR_METRICS = ("accuracy", "recall")
# Bound on resamples x rows held in memory at once (float64: ~16 MB per array).
_CELLS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class MetricDifference:
    """``challenger - reference`` for one metric, with its uncertainty.

    The reference is the champion, or a baseline the gate compares against.
    """

    metric: str
    challenger: float | None
    reference: float | None
    delta: float | None
    #: Percentile bootstrap interval of ``delta`` (None where the metric is undefined).
    ci_low: float | None
    ci_high: float | None
    #: One-sided McNemar mid-p for "the challenger is worse" (accuracy and recall only).
    p_worse: float | None
    #: Discordant pairs behind ``p_worse``: rows only the reference / only the challenger got right.
    reference_only: int | None
    challenger_only: int | None
    #: Which test decides significance: ``bootstrap`` or ``mcnemar``.
    test: str
    #: The drop is statistically significant at the configured confidence.
    significant_drop: bool


@dataclass(frozen=True)
class PairedComparison:
    """Every compared metric's difference plus how it was computed."""

    method: str
    confidence: float
    resamples: int
    seed: int
    rows: int
    positives: int
    differences: dict[str, MetricDifference]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_comparisons(scores: pd.DataFrame, gate: Gate, thresholds: dict[str, float]) -> dict[str, PairedComparison]:
    """The paired comparisons the gate needs, from the holdout scores frame.

    ``champion`` on the gate's compared metrics when the frame has champion
    scores, ``logistic`` on that baseline's metrics when the gate checks it;
    none under ``comparison.method: point``.  ``thresholds`` holds each
    model's decision threshold (``challenger``, ``champion``, ``logistic``).
    """
    if gate.comparison.method == "point":
        return {}
    wanted = {CHAMPION: (CHAMPION, gate.compared_metrics)}
    if gate.baselines.logistic is not None:
        wanted["logistic"] = (f"{BASELINE_PREFIX}logistic", list(gate.baselines.logistic.metrics))
    label, challenger = scores[LABEL].to_numpy(), scores[CHALLENGER].to_numpy()
    return {
        name: compare_paired(
            label,
            challenger,
            scores[column].to_numpy(),
            challenger_threshold=thresholds[CHALLENGER],
            reference_threshold=thresholds[name],
            metrics=metrics,
            config=gate.comparison,
        )
        for name, (column, metrics) in wanted.items()
        if column in scores.columns and name in thresholds
    }


def compare_paired(
    y_true: np.ndarray,
    challenger_prob: np.ndarray,
    reference_prob: np.ndarray,
    *,
    challenger_threshold: float,
    reference_threshold: float,
    metrics: list[str],
    config: Comparison,
) -> PairedComparison:
    """Compare two models' probabilities on the same rows for ``metrics``.

    Each model predicts positive at its own decision threshold (as it would
    serve).  ``config.method`` picks the test that decides significance:
    ``mcnemar`` for accuracy and recall, the bootstrap for every other metric
    and for every metric under ``bootstrap``.  A drop is significant when the
    bootstrap interval lies entirely below 0, or McNemar's one-sided mid-p is
    below ``(1 - confidence) / 2`` (the same one-sided level).
    """
    truth = np.asarray(y_true).reshape(-1).astype(bool)
    prob_a = np.asarray(challenger_prob, dtype=np.float64).reshape(-1)
    prob_b = np.asarray(reference_prob, dtype=np.float64).reshape(-1)
    if not truth.size == prob_a.size == prob_b.size:
        raise ValueError(f"paired arrays differ in length: {truth.size}, {prob_a.size}, {prob_b.size}")
    unknown = sorted(set(metrics) - set(BOOTSTRAP_METRICS))
    if unknown:
        raise ValueError(f"cannot compare metric(s) {unknown}; known: {list(BOOTSTRAP_METRICS)}")
    pred_a, pred_b = prob_a >= challenger_threshold, prob_b >= reference_threshold
    samples = bootstrap_metric_differences(
        truth, (prob_a, pred_a), (prob_b, pred_b), metrics=metrics, resamples=config.resamples, seed=config.seed
    )
    point_a = _point_metrics(truth, prob_a, pred_a)
    point_b = _point_metrics(truth, prob_b, pred_b)
    differences = {}
    for metric in metrics:
        low, high = percentile_interval(samples[metric], config.confidence)
        ours, theirs = point_a[metric], point_b[metric]
        differences[metric] = MetricDifference(
            metric=metric,
            challenger=ours,
            reference=theirs,
            delta=None if ours is None or theirs is None else ours - theirs,
            ci_low=low,
            ci_high=high,
            **_mcnemar_fields(metric, truth, pred_a, pred_b, config=config, ci_high=high),
        )
    return PairedComparison(
        method=config.method,
        confidence=config.confidence,
        resamples=config.resamples,
        seed=config.seed,
        rows=int(truth.size),
        positives=int(truth.sum()),
        differences=differences,
    )


def _mcnemar_fields(
    metric: str,
    truth: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    config: Comparison,
    ci_high: float | None,
) -> dict[str, Any]:
    """McNemar's counts and p for accuracy/recall, and which test decides significance."""
    fields: dict[str, Any] = {"p_worse": None, "reference_only": None, "challenger_only": None}
    if metric in MCNEMAR_METRICS:
        # Recall is accuracy on the positive rows, so McNemar restricted to them tests it exactly.
        rows = truth if metric == "recall" else np.ones_like(truth)
        right_a, right_b = (pred_a == truth)[rows], (pred_b == truth)[rows]
        fields["reference_only"] = int(np.sum(right_b & ~right_a))
        fields["challenger_only"] = int(np.sum(right_a & ~right_b))
        fields["p_worse"] = mcnemar_midp(fields["reference_only"], fields["challenger_only"])
    if config.method == "mcnemar" and fields["p_worse"] is not None:
        alpha = (1.0 - config.confidence) / 2.0
        return {**fields, "test": "mcnemar", "significant_drop": bool(fields["p_worse"] < alpha)}
    return {**fields, "test": "bootstrap", "significant_drop": ci_high is not None and ci_high < 0}


def mcnemar_midp(reference_only: int, challenger_only: int) -> float:
    """One-sided McNemar mid-p that the challenger is worse.

    Under "equally good", each of the ``n`` discordant rows is equally likely
    to favour either model: ``reference_only ~ Binomial(n, 1/2)``.  The mid-p
    ``P(X > b) + P(X = b) / 2`` is less conservative than the exact p yet keeps
    close to the nominal level.  1.0 with no discordant rows (no evidence).
    """
    n = reference_only + challenger_only
    if n == 0:
        return 1.0
    pmf = _binomial_half_pmf(n)
    return float(pmf[reference_only + 1 :].sum() + 0.5 * pmf[reference_only])


def _binomial_half_pmf(n: int) -> np.ndarray:
    """P(X = k) for k = 0..n, X ~ Binomial(n, 1/2), in log space (n may be large)."""
    k = np.arange(1, n + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((n - k + 1) / k))])
    return np.exp(log_choose - n * np.log(2.0))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Two-sided percentile interval of the finite ``samples``; (None, None) when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_metric_differences(
    truth: np.ndarray,
    challenger: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    *,
    metrics: list[str],
    resamples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """``resamples`` paired bootstrap draws of ``challenger - reference`` per metric.

    ``challenger`` and ``reference`` are ``(probabilities, predictions)``.
    Every draw resamples the rows with replacement and applies the *same*
    draw to both models, which is what makes the comparison paired.  Draws are
    row counts (a resample is a count per row), processed in chunks whose size
    depends only on the number of rows, so the result depends only on the
    inputs and ``seed``.  A metric undefined in a draw (AUROC with one class)
    is NaN there.
    """
    n = truth.size
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    if n == 0:
        return {m: np.full(resamples, np.nan) for m in metrics}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _CELLS_PER_CHUNK // n))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        counts = resample_counts(rng, size, n)
        ours = _weighted_metrics(counts, truth, *challenger, metrics)
        theirs = _weighted_metrics(counts, truth, *reference, metrics)
        for metric in metrics:
            out[metric].append(ours[metric] - theirs[metric])
        done += size
    return {m: np.concatenate(parts) for m, parts in out.items()}


def resample_counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """(resamples, n) matrix: how often each row is drawn in each resample of n draws."""
    index = rng.integers(0, n, size=(resamples, n))
    flat = (np.arange(resamples)[:, None] * n + index).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _weighted_metrics(
    counts: np.ndarray, truth: np.ndarray, prob: np.ndarray, pred: np.ndarray, metrics: list[str]
) -> dict[str, np.ndarray]:
    """Each metric for every resample at once (one value per row of ``counts``)."""
    tp = counts @ (pred & truth)
    fp = counts @ (pred & ~truth)
    fn = counts @ (~pred & truth)
    tn = counts @ (~pred & ~truth)
    recall = _safe_div(tp, tp + fn)
    values = {
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (recall + _safe_div(tn, tn + fp)) / 2.0,
        "precision": _safe_div(tp, tp + fp),
        "recall": recall,
        # 2PR/(P+R) rewritten on counts: 0 when nothing is predicted or present, as in compute_metrics.
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
    }
    if "auroc" in metrics:
        values["auroc"] = _weighted_auroc(counts, truth, prob)
    return {m: values[m] for m in metrics}


def _weighted_auroc(counts: np.ndarray, truth: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per resample, ties counting half; NaN where a class is absent.

    For each positive row, the weight of negatives scored below it is a prefix
    sum over the negatives sorted by score, so one cumulative sum per resample
    and two look-ups per positive replace the pairwise comparison.
    """
    neg_scores = np.sort(prob[~truth], kind="stable")
    neg_weights = counts[:, ~truth][:, np.argsort(prob[~truth], kind="stable")]
    cumulative = np.concatenate([np.zeros((counts.shape[0], 1)), np.cumsum(neg_weights, axis=1)], axis=1)
    pos_scores = prob[truth]
    below = cumulative[:, np.searchsorted(neg_scores, pos_scores, side="left")]
    at_or_below = cumulative[:, np.searchsorted(neg_scores, pos_scores, side="right")]
    pos_weights = counts[:, truth]
    u = np.sum(pos_weights * (below + at_or_below), axis=1) / 2.0
    pairs = pos_weights.sum(axis=1) * cumulative[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u / np.where(pairs > 0, pairs, 1.0), np.nan)


def _point_metrics(truth: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """The same metrics on the holdout as it is (all counts 1), None where undefined."""
    ones = np.ones((1, truth.size))
    values = _weighted_metrics(ones, truth, prob, pred, list(BOOTSTRAP_METRICS))
    return {m: (float(v[0]) if np.isfinite(v[0]) else None) for m, v in values.items()}


def _safe_div(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)
