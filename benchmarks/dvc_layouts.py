"""A night's DVC snapshot of a window: one window file (the project's layout) vs a folder of per-day files.

    .venv/bin/python benchmarks/dvc_layouts.py                    # 1M rows over 365 days, 5 nights
    .venv/bin/python benchmarks/dvc_layouts.py --rows 100000 --reps 3

Each layout lives in a git-less DVC repository of its own (``Repo.init(no_scm=True)``),
and each night drops the oldest day and adds a new one (other bytes):

* one file: the whole window serialised to one Parquet file, then ``Repo.add`` of it
  (what `pipelines.data.versioning.snapshot_window` does before its push and commit),
  also timed without the serialising;
* a folder: only the new day's Parquet file written, the oldest one deleted, then
  ``Repo.add`` of the folder (DVC's state recognises the unchanged files by inode, size
  and mtime, and hashes only the new one);
* each again with ``Repo.push`` to a local remote folder after the add, as the snapshot
  stage pushes every night (the folder's push first collects all its entries into DVC's data index).

Each is compared with ``md5sum`` of the same bytes (the file; every file of the folder),
as the medians of interleaved repetitions.  It informs the choice of a version-id scheme
(docs/benchmarks.md, "Floors"); it is not a harness figure, because the project versions
one file.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import pandas as pd
from bench_gx import frame_of
from harness import timed

PARQUET = {"compression": "snappy", "index": False}


def _md5sum(paths: list[Path]) -> float:
    return timed(lambda: subprocess.run(["md5sum", *map(str, paths)], check=True, capture_output=True))


def _add(root: Path, target: Path, *, push: bool = False) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.add(str(target))
        if push:
            repo.push()


def _repo(parent: Path, name: str) -> Path:
    from dvc.config import Config
    from dvc.repo import Repo

    root = parent / name
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    with Config(dvc_dir=str(root / ".dvc")).edit("repo") as conf:
        conf["remote"]["storage"] = {"url": str(parent / f"{name}-remote")}
        conf["core"]["remote"] = "storage"
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--reps", type=int, default=5, help="nights (repetitions)")
    args = parser.parse_args(argv)
    logging.getLogger("dvc").setLevel(logging.WARNING)  # "Initialized DVC repository." is not a figure

    frame, _ = frame_of(args.rows, days=args.days)
    by_day: dict[str, pd.DataFrame] = {str(day): part for day, part in frame.groupby("event_date")}
    days = sorted(by_day)
    kinds = ("file", "file_push", "file_add", "file_md5", "folder", "folder_push", "folder_md5")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="dvc-layouts-") as tmp:
        # DVC's state (the hashes it knows by inode and mtime) in the temp dir, not /var/tmp/dvc.
        os.environ["DVC_SITE_CACHE_DIR"] = str(Path(tmp) / "site-cache")
        one = _repo(Path(tmp), "one-file")
        window = one / "window.parquet"
        many = _repo(Path(tmp), "folder")
        folder = many / "window"
        folder.mkdir()
        for day in days:
            by_day[day].to_parquet(folder / f"{day}.parquet", **PARQUET)
        current = pd.concat([by_day[d] for d in days], ignore_index=True)
        current.to_parquet(window, **PARQUET)
        _add(one, window, push=True)
        _add(many, folder, push=True)  # night 0: every file hashed and pushed once, as on the first run

        def one_file(frame: pd.DataFrame, push: bool) -> None:
            frame.to_parquet(window, **PARQUET)
            _add(one, window, push=push)

        def folder_night(day: str, part: pd.DataFrame, name: str, push: bool) -> None:
            (folder / f"{day}.parquet").unlink(missing_ok=True)
            part.to_parquet(folder / name, **PARQUET)
            _add(many, folder, push=push)

        for night in range(args.reps):
            oldest = days[night]
            new = by_day[oldest].assign(torque_nm=by_day[oldest]["torque_nm"] + 1000.0 + night)
            current = pd.concat([current.iloc[len(by_day[oldest]) :], new], ignore_index=True)

            name = f"new-{night:04d}.parquet"
            # Each pair: without the push, then a night with other bytes again and the push.
            samples["file"].append(timed(partial(one_file, current, False)))
            samples["file_md5"].append(_md5sum([window]))
            other = current.assign(torque_nm=current["torque_nm"] + 0.25)
            samples["file_push"].append(timed(partial(one_file, other, True)))
            current.assign(torque_nm=current["torque_nm"] + 0.5).to_parquet(window, **PARQUET)  # other bytes again
            samples["file_add"].append(timed(lambda: _add(one, window)))
            samples["folder"].append(timed(partial(folder_night, oldest, new, name, False)))
            samples["folder_md5"].append(_md5sum(sorted(folder.iterdir())))
            pushed = new.assign(torque_nm=new["torque_nm"] + 0.25)
            again = partial(folder_night, name.removesuffix(".parquet"), pushed, name, True)  # replaces tonight's file
            samples["folder_push"].append(timed(again))
        file_mb = window.stat().st_size / 1e6
        folder_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6

    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{args.rows:,} rows over {args.days} days, {args.reps} nights (medians)")
    print(f"{'layout':<64} {'measured':>9} {'md5sum':>9} {'ratio':>7}")
    rows = [
        (f"one file ({file_mb:.1f} MB): serialise + dvc add", med["file"], med["file_md5"]),
        ("one file: dvc add of the written file alone", med["file_add"], med["file_md5"]),
        ("one file: serialise + dvc add + dvc push", med["file_push"], med["file_md5"]),
        (f"folder of {args.days} day files ({folder_mb:.1f} MB): new day + dvc add", med["folder"], med["folder_md5"]),
        ("folder: new day + dvc add + dvc push", med["folder_push"], med["folder_md5"]),
        ("folder: new day + dvc add + dvc push, vs the one file's md5sum", med["folder_push"], med["file_md5"]),
    ]
    for name, measured, baseline in rows:
        print(f"{name:<64} {measured:>8.3f}s {baseline:>8.3f}s {measured / baseline:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
