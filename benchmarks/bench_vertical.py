"""A whole vertical at scale through the CLI: a first run (backfill) and the next night's run.

The manufacturing simulator fills a warehouse with ``rows_per_day`` readings a day
over a year plus one night (``BENCH_5M=1``: ~14k a day, ~5M rows in the 365-day
window; default ~2.8k a day, ~1M; ``--quick``: a tiny short-window smoke run), with
23 auxiliary sensors, so the model sees 30 numeric features.  A specs-folder
overlay (``PIPELINES_SPECS_DIR``) declares those features and scales the per-day
row bounds; everything else is the vertical's own spec.

Each run is ``python -m pipelines run manufacturing --date DS`` in a child process:
its wall time, per-stage wall times (stamped as the CLI announces each stage on
stderr), the child's peak RSS (its ``VmHWM``, read from ``/proc`` while it runs:
``ru_maxrss`` would carry over this harness's own high-water mark, which holds the
seeded table, across fork/exec) and the peak per stage (the process tree's RSS,
sampled from ``/proc``).

Figures: the first run, the nightly run and the peak RSS against the budgets of
ARCHITECTURE "Budgets" (15 min, 5 min, 6 GB; the baseline column *is* the budget),
and the first run against the same stages on a window with 10x fewer rows a day,
measured in the same run (how the pipeline scales: 10x is linear).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from harness import ROOT, Config, Figure

VERTICAL = "manufacturing"
#: The first run's logical date (a Tuesday: the next night, a Wednesday, is no weekly tuning night).
FIRST_DS = date(2025, 12, 30)
N_FEATURES = 30
BUDGET_FIRST_S = 15 * 60
BUDGET_NIGHTLY_S = 5 * 60
BUDGET_RSS_MIB = 6 * 1024
#: What a vertical of millions of rows declares as its training compute budget (docs/benchmarks.md):
#: an epoch is a fresh sample of this many fit rows, a sweep's trials train on a sample, and the
#: sweep leaves out the small batches that cost the most steps per row.
SCALE_MODEL = {"samples_per_epoch": 500_000}
SCALE_TUNING = {"max_rows": 200_000, "space": {"batch_size": [256, 512, 1024]}}
STAGE_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+: (\w+) …")


@dataclass
class RunResult:
    """One CLI run: wall seconds, per-stage seconds and peak RSS, the decision it printed."""

    seconds: float
    stages: dict[str, float]
    peak_mib: float
    stage_peak_mib: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)

    def outcome(self) -> str:
        """What the run decided, as its decision table says it (the JSON summary has no such word)."""
        if not self.summary:
            return "?"
        if self.summary.get("blocked"):
            return f"blocked ({self.summary['blocked']})"
        if self.summary.get("deployed"):
            return "promoted"
        return "approved" if self.summary.get("approved") else "rejected"

    def table(self) -> str:
        return ", ".join(
            f"{name} {secs:.0f}s/{self.stage_peak_mib.get(name, 0) / 1024:.1f}G" for name, secs in self.stages.items()
        )


def _size(config: Config) -> tuple[int, dict[str, Any]]:
    """Rows per day and the spec overlay's window for this mode."""
    if config.quick:
        window = {"train_days": 40, "holdout_days": 12, "validation_days": 10}
        return 120, window
    return (14_000 if os.environ.get("BENCH_5M") else 2_800), {}


def write_specs(folder: Path, rows_per_day: int, window: dict[str, Any], *, quick: bool) -> Path:
    """The repo's specs with manufacturing widened to 30 features and its row bounds scaled."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for path in (ROOT / "verticals").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        if raw.get("name") == VERTICAL:
            core = list(raw["features"]["numeric"])
            aux = [f"aux_sensor_{i:02d}" for i in range(1, N_FEATURES - len(core) + 1)]
            raw["features"]["numeric"] = core + aux
            # The simulated auxiliary sensors mix in the seasonal temperatures, which the spec
            # already exempts from drift against the champion's year (a normal night blocked).
            raw["quality"]["drift"]["exempt"] = [*raw["quality"]["drift"].get("exempt", []), *aux]
            # Weekends get ~0.7x the mean day and weekdays ~1.1x (the simulator's workday weights).
            raw["quality"].update(min_rows_per_day=max(1, rows_per_day // 4), max_rows_per_day=rows_per_day * 3)
            raw["window"].update(window)
            if quick:  # a smoke run: the stages, not the model, and the tiny holdout still gates
                raw["model"].update(epochs=2, early_stopping=None)
                raw["model"]["tuning"].update(trials=2, timeout_seconds=30)
                raw["gate"].update(min_holdout_rows=200, slices=[])
                raw["gate"]["comparison"].update(min_rows=200, min_positives=20)
            else:
                raw["model"].update(SCALE_MODEL)
                raw["model"]["tuning"].update(SCALE_TUNING)
        (folder / path.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def seed(home: Path, rows_per_day: int, days: int, last: date) -> int:
    """The warehouse for ``days`` days ending ``last``: the simulator with the auxiliary sensors."""
    from pipelines.config import load_spec
    from pipelines.demo.seed import warehouse_engine, write_table
    from pipelines.demo.simulate import simulate_sensor_readings

    spec = load_spec(VERTICAL)
    frame = simulate_sensor_readings(
        rows_per_day * days,
        seed=0,
        start=last - timedelta(days=days - 1),
        end=last,
        n_extra_features=N_FEATURES - len(spec.features.numeric),
    )
    engine = warehouse_engine(f"sqlite:///{home / 'warehouse.db'}")
    try:
        return write_table(engine, spec.source.table, frame, key=spec.key)  # type: ignore[union-attr]
    finally:
        engine.dispose()


def _env(home: Path, specs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    env.update(PIPELINES_HOME=str(home), PIPELINES_SPECS_DIR=str(specs), PYTHONUNBUFFERED="1")
    return env


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants now (0 once gone)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, AttributeError, ValueError):
            continue
    return total / 1024


def _hwm_mib(pid: int) -> float:
    """``pid``'s own peak resident memory since its exec (0 once gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1)) / 1024  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return 0.0


