"""Drift figures of the demo verticals: normal nights vs a shifted one (issue 13).

    .venv/bin/python benchmarks/drift_figures.py [--warehouse .state/warehouse.db]

For each vertical and each of 52 nights (every Sunday of 2026),
the champion's data is taken as the spec's training window ending the day
before, and tonight's compared slice as the newest ``quality.drift.recent_days``
of the window ending tonight, both straight from the demo warehouse (the rows
the pipeline would validate and snapshot), scored by `pipelines.data.drift`
with each spec's own settings.  The shifted night multiplies one feature by
1.5 over the compared days (manufacturing's vibration, as the simulator
would with a loose bearing; the first numeric feature elsewhere).
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pipelines.config import Settings, load_spec, vertical_names
from pipelines.data.drift import compare_to_champion

NIGHTS = [date(2026, 1, 4) + timedelta(weeks=n) for n in range(52)]
SHIFTED = {"manufacturing": "vibration_mm_s"}


def _window(frame: pd.DataFrame, column: str, end: date, days: int) -> pd.DataFrame:
    first = (end - timedelta(days=days - 1)).isoformat()
    return frame[(frame[column] >= first) & (frame[column] <= end.isoformat())]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", type=Path, default=Settings.from_env().home / "warehouse.db")
    args = parser.parse_args()
    engine = sa.create_engine(f"sqlite:///{args.warehouse}")
    print(
        f"{'vertical':14}{'52 normal nights: max PSI median / worst':>42}{'warned/blocked':>16}"
        f"{'warn/block':>12}   shifted night"
    )
    for vertical in vertical_names():
        spec = load_spec(vertical)
        event = spec.source.event_time
        frame = pd.read_sql(sa.text(f"select * from {spec.source.table}"), engine)
        frame[event] = pd.to_datetime(frame[event]).dt.strftime("%Y-%m-%d")
        worst: list[float] = []
        flagged = {"warn": 0, "block": 0}
        for night in NIGHTS:
            reference = _window(frame, event, night - timedelta(days=1), spec.window.train_days)
            tonight = _window(frame, event, night, spec.window.train_days)
            report = compare_to_champion(
                reference, tonight, spec, ds=night.isoformat(), champion_version="-", reference_data_version="-"
            )
            worst.append(report.max_psi if report.max_psi is not None else float("nan"))
            level = "block" if report.blocking else "warn" if report.warnings else None
            if level:
                flagged[level] += 1
        feature = SHIFTED.get(vertical, spec.features.numeric[0])
        night = NIGHTS[-1]
        reference = _window(frame, event, night - timedelta(days=1), spec.window.train_days)
        tonight = _window(frame, event, night, spec.window.train_days).copy()
        recent = tonight[event] >= (night - timedelta(days=(spec.quality.drift.recent_days or 365) - 1)).isoformat()
        tonight[feature] = pd.to_numeric(tonight[feature]).astype(float)
        tonight.loc[recent, feature] = tonight.loc[recent, feature] * 1.5
        shifted = compare_to_champion(
            reference, tonight, spec, ds=night.isoformat(), champion_version="-", reference_data_version="-"
        )
        psi = {f.feature: f.psi for f in shifted.features}
        series = pd.Series(worst)
        drift = spec.quality.drift
        print(
            f"{vertical:14}{series.median():>34.3f} / {series.max():.3f}{flagged['warn']:>10} / {flagged['block']:<5}"
            f"{drift.warn:>6}/{drift.block:<5}"
            f"   {feature} x1.5: PSI {psi.get(feature, float('nan')):.3f} -> "
            f"{'BLOCK' if shifted.blocking else 'warn' if shifted.warnings else 'ok'}"
        )


if __name__ == "__main__":
    main()
