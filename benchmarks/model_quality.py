"""Fixed vs tuned configuration, night by night: holdout metrics, baselines, thresholds, promotions, train time.

Runs every stage (the same functions as the DAGs) for each vertical over a run
of nightly dates, twice, in two fresh homes: once with the "fixed" specs (by
default the specs of git ref ``main``: one architecture, 0.5 threshold, no
validation split) and once with the working tree's ``verticals/`` (validation
split, thresholds chosen on validation, early stopping, warm start, sweeps
where enabled).  Writes a Markdown table::

    .venv/bin/python benchmarks/model_quality.py --dates 10 --out docs/model-quality.md
    .venv/bin/python benchmarks/model_quality.py --verticals healthcare --dates 10 --end 2026-11-29

CPU-heavy: about 30-60 s per vertical and night on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VERTICALS = ("finance", "healthcare", "education", "manufacturing")
STAGES = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")


def fixed_specs(ref: str, target: Path) -> Path:
    """The specs as of git ``ref`` (the untuned configuration), written to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for vertical in VERTICALS:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:verticals/{vertical}.yaml"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (target / f"{vertical}.yaml").write_text(text)
    return target


def run_nights(
    label: str, specs_dir: Path, home: Path, verticals: list[str], dates: list[str], *, rows_file: Path
) -> list[dict]:
    """Every stage for each vertical and date in a fresh home; one row per (vertical, date)."""
    os.environ["PIPELINES_HOME"] = str(home)
    os.environ["PIPELINES_SPECS_DIR"] = str(specs_dir)
    from pipelines import stages
    from pipelines.config import Settings, load_spec
    from pipelines.demo.seed import seed_warehouse
    from pipelines.layout import Layout

    settings = Settings.from_env()
    seed_warehouse(settings.warehouse_url, settings=settings)
    rows = []
    for vertical in verticals:
        layout = Layout(settings, load_spec(vertical, settings).name)
        for ds in dates:
            timings = {}
            for stage in STAGES:
                started = time.monotonic()
                getattr(stages, stage)(vertical, ds, settings=settings)
                timings[stage] = time.monotonic() - started
            rows.append(_row(label, vertical, ds, layout, timings))
            # One line per night as it finishes: a cut-short run still leaves its rows (see --render).
            with rows_file.open("a") as handle:
                handle.write(json.dumps(rows[-1]) + "\n")
    return rows


def _row(label: str, vertical: str, ds: str, layout: Any, timings: dict[str, float]) -> dict[str, Any]:
    train = layout.read_record(ds, "train", needed_by="benchmark")
    evaluation = layout.read_record(ds, "evaluate", needed_by="benchmark")
    gate = layout.read_record(ds, "gate", needed_by="benchmark")
    deploy = layout.read_record(ds, "deploy", needed_by="benchmark")
    challenger, logistic = evaluation["challenger"], evaluation["baselines"]["logistic"]
    tuning = train.get("tuning") or {}
    warm = (train.get("warm_start") or {}).get("from")
    return {
        "config": label,
        "vertical": vertical,
        "ds": ds,
        **{m: challenger[m] for m in ("accuracy", "recall", "f1", "auroc")},
        "threshold": challenger["threshold"],
        "logistic_auroc": logistic["auroc"],
        "logistic_f1": logistic["f1"],
        "logistic_threshold": logistic["threshold"],
        "approved": gate["approved"],
        "deployed": bool(deploy.get("deployed")),
        "blocking": [r["detail"] for r in gate.get("rules", []) if r.get("blocking") and not r.get("passed")],
        "train_seconds": round(timings["train"], 1),
        "night": "sweep" if tuning.get("swept") else ("warm" if warm else "cold"),
        "swept_params": tuning.get("best_params") if tuning.get("swept") else None,
    }


