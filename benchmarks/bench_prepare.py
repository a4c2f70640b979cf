"""A backfill's preparation (cleaning, joins, label rule) by groups of days vs one day at a time.

The demo verticals with joins and a label rule, over a whole training window of
days already read from the warehouse (in memory, so only preparation is timed).
Measured: what `extract_days` does now, `prepare_frames` over groups of up to
`CHUNK_ROWS` rows (each join's lookup and the label rule run once per group).
Baseline: `prepare_frame` day by day, as every backfilled day was prepared before
(and as a nightly run still prepares its one day).  Both must give the same frames
and counts, day by day; the figure is only reported if they do.  No budget: a
before/after of the optimisation (docs/benchmarks.md).
"""

from __future__ import annotations

import pandas as pd
from harness import Config, Figure, bench_days, median_pair, seeded_home, timed

VERTICALS = ("education", "healthcare")
LAST_NIGHT = "2026-11-27"


def run(config: Config) -> list[Figure]:
    from pipelines.config import load_spec
    from pipelines.data.integration import fetch_tables, index_tables
    from pipelines.data.preparation import prepare_frame, prepare_frames
    from pipelines.data.sources import CHUNK_ROWS, _groups_of_rows, _next, stream_sql_days

    settings = seeded_home(config, "prepare", VERTICALS)
    figures = []
    for vertical in VERTICALS:
        spec = load_spec(vertical, settings)
        days = bench_days(config, spec, LAST_NIGHT)
        frames = [frame for _, frame in stream_sql_days(spec, spec.source, days, settings)]
        tables = index_tables(spec, fetch_tables(spec, before=_next(days[-1]), settings=settings))

        def grouped() -> list:
            groups = _groups_of_rows([(str(i), f) for i, f in enumerate(frames)], CHUNK_ROWS)
            return [day for group in groups for day in prepare_frames([f for _, f in group], spec, tables)]

        def one_by_one() -> list:
            return [prepare_frame(frame, spec, tables) for frame in frames]

        for (fast, fast_counts), (slow, slow_counts) in zip(grouped(), one_by_one(), strict=True):
            pd.testing.assert_frame_equal(fast, slow, check_exact=True)
            if fast_counts != slow_counts:
                raise AssertionError(f"{vertical}: grouped preparation counted {fast_counts}, day by day {slow_counts}")
        m, b, samples = median_pair(config.reps, lambda: timed(grouped), lambda: timed(one_by_one))
        rows = sum(len(f) for f in frames)
        figures.append(
            Figure(
                name=f"prepare {len(days)} days ({vertical}): in groups vs day by day",
                measured=m,
                baseline=b,
                detail=f"{rows} rows; {len(spec.joins)} join(s), {len(spec.cleaning.columns)} cleaning rule(s), "
                f"label rule: {'yes' if spec.label.expression else 'no'}; same frames and counts day by day",
                samples=samples,
            )
        )
    return figures
