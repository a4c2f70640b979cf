"""A night's extract + validate with 365 nights of stored history vs 30 (budget: <= 1.2x).

Two data roots of the finance demo: one has run extract + validate for 30
nights, the other for 365 (quick: 3 vs 10).  The next nights are then timed in
both, interleaved; the training window is the spec's either way, so only the
stored history (partitions, GX results, data docs) differs.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta

from harness import Config, Figure, median_pair, settings_at, timed

VERTICAL = "finance"
LAST_NIGHT = date(2026, 11, 27)


def run(config: Config) -> list[Figure]:
    from pipelines import stages
    from pipelines.demo.seed import seed_warehouse

    short, long = (3, 10) if config.quick else (30, 365)
    warehouse = config.workdir / "history-warehouse.db"
    seed_warehouse(f"sqlite:///{warehouse}", verticals=[VERTICAL])
    timed_nights = [LAST_NIGHT - timedelta(days=config.reps - 1 - i) for i in range(config.reps)]
    first_timed = timed_nights[0]
    homes = {}
    for nights in (short, long):
        home = config.workdir / f"history-{nights}"
        home.mkdir()
        shutil.copyfile(warehouse, home / "warehouse.db")
        settings = settings_at(home)
        for i in range(nights, 0, -1):  # the stored nights, oldest first, ending the night before
            ds = str(first_timed - timedelta(days=i))
            stages.extract(VERTICAL, ds, settings=settings)
            stages.validate(VERTICAL, ds, settings=settings)
        homes[nights] = settings
    queue = {n: iter(timed_nights) for n in homes}

    def night(nights: int) -> float:
        ds = str(next(queue[nights]))
        settings = homes[nights]
        return timed(
            lambda: (stages.extract(VERTICAL, ds, settings=settings), stages.validate(VERTICAL, ds, settings=settings))
        )

    m, b, samples = median_pair(config.reps, lambda: night(long), lambda: night(short))
    return [
        Figure(
            name=f"a night's extract+validate, {long} vs {short} stored nights ({VERTICAL})",
            measured=m,
            baseline=b,
            budget=1.2,
            samples=samples,
        )
    ]
