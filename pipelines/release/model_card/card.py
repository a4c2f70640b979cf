"""The model card of a deployed version: Markdown for people, JSON for tools, and its figures.

`build_model_card` (the deploy stage) writes what the model is for and where
it falls short (the spec's ``card`` section), how it scored on the holdout
against the gate's floors, the previous champion and the naive baselines, the
ROC / precision-recall / calibration curves, the scores per value of one
categorical feature, and why it was approved.  `card_files` (called by
`pipelines.release.deploy.deploy_version` for every deploy, whoever calls it) adds the
metrics and lineage files, the confusion-matrix and validation-reliability
figures and ``model_card.json``.  Everything is a pure function of its
inputs, with no timestamps, so a re-deploy of a version writes the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.release.bucket import (
    CONFUSION_MATRIX_FILE,
    HOLDOUT_CURVES_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_CARD_JSON_FILE,
    RELIABILITY_FILE,
    SLICES_FILE,
    json_bytes,
)
from pipelines.release.model_card import plots

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import VerticalSpec

CARD_SCHEMA_VERSION = 2
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
#: The metrics of the card's tables, in this order.
TABLE_METRICS = ("accuracy", "recall", "f1", "precision", "auroc", "balanced_accuracy")
#: What the per-slice figure shows for each value of the slice column.
SLICE_METRICS = ("recall", "precision", "f1")
#: A slice value needs this many holdout rows and positives before its metrics are shown.
SLICE_MIN_ROWS, SLICE_MIN_POSITIVES = 20, 3


@dataclass(frozen=True)
class ModelCard:
    """The card the deploy stage ships: Markdown, figures (file name -> SVG bytes), JSON additions."""

    markdown: str
    images: dict[str, bytes] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def build_model_card(
    spec: VerticalSpec,
    ds: str,
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    decision: dict[str, Any],
    *,
    scores: pd.DataFrame | None = None,
) -> ModelCard:
    """What the model predicts, for what, from which data, how well (also per slice), and why it was approved.

    ``scores`` is the evaluate stage's holdout scores frame
    (`pipelines.gate.evaluation.holdout_scores_frame`); without it the card has
    its tables but no curves or slices.
    """
    challenger, champion = evaluation["challenger"], evaluation.get("champion") or {}
    baselines: dict[str, dict[str, Any]] = evaluation.get("baselines") or {}
    header = ["metric", "this model", "threshold", "previous champion", *(f"{b} baseline" for b in baselines)]
    rows = [
        "| "
        + " | ".join(
            [
                m,
                _fmt(challenger.get(m)),
                _fmt(spec.gate.thresholds.get(m)),  # type: ignore[call-overload]
                _fmt(champion.get(m)),
                *(_fmt(b.get(m)) for b in baselines.values()),
            ]
        )
        + " |"
        for m in TABLE_METRICS
    ]
    cm = challenger.get("confusion_matrix") or [[0, 0], [0, 0]]
    intended, limitations = intended_use(spec), card_limitations(spec, ds, evaluation)
    images: dict[str, bytes] = {}
    figures: list[str] = [f"![Confusion matrix on the holdout]({CONFUSION_MATRIX_FILE})", ""]
    slice_section: list[str] = []
    data: dict[str, Any] = {"intended_use": intended, "limitations": limitations, "baselines": baselines or None}
    if scores is not None:
        images[HOLDOUT_CURVES_FILE] = _holdout_curves(spec, evaluation, scores)
        figures += [f"![ROC, precision-recall and calibration on the holdout]({HOLDOUT_CURVES_FILE})", ""]
    if trained.get("model_dir") and _reliability(Path(trained["model_dir"])) is not None:
        # Drawn by `card_files` from model.json; shown here, after the holdout's calibration.
        figures += [f"![Reliability on the validation split]({RELIABILITY_FILE})", ""]
    if scores is not None:
        column = spec.card_slice_column
        if column is not None and f"slice:{column}" in scores.columns:
            slices = slice_bars(scores, column, float(challenger["threshold"]))
            images[SLICES_FILE] = plots.slices_svg(
                column, slices, metrics=SLICE_METRICS, title=f"{spec.name} {trained['model_version']}"
            )
            slice_section = _slice_table(column, slices)
            data["slices"] = {"column": column, "values": [vars(s) for s in slices], "image": SLICES_FILE}
    data["images"] = sorted([CONFUSION_MATRIX_FILE, *images])
    markdown = "\n".join(
        [
            f"# Model card: {spec.name} {trained['model_version']}",
            "",
            spec.description.strip(),
            "",
            f"- Owner: {spec.owner}",
            f"- Label: `{spec.label.column}` (positive class `{spec.label.positive}`)",
            f"- Features: {', '.join(spec.features.all)}",
            f"- Trained for logical date {ds} on data version `{trained['data_version']}` "
            f"({trained['train_rows']} train rows; holdout {evaluation['holdout_rows']} rows, "
            f"{evaluation['holdout_start']} .. {evaluation['holdout_end']})",
            f"- Code version `{trained['code_version']}`, config `{trained['config_hash']}`, seed {trained['seed']}",
            "",
            "## Intended use",
            "",
            intended,
            "",
            "## Limitations",
            "",
            *[f"- {item}" for item in limitations],
            "",
            "## Holdout metrics",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *rows,
            "",
            f"Confusion matrix (rows: actual negative/positive): TN {cm[0][0]}, FP {cm[0][1]}, "
            f"FN {cm[1][0]}, TP {cm[1][1]}; decision threshold {_fmt(challenger.get('threshold'))}",
            "",
            *figures,
            *slice_section,
            "## Promotion decision",
            "",
            *[f"- {reason}" for reason in decision["reasons"]],
            "",
        ]
    )
    return ModelCard(markdown=markdown, images=images, data=data)


def intended_use(spec: VerticalSpec) -> str:
    """The spec's ``card.intended_use``, or one said from the description and the label."""
    if spec.card.intended_use:
        return spec.card.intended_use.strip()
    return (
        f"Scores {spec.name} records like those of its source for the probability that "
        f"`{spec.label.column}` is `{spec.label.positive}`, to support the decision the description "
        f"names; owned by {spec.owner}. Not validated for other populations, sources or purposes."
    )


