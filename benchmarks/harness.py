"""One command for every budget of docs (ARCHITECTURE "Budgets"): `make bench`.

Each figure is a ratio of the project's way against a baseline doing the same work,
both measured in this run, as the median of ``--reps`` interleaved repetitions
(A, B, A, B, ...: a load spike hits both sides alike).  The table goes to stdout,
everything (raw timings, machine, versions) to a JSON file.

    .venv/bin/python benchmarks/harness.py              # full sizes (minutes)
    .venv/bin/python benchmarks/harness.py --quick      # tiny sizes: a smoke run (tests/unit/test_bench.py)
    .venv/bin/python benchmarks/harness.py --only gx dvc --json out.json

A figure whose budget fails is reported, never raised: the harness measures, the
issue tracker decides.  Figures here are for 2 cores (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

PACKAGES = (
    "apache-airflow",
    "great-expectations",
    "dvc",
    "pytorch-lightning",
    "torch",
    "pandas",
    "sqlalchemy",
    "pyarrow",
)


@dataclass
class Figure:
    """One row of the table: ``measured`` / ``baseline`` (seconds unless ``unit`` says otherwise)."""

    name: str
    measured: float
    baseline: float
    budget: float | None = None  # on the ratio; None: reported only
    unit: str = "s"
    detail: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("inf")

    @property
    def verdict(self) -> str:
        if self.budget is None:
            return "-"
        return "ok" if self.ratio <= self.budget else "OVER"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "verdict": self.verdict}


@dataclass(frozen=True)
class Config:
    quick: bool
    reps: int
    workdir: Path


def median_pair(reps: int, measured: Callable[[], float], baseline: Callable[[], float]) -> tuple[float, float, dict]:
    """Interleaved repetitions; medians of both sides and every sample."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(reps):
        a.append(measured())
        b.append(baseline())
    return statistics.median(a), statistics.median(b), {"measured": a, "baseline": b}


def settings_at(home: Path) -> Any:
    """The project's Settings for a throw-away data root ``home`` (repo specs and suites)."""
    from pipelines.config import Settings

    return Settings(
        home=home,
        specs_dir=ROOT / "verticals",
        expectations_dir=ROOT / "expectations",
        bucket_url=(home / "bucket").as_uri(),
        registry_url=f"sqlite:///{home / 'registry.db'}",
        dvc_remote=str(home / "dvc-remote"),
    )


def seeded_home(config: Config, name: str, verticals: Sequence[str]) -> Any:
    """Settings for a new data root ``<workdir>/<name>`` holding a demo warehouse of ``verticals``."""
    from pipelines.demo.seed import seed_warehouse

    home = config.workdir / name
    home.mkdir()
    seed_warehouse(f"sqlite:///{home / 'warehouse.db'}", verticals=list(verticals))
    return settings_at(home)


def bench_days(config: Config, spec: Any, last_night: str) -> list[str]:
    """The spec's training window ending ``last_night``; its last 30 days with ``--quick``."""
    from pipelines.data.sources import window_days

    days = window_days(spec, last_night)
    return days[-30:] if config.quick else days


def child_json(script: str, *args: str, env: dict[str, str], what: str, timeout: int = 3600) -> Any:
    """Run ``python -c script args`` (a fresh interpreter: its own imports and peak memory); its last line as JSON."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextmanager
def scratch(config: Config, name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=config.workdir))
    yield path


def machine() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        # Which build: a distribution's (PGO and LTO) and pyenv's default differ by ~10 % (docs/benchmarks.md).
        "python_executable": os.path.realpath(sys.executable),
        "platform": platform.platform(),
        "versions": versions,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _suites() -> dict[str, Callable[[Config], list[Figure]]]:
    # Imported lazily: `--only parse` must not pay for torch or GX.
    import bench_airflow
    import bench_dvc
    import bench_extract
    import bench_gx
    import bench_history
    import bench_parse
    import bench_prepare
    import bench_serving
    import bench_train
    import bench_vertical
    import bench_window

    return {
        "parse": bench_parse.run,
        "gx": bench_gx.run,
        "dvc": bench_dvc.run,
        "train": bench_train.run,
        "history": bench_history.run,
        "extract": bench_extract.run,
        "prepare": bench_prepare.run,
        "window": bench_window.run,
        "serving": bench_serving.run,
        "airflow": bench_airflow.run,
        "vertical": bench_vertical.run,
    }


def render(figures: list[Figure]) -> str:
    header = f"{'figure':<58} {'measured':>10} {'baseline':>10} {'ratio':>8} {'budget':>7}  verdict"
    lines = [header, "-" * len(header)]
    for f in figures:
        budget = f"{f.budget:.2f}x" if f.budget is not None else "-"
        numbers = f"{f.measured:>9.4g}{f.unit:<1} {f.baseline:>9.4g}{f.unit:<1} {f.ratio:>7.2f}x"
        lines.append(f"{f.name:<58} {numbers} {budget:>7}  {f.verdict}")
        if f.detail:
            lines.append(f"    {f.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repetitions: a smoke run")
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 5, quick 1)")
    parser.add_argument("--only", nargs="+", help="run only these suites")
    parser.add_argument("--json", type=Path, default=ROOT / ".state" / "bench" / "results.json")
    args = parser.parse_args(argv)

    suites = _suites()
    chosen = args.only or list(suites)
    unknown = sorted(set(chosen) - set(suites))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(suites)}")
    (ROOT / ".state" / "bench").mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir=ROOT / ".state" / "bench") as work:
        config = Config(quick=args.quick, reps=args.reps or (1 if args.quick else 5), workdir=Path(work))
        for name in chosen:
            started = time.perf_counter()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                figures.extend(suites[name](config))
            except Exception as exc:  # one broken suite must not hide the others' figures
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"[bench] {name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
            print(f"[bench] {name} done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    info = machine()
    print(
        f"{info['cores']} cores, load {info['load_average'][0]:.1f}, python {info['python']}, "
        f"mode {'quick' if args.quick else 'full'}, {config.reps} rep(s)"
    )
    print(render(figures))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": info,
                "quick": args.quick,
                "reps": config.reps,
                "figures": [f.as_json() for f in figures],
                "errors": errors,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.json}")
    for name, error in errors.items():
        print(f"ERROR in {name}: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
