"""``python -m pipelines.experiment``: the stages as ``dvc repro`` / ``dvc exp run`` call them.

The same stage functions the DAGs and the CLI run, always with the experiment
profile (`pipelines.config.experiment_settings`): their own data root
(``.state/experiments/`` by default), registry, bucket, DVC remote and outbox;
the production warehouse opened read-only; no email sent; deploy only as a dry
run.  So an experiment never changes what production runs, records or mails.

Each step writes small, deterministic JSON files at stable paths (``--out``,
``results/<vertical>/`` in ``dvc.yaml``) that DVC tracks as outputs, metrics
and plots, so ``dvc metrics diff`` and ``dvc exp show`` compare them across
commits and experiments::

    python -m pipelines.experiment ingest finance --date 2026-11-27 --out results/finance
    python -m pipelines.experiment train  finance --date 2026-11-27 --out results/finance
    python -m pipelines.experiment decide finance --date 2026-11-27 --out results/finance
    python -m pipelines.experiment seed-if-missing   # the demo warehouse, only where there is none
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import PipelineError
from pipelines.layout import Layout, write_json_atomic

log = logging.getLogger("pipelines.experiment")

#: Headline metrics of the challenger written to ``metrics.json`` (what ``dvc exp show`` lists).
HEADLINE = ("accuracy", "recall", "f1", "precision", "auroc", "balanced_accuracy")


def ingest(vertical: str, ds: str, settings: Settings, out: Path) -> dict[str, Any]:
    """extract → validate → snapshot; writes ``data.json`` (the data version)."""
    from pipelines import stages

    stages.extract(vertical, ds, settings=settings)
    stages.validate(vertical, ds, settings=settings)
    snap = stages.snapshot(vertical, ds, settings=settings)
    # Only what identifies the data: a rerun of the same data writes the same bytes,
    # so DVC does not retrain downstream for nothing.
    data = {
        "vertical": vertical,
        "ds": ds,
        "data_version": snap["id"],
        "data_tag": snap["tag"],
        "rows": snap["rows"],
        "missing_days": snap["missing_days"],
    }
    write_json_atomic(out / "data.json", data)
    return data


def train(vertical: str, ds: str, settings: Settings, out: Path) -> dict[str, Any]:
    """train → evaluate; writes ``model.json``, ``metrics.json`` and the ROC points ``roc.json``."""
    from pipelines import stages

    trained = stages.train(vertical, ds, settings=settings)
    evaluation = stages.evaluate(vertical, ds, settings=settings)
    model = {
        "vertical": vertical,
        "ds": ds,
        "model_version": trained["model_version"],
        "data_version": trained["data_version"],
        "train_rows": trained["train_rows"],
        "holdout_rows": trained["holdout_rows"],
    }
    challenger = evaluation["challenger"]
    metrics = {name: challenger[name] for name in HEADLINE if challenger.get(name) is not None}
    metrics["holdout_rows"] = evaluation["holdout_rows"]
    write_json_atomic(out / "model.json", model)
    write_json_atomic(out / "metrics.json", metrics)
    roc = Layout(settings, vertical).report_dir(ds) / "roc.json"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(roc, out / "roc.json")
    return {**model, "metrics": metrics}


def decide(vertical: str, ds: str, settings: Settings, out: Path) -> dict[str, Any]:
    """gate → deploy (dry run: never deploys) → report; writes ``decision.json`` and ``gate.json``."""
    from pipelines import stages

    decision = stages.gate(vertical, ds, settings=settings)
    deployed = stages.deploy(vertical, ds, settings=settings, dry_run=True)
    summary = stages.report(vertical, ds, settings=settings)
    record = {
        "vertical": vertical,
        "ds": ds,
        "model_version": decision["model_version"],
        "approved": decision["approved"],
        "forced": decision["forced"],
        "reasons": decision["reasons"],
        "deploy": deployed["why"],
        "report_email": "written to the experiment outbox" if summary.get("emailed") else "none",
    }
    write_json_atomic(out / "decision.json", record)
    # What `dvc metrics` / `dvc exp show` list beside the model's metrics: flags only, no text.
    write_json_atomic(out / "gate.json", {"approved": decision["approved"], "forced": decision["forced"]})
    return record


STEPS: dict[str, Callable[[str, str, Settings, Path], dict[str, Any]]] = {
    "ingest": ingest,
    "train": train,
    "decide": decide,
}


def seed_if_missing(settings: Settings) -> str:
    """Seed the embedded demo warehouse only when there is none; never over an existing one.

    A warehouse behind ``AIRFLOW_CONN_WAREHOUSE_DEFAULT`` is never seeded here:
    it is someone's data, and experiments only read it.
    """
    if os.environ.get("AIRFLOW_CONN_WAREHOUSE_DEFAULT"):
        return "warehouse_default is a configured connection: experiments read it, nothing seeded"
    path = settings.warehouse_file or settings.home / "warehouse.db"
    if path.exists():
        return f"warehouse {path} exists: experiments read it read-only, nothing seeded"
    from pipelines.demo.seed import seed_warehouse

    counts = seed_warehouse(f"sqlite:///{path}", settings=settings)
    return f"no warehouse at {path}: seeded the demo one ({', '.join(f'{t} {n} rows' for t, n in counts.items())})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiment", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    for name, step in STEPS.items():
        cmd = sub.add_parser(name, help=(step.__doc__ or "").splitlines()[0])
        cmd.add_argument("vertical")
        cmd.add_argument("--date", required=True, help="logical date YYYY-MM-DD (params.yaml's date)")
        cmd.add_argument("--out", type=Path, required=True, help="folder of the DVC outputs, e.g. results/finance")
    sub.add_parser("seed-if-missing", help="seed the embedded demo warehouse only when there is none")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one step in the experiment profile; exit codes as ``python -m pipelines``."""
    from pipelines.memory import tune_collector

    tune_collector()  # as the CLI does, before the step imports the stack
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("great_expectations", "lightning", "pytorch_lightning", "dvc", "urllib3", "fsspec", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        # Always the experiment profile, whatever PIPELINES_PROFILE says: DVC never touches production.
        settings = Settings.from_env(profile="experiment")
        if args.step == "seed-if-missing":
            print(seed_if_missing(settings))
            return 0
        log.info("experiment profile: data root %s, registry %s", settings.home, settings.registry_url)
        result = STEPS[args.step](args.vertical, args.date, settings, args.out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
