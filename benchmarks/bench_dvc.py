"""DVC snapshot of a window vs ``md5sum`` of the same bytes (budget: <= 2x; unchanged: a no-op).

New window: `pipelines.data.versioning.snapshot_window` for a date not yet versioned
(each repetition a new date and a window differing in one row, in one data repo,
like consecutive nights).  Unchanged: the same call again for a versioned date
with the same frame; a no-op should cost less than hashing the bytes once
(budget 1x md5sum).  The baseline is `md5sum` of the window file the snapshot
wrote, read from the page cache like the snapshot's own bytes.

Both calls pass ``inputs`` as the snapshot stage does, and pay for computing it
inside the timing: `inputs_fingerprint` over an input file holding the window
(the stage fingerprints the window's validated partitions, about as many bytes),
with the stage's stat cache: an input file seen before is recognised by its stat.
"""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import date, timedelta
from unittest.mock import patch

import pandas as pd
from bench_gx import frame_of
from harness import Config, Figure, median_pair, settings_at, timed

VERTICAL = "manufacturing"


def run(config: Config) -> list[Figure]:
    from pipelines.data.versioning import STAT_CACHE, WINDOW_FILE, inputs_fingerprint, snapshot_window
    from pipelines.layout import Layout

    home = config.workdir / "dvc"
    settings = settings_at(home)
    rows = 20_000 if config.quick else 1_000_000
    frame, _ = frame_of(rows)
    window = Layout(settings, VERTICAL).dvc_repo / WINDOW_FILE
    night = iter(date(2026, 1, 1) + timedelta(days=i) for i in range(10_000))
    state = {"ds": ""}
    source = config.workdir / "dvc-input.parquet"  # stands for the validated partitions
    frame.to_parquet(source)

    def snapshot(ds: str) -> None:
        inputs = inputs_fingerprint(
            [source],
            config={"ds": ds, "torque_nm": float(frame.loc[0, "torque_nm"])},
            stat_cache=window.parent / STAT_CACHE,  # as the stage passes it
        )
        snapshot_window(frame, vertical=VERTICAL, ds=ds, settings=settings, inputs=inputs)

    def new_window() -> float:
        ds = str(next(night))
        frame.loc[0, "torque_nm"] = float(len(ds) + hash(ds) % 1000)  # another night: other bytes
        state["ds"] = ds
        return timed(lambda: snapshot(ds))

    def md5sum() -> float:
        return timed(lambda: subprocess.run(["md5sum", str(window)], check=True, capture_output=True))

    snapshot_window(frame, vertical=VERTICAL, ds="2025-12-31", settings=settings)  # the repo exists, as on night 2
    m, b, samples = median_pair(config.reps, new_window, md5sum)
    size = window.stat().st_size
    figures = [
        Figure(
            name=f"DVC snapshot of a new window vs md5sum, {rows:,} rows",
            measured=m,
            baseline=b,
            budget=2.0,
            detail=f"window file {size / 1e6:.1f} MB",
            samples=samples,
        )
    ]

    figures.append(dvc_add_alone(config, frame.copy()))  # a copy: the unchanged figure needs the frame as versioned

    def unchanged() -> float:
        ds = state["ds"]
        return timed(lambda: snapshot(ds))

    m, b, samples = median_pair(config.reps, unchanged, md5sum)
    figures.append(
        Figure(
            name=f"DVC snapshot of an unchanged window vs md5sum, {rows:,} rows",
            measured=m,
            baseline=b,
            budget=1.0,
            detail="a no-op must not re-serialise or re-hash the window (the inputs fingerprint is timed)",
            samples=samples,
        )
    )
    return figures


def dvc_add_alone(config: Config, frame: pd.DataFrame) -> Figure:
    """The floor of the new-window figure: DVC's own ``add`` of a window file already written.

    A git-less DVC repository of its own (``Repo.init(no_scm=True)``), each repetition a
    file with other bytes written before the clock starts: what is timed is opening the
    repo and ``Repo.add`` (DVC hashes the file, links it into its cache, writes the
    ``.dvc`` file), with no serialising, no push and no git commit.  No snapshot that
    versions the window as one file through DVC can cost less; a folder of per-day files,
    where a night adds one file, is another layout with a floor of its own, DVC's push of
    the folder (`benchmarks/dvc_layouts.py`).
    """
    from dvc.repo import Repo

    root = config.workdir / "dvc-add-alone"
    root.mkdir()
    path = root / "window.parquet"
    state = {"n": 0}

    def add() -> float:
        state["n"] += 1
        frame.loc[0, "torque_nm"] = float(10_000 + state["n"])  # new bytes, as a new night
        frame.to_parquet(path, index=False)

        def add_it() -> None:
            with Repo(str(root)) as repo:
                repo.add(str(path))

        return timed(add_it)

    def md5sum() -> float:
        return timed(lambda: subprocess.run(["md5sum", str(path)], check=True, capture_output=True))

    # DVC's state (the hashes it knows by inode and mtime) in the work dir, not /var/tmp/dvc.
    with patch.dict(os.environ, {"DVC_SITE_CACHE_DIR": str(root / ".site-cache")}):
        dvc_log = logging.getLogger("dvc")  # DVC logs "Initialized DVC repository." at INFO to stdout
        level = dvc_log.level
        dvc_log.setLevel(logging.WARNING)
        try:
            Repo.init(str(root), no_scm=True).close()
        finally:
            dvc_log.setLevel(level)
        m, b, samples = median_pair(config.reps, add, md5sum)
    return Figure(
        name="  floor: DVC's own add of a written window vs md5sum",
        measured=m,
        baseline=b,
        detail=f"Repo.add of a {path.stat().st_size / 1e6:.1f} MB file in a git-less repo: no serialising, "
        "push or commit" + ("; the 2x budget is below it" if m / b > 2.0 else ""),
        samples=samples,
    )
