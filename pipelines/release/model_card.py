"""A Markdown model card shipped inside every deployed version."""

from __future__ import annotations

from typing import Any

from pipelines.config import VerticalSpec


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_model_card(
    spec: VerticalSpec, ds: str, trained: dict[str, Any], evaluation: dict[str, Any], decision: dict[str, Any]
) -> str:
    """What the model predicts, from which data, how well, and why it was approved."""
    challenger, champion = evaluation["challenger"], evaluation["champion"] or {}
    rows = [
        f"| {m} | {_fmt(challenger.get(m))} | {_fmt(spec.gate.thresholds.get(m))} | {_fmt(champion.get(m))} |"
        for m in ("accuracy", "recall", "f1", "precision", "auroc")
    ]
    cm = challenger.get("confusion_matrix") or [[0, 0], [0, 0]]
    return "\n".join(
        [
            f"# Model card: {spec.name} {trained['model_version']}",
            "",
            f"{spec.description.strip()}",
            "",
            f"- Owner: {spec.owner}",
            f"- Label: `{spec.label.column}` (positive class `{spec.label.positive}`)",
            f"- Features: {', '.join(spec.features.all)}",
            f"- Trained for logical date {ds} on data version `{trained['data_version']}` "
            f"({trained['train_rows']} train rows; holdout {evaluation['holdout_rows']} rows, "
            f"{evaluation['holdout_start']} .. {evaluation['holdout_end']})",
            f"- Code version `{trained['code_version']}`, config `{trained['config_hash']}`, seed {trained['seed']}",
            "",
            "## Holdout metrics",
            "",
            "| metric | this model | threshold | previous champion |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Confusion matrix (rows: actual negative/positive): TN {cm[0][0]}, FP {cm[0][1]}, "
            f"FN {cm[1][0]}, TP {cm[1][1]}",
            "",
            "## Promotion decision",
            "",
            *[f"- {reason}" for reason in decision["reasons"]],
            "",
        ]
    )
