"""The gate's paired comparison as it was before scipy and DeLong (kept as the reference).

A verbatim copy of the row-resampling bootstrap and the hand-written McNemar
mid-p that `pipelines.gate.comparison` used until the gate was made linear in
holdout rows.  `test_comparison.py` checks the new statistics against these on
the same seeded inputs, and the gate benchmark times both.  Test-only code:
nothing in `pipelines` imports it.
"""

from __future__ import annotations

import numpy as np

# Unchanged by the rewrite: the old code and the new share it.
from pipelines.gate.comparison import percentile_interval

__all__ = ["bootstrap_metric_differences", "mcnemar_midp", "percentile_interval"]

_CELLS_PER_CHUNK = 2_000_000


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


def _safe_div(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)
