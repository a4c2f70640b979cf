"""The model card's figures as SVG: matplotlib (Agg-free: a bare `Figure`), byte-for-byte reproducible.

The same inputs give the same bytes, so a re-deploy of a version verifies as
identical and its checksums never change: no date in the metadata, a fixed
``svg.hashsalt`` (the ids matplotlib derives for clip paths and markers), text
kept as ``<text>`` (``svg.fonttype: none``: small, searchable, no font
outlines that depend on the installed fonts).  `pyplot` is never imported:
no global figure manager, no GUI backend, nothing shared between threads.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: rcParams of every figure (see the module docstring for why each matters).
STYLE: dict[Any, Any] = {  # keys: matplotlib.typing.RcKeyType
    "svg.hashsalt": "pipelines-model-card",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
#: One colour per scored model, the same in every figure.
COLOURS = {"challenger": "#1f5fa8", "champion": "#d9822b", "logistic": "#3a9d5d", "majority": "#9aa3ad"}


@dataclass(frozen=True)
class Scored:
    """One model's holdout probabilities, named as the card names it."""

    name: str
    prob: np.ndarray


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(STYLE):
        yield Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # Date: None leaves the date out; Creator names no matplotlib version (an upgrade changes bytes anyway).
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "pipelines model card"})
    return buffer.getvalue()


def confusion_matrix_svg(
    matrix: list[list[int]], *, title: str, subtitle: str = "", labels: tuple[str, str] = ("0", "1")
) -> bytes:
    """A 2x2 confusion matrix (rows: actual, columns: predicted): counts and shares of all rows."""
    if len(matrix) != 2 or any(len(row) != 2 for row in matrix):
        raise ValueError(f"expected a 2x2 confusion matrix, got {matrix!r}")
    counts = np.array(matrix, dtype=np.int64)
    total = int(counts.sum()) or 1
    with _figure(4.2, 3.8) as fig:
        from matplotlib import rc_context

        with rc_context({"axes.grid": False}):
            ax = fig.add_subplot()
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
        for (row, col), count in np.ndenumerate(counts):
            ink = "white" if count > 0.55 * counts.max() else "black"
            ax.text(col, row - 0.08, str(int(count)), ha="center", va="center", fontsize=15, color=ink)
            ax.text(col, row + 0.2, f"{100 * count / total:.1f}%", ha="center", va="center", color=ink)
        ax.set_xticks([0, 1], labels=list(labels))
        ax.set_yticks([0, 1], labels=list(labels))
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.xaxis.set_label_position("top")
        ax.xaxis.tick_top()
        ax.set_title(_lines(title, subtitle, f"{total} holdout rows"), fontsize=10, pad=12)
        return _svg(fig)


def reliability_svg(bins: list[dict[str, Any]], *, title: str, subtitle: str = "") -> bytes:
    """Observed positive rate against mean predicted probability, one point per non-empty bin.

    The points (matplotlib's ``gid`` ``reliability-points``) grow with their
    bin's row count, over the diagonal a perfectly calibrated model follows.
    """
    points = [b for b in bins if b.get("count") and b.get("mean_predicted") is not None]
    total = sum(int(b["count"]) for b in points) or 1
    with _figure(4.2, 4.2) as fig:
        ax = fig.add_subplot()
        _diagonal(ax)
        predicted = [float(b["mean_predicted"]) for b in points]
        observed = [float(b["observed_rate"]) for b in points]
        ax.plot(predicted, observed, color=COLOURS["challenger"], linewidth=1.2)
        sizes = [16 + 160 * (int(b["count"]) / total) for b in points]
        ax.scatter(predicted, observed, s=sizes, color=COLOURS["challenger"], zorder=3, gid="reliability-points")
        _unit_axes(ax, "mean predicted probability", "observed positive rate")
        ax.set_title(_lines(title, subtitle, f"{total} validation rows"), fontsize=10)
        return _svg(fig)


