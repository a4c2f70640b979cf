"""Paired comparison of two models scored on the same holdout rows.

The gate asks "is the challenger really worse than the champion, or is that
holdout noise?".  Both models are scored on the *same* rows, so the question is
answered on paired data, in time linear in the holdout rows (n log n for AUROC):

* a seeded paired bootstrap yields a percentile interval of ``challenger -
  champion`` for every metric of the confusion matrix (drawn as multinomial
  counts of the 8 paired label/prediction cells, which is the row bootstrap
  exactly, without touching rows);
* DeLong's variance of the paired AUROC difference yields its interval;
* McNemar's mid-p test uses the discordant correct/incorrect pairs for
  accuracy and recall, where it is exact.

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

#: Metrics the paired comparison covers (the gate's and the baselines' metrics).
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc")
#: Metrics McNemar's test is exact for: accuracy (all rows) and recall (positive rows).
MCNEMAR_METRICS = ("accuracy", "recall")


@dataclass(frozen=True)
class MetricDifference:
    """``challenger - reference`` for one metric, with its uncertainty.

    The reference is the champion, or a baseline the gate compares against.
    """

    metric: str
    challenger: float | None
    reference: float | None
    delta: float | None
    #: Interval of ``delta``: percentile bootstrap, DeLong's for AUROC (None where undefined).
    ci_low: float | None
    ci_high: float | None
    #: One-sided McNemar mid-p for "the challenger is worse" (accuracy and recall only).
    p_worse: float | None
    #: Discordant pairs behind ``p_worse``: rows only the reference / only the challenger got right.
    reference_only: int | None
    challenger_only: int | None
    #: Which test decides significance: ``bootstrap``, ``delong`` (AUROC) or ``mcnemar``.
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
    ``mcnemar`` for accuracy and recall; otherwise the paired bootstrap for the
    metrics of the confusion matrix and DeLong's interval for AUROC.  A drop
    is significant when the interval lies entirely below 0, or McNemar's
    one-sided mid-p is below ``(1 - confidence) / 2`` (the same one-sided level).
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
    cells = paired_cells(truth, pred_a, pred_b)
    counted = [m for m in metrics if m != "auroc"]
    samples = bootstrap_count_differences(cells, metrics=counted, resamples=config.resamples, seed=config.seed)
    point_a, point_b = (_count_metrics(cells[None, :] @ _MODEL_CELLS[model]) for model in (0, 1))
    differences = {}
    for metric in metrics:
        if metric == "auroc":
            auroc = delong_difference(truth, prob_a, prob_b, config.confidence)
            ours, theirs, (low, high), test = auroc.challenger, auroc.reference, auroc.interval, "delong"
        else:
            ours, theirs = float(point_a[metric][0]), float(point_b[metric][0])
            (low, high), test = percentile_interval(samples[metric], config.confidence), "bootstrap"
        differences[metric] = MetricDifference(
            metric=metric,
            challenger=ours,
            reference=theirs,
            delta=None if ours is None or theirs is None else ours - theirs,
            ci_low=low,
            ci_high=high,
            **_mcnemar_fields(metric, truth, pred_a, pred_b, config=config, interval_test=test, ci_high=high),
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
    interval_test: str,
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
    return {**fields, "test": interval_test, "significant_drop": ci_high is not None and ci_high < 0}


def mcnemar_midp(reference_only: int, challenger_only: int) -> float:
    """One-sided McNemar mid-p that the challenger is worse.

    Under "equally good", each of the ``n`` discordant rows is equally likely
    to favour either model: ``reference_only ~ Binomial(n, 1/2)``.  The mid-p
    ``P(X > b) + P(X = b) / 2`` is less conservative than the exact p
    (`scipy.stats.binomtest`'s) yet keeps close to the nominal level.  1.0
    with no discordant rows (no evidence).
    """
    from scipy.stats import binom

    n = reference_only + challenger_only
    if n == 0:
        return 1.0
    return float(binom.sf(reference_only, n, 0.5) + 0.5 * binom.pmf(reference_only, n, 0.5))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Two-sided percentile interval of the finite ``samples``; (None, None) when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


# A holdout row falls in one of 8 cells: label, challenger's prediction, reference's prediction
# (cell = 4 * label + 2 * challenger + reference).  _MODEL_CELLS[model] maps the 8 cell counts to
# that model's (tp, fp, fn, tn): every metric but AUROC is a function of them.
_CELL_BITS = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=bool)


def _confusion_map(model: int) -> np.ndarray:
    label, pred = _CELL_BITS[:, 0], _CELL_BITS[:, 1 + model]
    return np.stack([pred & label, pred & ~label, ~pred & label, ~pred & ~label], axis=1).astype(np.float64)


_MODEL_CELLS = (_confusion_map(0), _confusion_map(1))


def paired_cells(truth: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> np.ndarray:
    """How many holdout rows fall in each of the 8 (label, challenger, reference) cells."""
    cell = 4 * truth.astype(np.int64) + 2 * pred_a.astype(np.int64) + pred_b.astype(np.int64)
    return np.bincount(cell, minlength=8).astype(np.float64)


def bootstrap_count_differences(
    cells: np.ndarray, *, metrics: list[str], resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """``resamples`` paired bootstrap draws of ``challenger - reference`` per confusion-matrix metric.

    A paired bootstrap draws n rows with replacement and applies the *same*
    draw to both models.  These metrics depend on a draw only through how many
    drawn rows fall in each of the 8 `paired_cells`, and those counts are
    exactly Multinomial(n, cell shares): drawing them directly is the same
    bootstrap in O(resamples) instead of O(resamples * rows).  Seeded: the
    same cells and seed give the same draws.
    """
    n = int(cells.sum())
    if n == 0 or not metrics:
        return {m: np.full(resamples, np.nan) for m in metrics}
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=resamples).astype(np.float64)
    ours, theirs = _count_metrics(draws @ _MODEL_CELLS[0]), _count_metrics(draws @ _MODEL_CELLS[1])
    return {m: ours[m] - theirs[m] for m in metrics}


def _count_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Each confusion-matrix metric per row of ``confusion`` (columns tp, fp, fn, tn)."""
    tp, fp, fn, tn = confusion.T
    recall = _safe_div(tp, tp + fn)
    return {
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (recall + _safe_div(tn, tn + fp)) / 2.0,
        "precision": _safe_div(tp, tp + fp),
        "recall": recall,
        # 2PR/(P+R) rewritten on counts: 0 when nothing is predicted or present, as in compute_metrics.
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
    }


@dataclass(frozen=True)
class AurocDifference:
    """Both models' AUROC and DeLong's interval of their difference (None where undefined)."""

    challenger: float | None
    reference: float | None
    interval: tuple[float | None, float | None]


def delong_difference(truth: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, confidence: float) -> AurocDifference:
    """DeLong's paired interval of ``AUROC(a) - AUROC(b)``, ties counting half.

    AUROC is the mean over positives of each positive's *placement* (the
    share of negatives it outscores); DeLong et al. (1988) estimate the
    variance of a paired difference from the placements of both classes,
    which midranks give after one sort per model and class (Sun & Xu 2014):
    O(n log n) where a bootstrap of AUROC costs O(resamples * n).  AUROC is
    None with a class absent; the interval also needs two rows of each class.
    """
    from scipy.stats import norm

    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return AurocDifference(None, None, (None, None))
    pos_a, neg_a = _placements(truth, prob_a)
    pos_b, neg_b = _placements(truth, prob_b)
    auc_a, auc_b = float(pos_a.mean()), float(pos_b.mean())
    if positives < 2 or negatives < 2:
        return AurocDifference(auc_a, auc_b, (None, None))
    variance = np.var(pos_a - pos_b, ddof=1) / positives + np.var(neg_a - neg_b, ddof=1) / negatives
    half_width = float(norm.ppf(1.0 - (1.0 - confidence) / 2.0) * np.sqrt(variance))
    delta = auc_a - auc_b
    return AurocDifference(auc_a, auc_b, (delta - half_width, delta + half_width))


def _placements(truth: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of negatives each positive outscores, and of positives each negative is outscored by."""
    from scipy.stats import rankdata

    ranks = rankdata(prob)
    pos_ranks, neg_ranks = ranks[truth], ranks[~truth]
    positives, negatives = pos_ranks.size, neg_ranks.size
    # A row's rank overall minus its rank within its class counts the other class below it (ties half).
    return (pos_ranks - rankdata(prob[truth])) / negatives, 1.0 - (neg_ranks - rankdata(prob[~truth])) / positives


def _safe_div(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)
