"""Run summaries: decision, metrics vs thresholds vs champion, data version."""

from __future__ import annotations

import shutil
from typing import Any

from pipelines.config import GATE_METRICS, VerticalSpec
from pipelines.layout import Layout, write_bytes_atomic, write_json_atomic


def build_summary(spec: VerticalSpec, ds: str, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One record per run, from the stage records (what the table and email show)."""
    evaluation, decision, deployed = records["evaluate"], records["gate"], records["deploy"]
    challenger, champion = evaluation["challenger"], evaluation["champion"] or {}
    thresholds: dict[str, float] = {str(k): v for k, v in spec.gate.thresholds.items()}
    metrics = {
        metric: {
            "challenger": challenger.get(metric),
            "threshold": thresholds.get(metric),
            "champion": champion.get(metric),
        }
        for metric in GATE_METRICS
    }
    return {
        "vertical": spec.name,
        "ds": ds,
        "data_version": records["snapshot"]["id"],
        "data_tag": records["snapshot"]["tag"],
        "model_version": decision["model_version"],
        "champion_version": evaluation["champion_version"],
        "approved": decision["approved"],
        "forced": decision.get("forced", False),
        "deployed": deployed["deployed"],
        "deploy_note": deployed["why"],
        "reasons": decision["reasons"],
        "metrics": metrics,
        "confusion_matrix": challenger.get("confusion_matrix"),
        "holdout_rows": evaluation["holdout_rows"],
        "train_rows": records["train"]["train_rows"],
        "suite": records["validate"].get("summary"),
        "data_docs": records["validate"].get("data_docs"),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_summary(summary: dict[str, Any]) -> str:
    """Plain-text summary for logs and email."""
    outcome = "PROMOTED" if summary["deployed"] else ("APPROVED" if summary["approved"] else "REJECTED")
    lines = [
        f"{summary['vertical']} {summary['ds']}: {outcome}",
        f"data version {summary['data_version']} ({summary['data_tag']}), "
        f"model {summary['model_version']}, champion {summary['champion_version'] or 'none'}",
        f"train rows {summary['train_rows']}, holdout rows {summary['holdout_rows']}",
        "",
        f"{'metric':<10}{'challenger':>12}{'threshold':>12}{'champion':>12}",
    ]
    for metric, row in summary["metrics"].items():
        lines.append(
            f"{metric:<10}{_fmt(row['challenger']):>12}{_fmt(row['threshold']):>12}{_fmt(row['champion']):>12}"
        )
    lines += ["", "Decision:", *[f"  - {r}" for r in summary["reasons"]], f"Deploy: {summary['deploy_note']}"]
    if summary.get("data_docs"):
        lines.append(f"Data docs: {summary['data_docs']}")
    return "\n".join(lines) + "\n"


def write_latest(layout: Layout, ds: str, summary: dict[str, Any], text: str) -> None:
    """Store the summary with the run and mirror it to ``latest/`` for ``dvc metrics``."""
    run_dir = layout.report_dir(ds)
    write_json_atomic(run_dir / "summary.json", summary)
    write_bytes_atomic(run_dir / "summary.txt", text.encode())
    flat = {m: v["challenger"] for m, v in summary["metrics"].items() if v["challenger"] is not None}
    write_json_atomic(run_dir / "metrics.json", flat)
    latest = layout.latest_report_dir
    latest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.txt", "metrics.json", "roc.json"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, latest / name)