def cli_run(home: Path, specs: Path, ds: str) -> RunResult:
    """``python -m pipelines run`` in a child process; stage times from its progress lines, peak RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", VERTICAL, "--date", ds, "--json"],
        cwd=ROOT,
        env=_env(home, specs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    stage_peak: dict[str, float] = {}
    hwm = [0.0]
    err_tail: list[str] = []
    done = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        with (home / f"run-{ds}.log").open("w") as log:  # the whole log, for a profile of the run
            for line in proc.stderr:
                log.write(line)
                match = STAGE_LINE.match(line)
                if match:
                    marks.append((match.group(1), time.perf_counter()))
                err_tail.append(line)
                del err_tail[:-60]

    def sample() -> None:
        while not done.wait(0.25):
            hwm[0] = max(hwm[0], _hwm_mib(proc.pid))
            if marks:
                name = marks[-1][0]
                stage_peak[name] = max(stage_peak.get(name, 0.0), _rss_mib(proc.pid))

    readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=sample, daemon=True)]
    for t in readers:
        t.start()
    stdout = proc.stdout.read() if proc.stdout else ""  # the JSON summary: small, read to the end
    _, status = os.waitpid(proc.pid, 0)
    ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    for t in readers:
        t.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"run {ds} exited {proc.returncode}:\n{''.join(err_tail)[-3000:]}")
    bounds = [*(t for _, t in marks[1:]), ended]
    stages = {name: round(end - start, 1) for (name, start), end in zip(marks, bounds, strict=True)}
    summary = json.loads(stdout)[0] if stdout.strip() else {}
    return RunResult(
        seconds=ended - started,
        stages=stages,
        # The high-water mark read last, a few hundred ms before the exit; the tree's samples cover children.
        peak_mib=max(hwm[0], *stage_peak.values(), 0.0),
        stage_peak_mib=stage_peak,
        summary=summary,
    )


def first_and_nightly(config: Config, name: str, rows_per_day: int, window: dict[str, Any]) -> list[RunResult]:
    """Seed a fresh data root, then the first run on ``FIRST_DS`` and the nightly run the day after."""
    home = config.workdir / f"vertical-{name}"
    home.mkdir()
    specs = write_specs(home.parent / f"vertical-{name}-specs", rows_per_day, window, quick=config.quick)
    days = window.get("train_days", 365) + 1
    started = time.perf_counter()
    rows = seed(home, rows_per_day, days, FIRST_DS + timedelta(days=1))
    print(f"[bench] vertical {name}: seeded {rows:,} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    results = []
    for ds in (FIRST_DS, FIRST_DS + timedelta(days=1)):
        result = cli_run(home, specs, str(ds))
        print(f"[bench] vertical {name} {ds}: {result.seconds:.0f} s; {result.table()}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def run(config: Config) -> list[Figure]:
    rows_per_day, window = _size(config)
    days = window.get("train_days", 365)
    rows = rows_per_day * days
    first, nightly = first_and_nightly(config, "full", rows_per_day, window)
    size = f"{rows / 1e6:.2g}M rows x {N_FEATURES}"
    decision = f"decision {first.outcome()} / {nightly.outcome()}"
    figures = [
        Figure(
            name=f"vertical {size}: first run (backfill) vs the 15-min budget",
            measured=first.seconds,
            baseline=BUDGET_FIRST_S,
            budget=1.0,
            detail=f"{first.table()}; {decision}",
            samples={"stages": list(first.stages.values())},
        ),
        Figure(
            name=f"vertical {size}: nightly run vs the 5-min budget",
            measured=nightly.seconds,
            baseline=BUDGET_NIGHTLY_S,
            budget=1.0,
            detail=nightly.table(),
            samples={"stages": list(nightly.stages.values())},
        ),
        Figure(
            name=f"vertical {size}: peak RSS of either run vs the 6 GB budget",
            measured=max(first.peak_mib, nightly.peak_mib),
            baseline=BUDGET_RSS_MIB,
            budget=1.0,
            unit="M",
            detail=f"first {first.peak_mib:,.0f} MiB, nightly {nightly.peak_mib:,.0f} MiB",
        ),
    ]
    if config.quick:  # a tenth of the smoke size is too few rows to train on
        return figures
    small_first, _ = first_and_nightly(config, "small", rows_per_day // 10, window)
    figures.append(
        Figure(
            name=f"vertical {size}: first run vs the same on 10x fewer rows a day",
            measured=first.seconds,
            baseline=small_first.seconds,
            detail=f"10x fewer rows: {small_first.table()}; linear scaling would be ~10x",
            samples={"measured": list(first.stages.values()), "baseline": list(small_first.stages.values())},
        )
    )
    return figures
