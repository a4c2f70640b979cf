"""Reading a window of daily partitions back: `read_partitions` vs each day on its own.

The demo verticals' 365-day backfills (quick: 30 days) are extracted once into a
throw-away data root, one Parquet partition per day, as a first run stores them.
Measured: `data.sources.read_partitions`, what validate (a first run's pending
days) and snapshot (the training window) call: consecutive days of one Arrow
schema joined as Arrow tables and converted to pandas once.  Baseline:
``pd.concat([pd.read_parquet(day) for day in days])``, how both read them before.
Both must give the same frame; the figure is only reported if they do.  No
budget: a before/after of the optimisation (docs/benchmarks.md).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
from harness import Config, Figure, bench_days, median_pair, seeded_home, timed

VERTICALS = ("education", "finance", "healthcare", "manufacturing")
LAST_NIGHT = "2026-11-27"


def run(config: Config) -> list[Figure]:
    from pipelines.config import load_spec
    from pipelines.data.sources import extract_days, read_partitions
    from pipelines.layout import Layout

    settings = seeded_home(config, "window", VERTICALS)
    figures = []
    for vertical in VERTICALS:
        spec = load_spec(vertical, settings)
        days = bench_days(config, spec, LAST_NIGHT)
        extract_days(spec, days, settings)
        paths = [Layout(settings, vertical).raw(day) for day in days]

        def day_by_day(paths: list[Path] = paths) -> pd.DataFrame:
            frames = [frame for frame in (pd.read_parquet(path) for path in paths) if len(frame.columns)]
            return pd.concat(frames, ignore_index=True)

        together = read_partitions(paths)
        pd.testing.assert_frame_equal(together, day_by_day(), check_exact=True)
        # partial, not lambdas: each call times this vertical's paths, bound now.
        m, b, samples = median_pair(
            config.reps, partial(timed, partial(read_partitions, paths)), partial(timed, day_by_day)
        )
        figures.append(
            Figure(
                name=f"read {len(days)} daily partitions ({vertical}): read_partitions vs day by day",
                measured=m,
                baseline=b,
                detail=f"{len(together)} rows x {len(together.columns)} columns; the same frame",
                samples=samples,
            )
        )
    return figures