def card_limitations(spec: VerticalSpec, ds: str, evaluation: dict[str, Any]) -> list[str]:
    """The spec's ``card.limitations``, then what the run itself says about the evidence."""
    facts = [
        f"Trained on the {spec.window.train_days} days before the holdout and judged on "
        f"{evaluation['holdout_rows']} holdout rows ({evaluation['holdout_start']} .. {evaluation['holdout_end']}); "
        "later data may differ, which is why the gate re-judges every night.",
        "Metrics are point estimates on one holdout; small slices (see below) are noisier than the totals.",
    ]
    if not spec.pii:
        facts.append("No column is declared as PII; the features may still correlate with protected attributes.")
    return [item.strip() for item in spec.card.limitations] + facts


def slice_bars(scores: pd.DataFrame, column: str, threshold: float) -> list[plots.SliceBar]:
    """The challenger's metrics per value of ``column`` in the holdout scores (small values: no metrics)."""
    from pipelines.gate.evaluation import CHALLENGER, LABEL, SLICE_PREFIX, slice_metrics

    results = slice_metrics(
        scores[LABEL].to_numpy(),
        scores[CHALLENGER].to_numpy(),
        scores[f"{SLICE_PREFIX}{column}"].to_numpy(dtype=object),
        column=column,
        threshold=threshold,
        min_rows=SLICE_MIN_ROWS,
        min_positives=SLICE_MIN_POSITIVES,
    )
    return [
        plots.SliceBar(
            s.value,
            s.rows,
            s.positives,
            None if s.metrics is None else {m: round(float(s.metrics[m]), 6) for m in (*SLICE_METRICS, "accuracy")},
        )
        for s in results
    ]


def _slice_table(column: str, slices: list[plots.SliceBar]) -> list[str]:
    rows = [
        f"| {s.value} | {s.rows} | {s.positives} | "
        + " | ".join(_fmt(s.metrics.get(m)) if s.metrics else "-" for m in ("accuracy", *SLICE_METRICS))
        + " |"
        for s in slices
    ]
    return [
        f"## By {column}",
        "",
        f"| {column} | rows | positives | accuracy | recall | precision | f1 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Values with fewer than {SLICE_MIN_ROWS} rows or {SLICE_MIN_POSITIVES} positives are not scored.",
        "",
        f"![The challenger by {column}]({SLICES_FILE})",
        "",
    ]