def holdout_curves_svg(
    y_true: np.ndarray, models: Sequence[Scored], *, thresholds: dict[str, float], title: str
) -> bytes:
    """ROC, precision-recall and calibration of every model on the same holdout, side by side.

    ``thresholds`` marks each model's operating point (its decision threshold)
    on the ROC and PR curves.  A constant scorer (the majority baseline) is a
    single point, drawn as one.
    """
    from pipelines.gate.evaluation import roc_points
    from pipelines.model.thresholds import reliability_bins

    truth = np.asarray(y_true).astype(bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    with _figure(12.0, 4.6) as fig:
        roc_ax, pr_ax, cal_ax = fig.subplots(1, 3)
        _diagonal(roc_ax)
        _diagonal(cal_ax)
        prevalence = positives / max(truth.size, 1)
        pr_ax.axhline(prevalence, color="#999999", linestyle="--", linewidth=0.8)
        for model in models:
            colour = COLOURS.get(model.name)
            label = model.name
            roc = roc_points(truth, model.prob)
            if roc:
                fpr = np.array([p["fpr"] for p in roc])
                tpr = np.array([p["tpr"] for p in roc])
                roc_ax.plot(fpr, tpr, color=colour, label=label, linewidth=1.4, gid=f"roc-{model.name}")
                # Precision from the same points: TP = tpr * P, FP = fpr * N (undefined before the first positive call).
                called = tpr * positives + fpr * negatives
                keep = called > 0
                precision = np.divide(tpr * positives, called, where=keep, out=np.zeros_like(called))
                pr_ax.plot(tpr[keep], precision[keep], color=colour, label=label, linewidth=1.4, gid=f"pr-{model.name}")
            cut = thresholds.get(model.name)
            if cut is not None and positives and negatives:
                called_pos = model.prob >= cut
                tpr_at = float((called_pos & truth).sum() / positives)
                fpr_at = float((called_pos & ~truth).sum() / negatives)
                prec_at = float((called_pos & truth).sum() / called_pos.sum()) if called_pos.any() else 0.0
                roc_ax.plot([fpr_at], [tpr_at], marker="o", color=colour, markersize=5)
                pr_ax.plot([tpr_at], [prec_at], marker="o", color=colour, markersize=5)
            bins = [b for b in reliability_bins(truth, model.prob) if b["count"]]
            cal_ax.plot(
                [b["mean_predicted"] for b in bins],
                [b["observed_rate"] for b in bins],
                marker="o",
                markersize=3.5,
                color=colour,
                label=label,
                linewidth=1.2,
                gid=f"calibration-{model.name}",
            )
        _unit_axes(roc_ax, "false positive rate", "true positive rate")
        roc_ax.set_title("ROC (dot: decision threshold)")
        _unit_axes(pr_ax, "recall", "precision")
        pr_ax.set_title(f"Precision-recall (dashed: prevalence {prevalence:.2f})")
        _unit_axes(cal_ax, "mean predicted probability", "observed positive rate")
        cal_ax.set_title("Calibration (10 bins)")
        fig.legend(*roc_ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(models))
        fig.suptitle(f"{title} — {truth.size} holdout rows, {positives} positive", fontsize=11)
        return _svg(fig)


@dataclass(frozen=True)
class SliceBar:
    """One value of the slice column: its size and the challenger's metrics (None: too small to judge)."""

    value: str
    rows: int
    positives: int
    metrics: dict[str, float] | None


def slices_svg(column: str, slices: Sequence[SliceBar], *, metrics: Sequence[str], title: str) -> bytes:
    """Grouped horizontal bars: each slice value's ``metrics``; slices too small to judge are labelled so."""
    height = 1.2 + 0.42 * len(metrics) * max(len(slices), 1) / 2
    with _figure(7.0, min(max(height, 2.6), 12.0)) as fig:
        ax = fig.add_subplot()
        bar = 0.8 / len(metrics)
        palette = ["#1f5fa8", "#d9822b", "#3a9d5d", "#8e5bb5"]
        for i, metric in enumerate(metrics):
            ys = [row - 0.4 + bar * (i + 0.5) for row in range(len(slices))]
            values = [s.metrics.get(metric) or 0.0 if s.metrics else 0.0 for s in slices]
            ax.barh(ys, values, height=bar * 0.92, color=palette[i % len(palette)], label=metric, gid=f"slice-{metric}")
        for row, s in enumerate(slices):
            if s.metrics is None:
                ax.text(0.01, row, "too few rows or positives to judge", va="center", fontsize=8, color="#555555")
        labels = [f"{s.value}\n{s.rows} rows, {s.positives} pos." for s in slices]
        ax.set_yticks(range(len(slices)), labels=labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("challenger on the holdout")
        ax.set_title(f"{title} by {column}")
        fig.legend(loc="outside upper center", ncols=len(metrics))
        return _svg(fig)


def _lines(*parts: str) -> str:
    return "\n".join(part for part in parts if part)


def _diagonal(ax: Axes) -> None:
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=0.8)


def _unit_axes(ax: Axes, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