def render(rows: list[dict], note: str) -> str:
    """The Markdown report: a summary per vertical and config, then every night."""
    out = ["# Model quality: fixed vs tuned configuration", "", note, ""]
    out += [
        "## Summary per vertical",
        "",
        "| vertical | config | nights | promoted | approved | beats logistic AUROC | mean AUROC "
        "| mean recall | mean F1 | mean train s (sweep / other) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for vertical in sorted({r["vertical"] for r in rows}):
        for config in ("fixed", "tuned"):
            sel = [r for r in rows if r["vertical"] == vertical and r["config"] == config]
            if not sel:
                continue
            n = len(sel)
            sweep = [r["train_seconds"] for r in sel if r["night"] == "sweep"]
            other = [r["train_seconds"] for r in sel if r["night"] != "sweep"]
            out.append(
                f"| {vertical} | {config} | {n} | {sum(r['deployed'] for r in sel)} | "
                f"{sum(r['approved'] for r in sel)} | "
                f"{sum((r['auroc'] or 0) >= (r['logistic_auroc'] or 0) for r in sel)} | "
                f"{_mean(sel, 'auroc'):.3f} | {_mean(sel, 'recall'):.3f} | {_mean(sel, 'f1'):.3f} | "
                f"{_avg(sweep)} / {_avg(other)} |"
            )
    out += [
        "",
        "## Every night",
        "",
        "| vertical | date | config | night | acc | recall | F1 | AUROC | threshold | logistic AUROC "
        "| logistic F1 (thr) | decision | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["vertical"], r["ds"], r["config"])):
        decision = "promoted" if r["deployed"] else ("approved" if r["approved"] else "rejected")
        if r["blocking"]:
            decision += ": " + "; ".join(r["blocking"])[:120]
        out.append(
            f"| {r['vertical']} | {r['ds']} | {r['config']} | {r['night']} | {r['accuracy']:.3f} | "
            f"{r['recall']:.3f} | {r['f1']:.3f} | {r['auroc']:.3f} | {r['threshold']:.3f} | "
            f"{r['logistic_auroc']:.3f} | {r['logistic_f1']:.3f} ({r['logistic_threshold']:.3f}) | "
            f"{decision} | {r['train_seconds']} |"
        )
    picked = [r for r in rows if r["swept_params"]]
    if picked:
        out += ["", "## What the sweeps picked", ""]
        out += [f"- {r['vertical']} {r['ds']}: `{json.dumps(r['swept_params'], sort_keys=True)}`" for r in picked]
    return "\n".join(out) + "\n"


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else float("nan")


def _avg(values: list[float]) -> str:
    return f"{sum(values) / len(values):.1f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verticals", nargs="+", default=list(VERTICALS), choices=VERTICALS)
    parser.add_argument("--dates", type=int, default=10, help="consecutive nightly dates")
    parser.add_argument("--end", default=str(date.today() - timedelta(days=1)), help="last date (YYYY-MM-DD)")
    parser.add_argument(
        "--fixed-ref", default="main", help="git ref whose verticals/ is the fixed configuration (same schema)"
    )
    parser.add_argument("--config", choices=("fixed", "tuned"), help="run one configuration only (a child run)")
    parser.add_argument("--rows", type=Path, help="child runs append their JSON rows here")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: stdout)")
    parser.add_argument("--render", type=Path, help="only render the table from a rows file of earlier child runs")
    args = parser.parse_args(argv)
    end = date.fromisoformat(args.end)
    dates = [str(end - timedelta(days=d)) for d in range(args.dates - 1, -1, -1)]
    if args.config:
        # One configuration per process: the stages read settings and specs from the environment once.
        with tempfile.TemporaryDirectory(prefix=f"quality-{args.config}-") as tmp:
            specs = fixed_specs(args.fixed_ref, Path(tmp) / "specs") if args.config == "fixed" else ROOT / "verticals"
            run_nights(args.config, specs, Path(tmp) / "home", args.verticals, dates, rows_file=args.rows)
        return 0
    if args.render:
        rows = [json.loads(line) for line in args.render.read_text().splitlines()]
        note = f"Rendered from {args.render.name} (a reduced or partial run; see the note below the tables)."
        _write(render(rows, note), args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        for config in ("fixed", "tuned"):
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--config",
                    config,
                    "--rows",
                    str(rows_file),
                    "--end",
                    args.end,
                    "--dates",
                    str(args.dates),
                    "--fixed-ref",
                    args.fixed_ref,
                    "--verticals",
                    *args.verticals,
                ],
                check=True,
            )
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    note = (
        f"Produced by `benchmarks/model_quality.py --dates {args.dates} --end {args.end} "
        f"--verticals {' '.join(args.verticals)}`: every stage for each night, fresh homes, "
        f"fixed = the specs at git ref `{args.fixed_ref}`, tuned = this tree's `verticals/`."
    )
    _write(render(rows, note), args.out)
    return 0


def _write(text: str, out: Path | None) -> None:
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    raise SystemExit(main())
