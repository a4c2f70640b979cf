"""The descriptive files of a version folder: metrics, lineage, the model cards, the image.

``card_files`` builds them for `pipelines.release.deploy`: ``model_card.md`` (from the
deploy stage, plus a link to the image), ``model_card.json`` (for tools) and
``confusion_matrix.svg``, and ``reliability.svg`` (the validation reliability
diagram, when ``model.json`` carries its bins).  All are pure functions of their inputs, with no
timestamps, so a re-deploy of the same version produces the same bytes and
verifies as identical.  The image is a hand-written SVG: dependency-free,
diff-able, and it renders in any browser or Markdown viewer next to
``model_card.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from pipelines.release.bucket import (
    CONFUSION_MATRIX_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_CARD_JSON_FILE,
    RELIABILITY_FILE,
    json_bytes,
)

CARD_SCHEMA_VERSION = 1
_SCALAR_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "auroc",
    "threshold",
    "n",
    "positives",
)

# Geometry of the 2x2 grid (pixels).
_CELL = 90
_LEFT = 120
_TOP = 90


def confusion_matrix_svg(
    matrix: list[list[int]], *, title: str, subtitle: str = "", labels: tuple[str, str] = ("0", "1")
) -> bytes:
    """A 2x2 confusion matrix (rows: actual, columns: predicted) as a small SVG.

    Cells are shaded by count relative to the largest cell and show the count
    and its share of all rows.
    """
    if len(matrix) != 2 or any(len(row) != 2 for row in matrix):
        raise ValueError(f"expected a 2x2 confusion matrix, got {matrix!r}")
    counts = [[int(v) for v in row] for row in matrix]
    total = sum(map(sum, counts)) or 1
    peak = max(max(row) for row in counts) or 1
    width, height = _LEFT + 2 * _CELL + 20, _TOP + 2 * _CELL + 50
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<text x="{width // 2}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<text x="{width // 2}" y="38" text-anchor="middle" fill="#555">{escape(subtitle)}</text>',
        f'<text x="{_LEFT + _CELL}" y="{_TOP - 28}" text-anchor="middle">predicted</text>',
        f'<text x="24" y="{_TOP + _CELL}" text-anchor="middle" transform="rotate(-90 24 {_TOP + _CELL})">actual</text>',
    ]
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{_LEFT + i * _CELL + _CELL // 2}" y="{_TOP - 8}" text-anchor="middle">{escape(label)}</text>'
        )
        parts.append(
            f'<text x="{_LEFT - 8}" y="{_TOP + i * _CELL + _CELL // 2 + 4}" text-anchor="end">{escape(label)}</text>'
        )
    for r, row in enumerate(counts):
        for c, count in enumerate(row):
            parts.extend(_cell(r, c, count, count / peak, count / total))
    parts.append(f'<text x="{_LEFT}" y="{height - 12}" fill="#555">{total} holdout rows</text>')
    parts.append("</svg>")
    return ("\n".join(parts) + "\n").encode()


def _cell(row: int, col: int, count: int, intensity: float, share: float) -> list[str]:
    x, y = _LEFT + col * _CELL, _TOP + row * _CELL
    ink = "#ffffff" if intensity > 0.55 else "#000000"
    cx, cy = x + _CELL // 2, y + _CELL // 2
    return [
        f'<rect x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" fill="#1f5fa8" '
        f'fill-opacity="{0.08 + 0.84 * intensity:.3f}" stroke="#333"/>',
        f'<text x="{cx}" y="{cy}" text-anchor="middle" font-size="18" fill="{ink}">{count}</text>',
        f'<text x="{cx}" y="{cy + 18}" text-anchor="middle" fill="{ink}">{100 * share:.1f}%</text>',
    ]


# Geometry of the reliability diagram's plot area (pixels).
_PLOT = 260
_PLOT_LEFT = 60
_PLOT_TOP = 50


def reliability_svg(bins: list[dict[str, Any]], *, title: str, subtitle: str = "") -> bytes:
    """A reliability diagram: observed positive rate against mean predicted probability.

    One point per non-empty bin (its radius grows with the bin's row count),
    joined in order, over the diagonal a perfectly calibrated model would follow.
    """
    points = [b for b in bins if b.get("count") and b.get("mean_predicted") is not None]
    total = sum(int(b["count"]) for b in points) or 1
    width, height = _PLOT_LEFT + _PLOT + 30, _PLOT_TOP + _PLOT + 60
    bottom, right = _PLOT_TOP + _PLOT, _PLOT_LEFT + _PLOT

    def xy(predicted: float, observed: float) -> tuple[float, float]:
        return _PLOT_LEFT + predicted * _PLOT, bottom - observed * _PLOT

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<text x="{width // 2}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<text x="{width // 2}" y="38" text-anchor="middle" fill="#555">{escape(subtitle)}</text>',
        f'<rect x="{_PLOT_LEFT}" y="{_PLOT_TOP}" width="{_PLOT}" height="{_PLOT}" fill="none" stroke="#333"/>',
        f'<line x1="{_PLOT_LEFT}" y1="{bottom}" x2="{right}" y2="{_PLOT_TOP}" stroke="#999" stroke-dasharray="4 4"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        x, y = xy(tick, tick)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{tick:.1f}</text>')
        parts.append(f'<text x="{_PLOT_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.1f}</text>')
    parts.append(f'<text x="{_PLOT_LEFT + _PLOT // 2}" y="{bottom + 34}" text-anchor="middle">mean predicted</text>')
    mid = _PLOT_TOP + _PLOT // 2
    parts.append(f'<text x="18" y="{mid}" text-anchor="middle" transform="rotate(-90 18 {mid})">observed rate</text>')
    coords = [xy(float(b["mean_predicted"]), float(b["observed_rate"])) for b in points]
    if len(coords) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>')
    for b, (x, y) in zip(points, coords, strict=True):
        radius = 3 + 5 * (int(b["count"]) / total) ** 0.5
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="#1f5fa8"><title>'
            f"{float(b['lower']):.1f}-{float(b['upper']):.1f}: {int(b['count'])} rows, predicted "
            f"{float(b['mean_predicted']):.3f}, observed {float(b['observed_rate']):.3f}</title></circle>"
        )
    parts.append(f'<text x="{_PLOT_LEFT}" y="{height - 8}" fill="#555">{total} validation rows</text>')
    parts.append("</svg>")
    return ("\n".join(parts) + "\n").encode()


def _scalars(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    return {name: metrics[name] for name in _SCALAR_METRICS if name in metrics}


def model_card_data(
    *,
    vertical: str,
    model_version: str,
    ds: str,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    confusion_image: str | None,
) -> dict[str, Any]:
    """The default ``model_card.json``: identity, holdout metrics, confusion matrix, lineage.

    ``metrics`` is the evaluate stage's record (``challenger``, ``champion``,
    ``champion_version``, ``holdout_*``); unknown shapes are kept as given.
    """
    challenger = metrics.get("challenger") if isinstance(metrics.get("challenger"), dict) else None
    card: dict[str, Any] = {
        "schema_version": CARD_SCHEMA_VERSION,
        "vertical": vertical,
        "model_version": model_version,
        "logical_date": ds,
        "metrics": {
            "challenger": _scalars(challenger),
            "champion": _scalars(metrics.get("champion")),
            "champion_version": metrics.get("champion_version"),
        },
        "holdout": {k: metrics[f"holdout_{k}"] for k in ("rows", "start", "end") if f"holdout_{k}" in metrics},
        "lineage": lineage,
    }
    if challenger and challenger.get("confusion_matrix"):
        card["confusion_matrix"] = {
            "rows": "actual (negative, positive)",
            "columns": "predicted (negative, positive)",
            "matrix": challenger["confusion_matrix"],
            "image": confusion_image,
        }
    return card


def _class_labels(model_dir: Path) -> tuple[str, str]:
    """Axis labels for the confusion matrix: the positive class's name when model.json gives it."""
    try:
        label = json.loads((model_dir / "model.json").read_text()).get("label") or {}
        positive = str(label["positive"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ("negative", "positive")
    return (f"not {positive}", positive)


def _reliability(model_dir: Path) -> dict[str, Any] | None:
    """The validation reliability bins the train stage kept in model.json (None: no validation split)."""
    try:
        record = json.loads((model_dir / "model.json").read_text()).get("reliability")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("bins"), list):
        return None
    return record


def card_files(
    *,
    vertical: str,
    model_version: str,
    ds: str,
    model_dir: Path,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    model_card: str,
    model_card_json: dict[str, Any] | None,
) -> dict[str, bytes]:
    """metrics, lineage, the Markdown and JSON model cards, the confusion-matrix and reliability images.

    No timestamps are added: the same inputs give the same bytes, so a
    re-deploy verifies as identical.
    """
    challenger = metrics.get("challenger")
    matrix = challenger.get("confusion_matrix") if isinstance(challenger, dict) else None
    files: dict[str, bytes] = {METRICS_FILE: json_bytes(metrics), LINEAGE_FILE: json_bytes(lineage)}
    if matrix:
        files[CONFUSION_MATRIX_FILE] = confusion_matrix_svg(
            matrix,
            title="Confusion matrix on the holdout",
            subtitle=f"{vertical} {model_version}",
            labels=_class_labels(model_dir),
        )
        if CONFUSION_MATRIX_FILE not in model_card:
            model_card = model_card.rstrip("\n") + f"\n\n![Confusion matrix on the holdout]({CONFUSION_MATRIX_FILE})\n"
    reliability = _reliability(model_dir)
    if reliability is not None:
        method = reliability.get("calibration") or "none"
        files[RELIABILITY_FILE] = reliability_svg(
            reliability["bins"],
            title="Reliability on the validation split",
            subtitle=f"{vertical} {model_version}, calibration: {method}",
        )
        if RELIABILITY_FILE not in model_card:
            model_card = model_card.rstrip("\n") + f"\n\n![Reliability on the validation split]({RELIABILITY_FILE})\n"
    card = model_card_data(
        vertical=vertical,
        model_version=model_version,
        ds=ds,
        metrics=metrics,
        lineage=lineage,
        confusion_image=CONFUSION_MATRIX_FILE if matrix else None,
    )
    if reliability is not None:
        card["reliability"] = {**reliability, "image": RELIABILITY_FILE}
    files[MODEL_CARD_FILE] = model_card.encode()
    files[MODEL_CARD_JSON_FILE] = json_bytes({**card, **(model_card_json or {})})
    return files