def _holdout_curves(spec: VerticalSpec, evaluation: dict[str, Any], scores: pd.DataFrame) -> bytes:
    from pipelines.gate.evaluation import BASELINE_PREFIX, CHALLENGER, CHAMPION, LABEL

    models = [plots.Scored("challenger", scores[CHALLENGER].to_numpy())]
    thresholds = {"challenger": float(evaluation["challenger"]["threshold"])}
    if CHAMPION in scores.columns and evaluation.get("champion"):
        models.append(plots.Scored("champion", scores[CHAMPION].to_numpy()))
        thresholds["champion"] = float(evaluation["champion"]["threshold"])
    for name, record in (evaluation.get("baselines") or {}).items():
        if f"{BASELINE_PREFIX}{name}" in scores.columns:
            models.append(plots.Scored(name, scores[f"{BASELINE_PREFIX}{name}"].to_numpy()))
            if record.get("threshold") is not None:
                thresholds[name] = float(record["threshold"])
    return plots.holdout_curves_svg(
        scores[LABEL].to_numpy(), models, thresholds=thresholds, title=f"{spec.name} {evaluation['model_version']}"
    )


# -- the version folder's descriptive files ------------------------------------------------------


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


def _model_json(model_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _class_labels(model_dir: Path) -> tuple[str, str]:
    """Axis labels for the confusion matrix: the positive class's name when model.json gives it."""
    label = _model_json(model_dir).get("label")
    if not isinstance(label, dict) or "positive" not in label:
        return ("negative", "positive")
    positive = str(label["positive"])
    return (f"not {positive}", positive)


def _reliability(model_dir: Path) -> dict[str, Any] | None:
    """The validation reliability bins the train stage kept in model.json (None: no validation split)."""
    record = _model_json(model_dir).get("reliability")
    if not isinstance(record, dict) or not isinstance(record.get("bins"), list):
        return None
    return record


def _with_image(markdown: str, name: str, alt: str) -> str:
    """``markdown`` showing image ``name`` (appended unless the card already shows it)."""
    if name in markdown:
        return markdown
    return markdown.rstrip("\n") + f"\n\n![{alt}]({name})\n"


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
    card_images: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """metrics, lineage, the Markdown and JSON model cards, the card's figures.

    Always the confusion matrix (when the metrics hold one) and the validation
    reliability diagram (when ``model.json`` holds its bins); ``card_images``
    adds the figures `build_model_card` drew.  No timestamps are added: the
    same inputs give the same bytes, so a re-deploy verifies as identical.
    """
    challenger = metrics.get("challenger")
    matrix = challenger.get("confusion_matrix") if isinstance(challenger, dict) else None
    files: dict[str, bytes] = {METRICS_FILE: json_bytes(metrics), LINEAGE_FILE: json_bytes(lineage)}
    if matrix:
        files[CONFUSION_MATRIX_FILE] = plots.confusion_matrix_svg(
            matrix,
            title="Confusion matrix on the holdout",
            subtitle=f"{vertical} {model_version}",
            labels=_class_labels(model_dir),
        )
        model_card = _with_image(model_card, CONFUSION_MATRIX_FILE, "Confusion matrix on the holdout")
    elif CONFUSION_MATRIX_FILE in model_card:
        model_card = model_card.replace(f"![Confusion matrix on the holdout]({CONFUSION_MATRIX_FILE})", "")
    reliability = _reliability(model_dir)
    if reliability is not None:
        method = reliability.get("calibration") or "none"
        files[RELIABILITY_FILE] = plots.reliability_svg(
            reliability["bins"],
            title="Reliability on the validation split",
            subtitle=f"{vertical} {model_version}, calibration: {method}",
        )
        model_card = _with_image(model_card, RELIABILITY_FILE, "Reliability on the validation split")
    files.update(card_images or {})
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


__all__ = ["ModelCard", "build_model_card", "card_files", "model_card_data"]
