"""Where the suite's time goes, per module and tier: `make test-profile` (opt-in; issue 14).

The suite is bound by CPU on a 2-core machine: its wall time is about the CPU
it needs divided by the cores, so what to cut is found by CPU, not by wall
time.  ``time`` misses most of it (servers a test starts outlive their parent
and are never waited for), so this reads the machine's busy CPU from
``/proc/stat`` around every test: every process, servers and browsers
included.  With ``TEST_WORKERS=0`` (one process, one test at a time) a
module's figure is its own; with xdist workers it also holds whatever the
other workers ran meanwhile, and the run's totals and the workers' end times
(the balance) are what to read.

Each process appends one JSON line per test to ``<folder>/<worker>.jsonl``
(``PIPELINES_TEST_PROFILE=<folder>``); the controller sums them into
``<folder>/summary.json`` and a table at the end of the run.  The controller
also charges the run's CPU to kinds of process (`tests.process_cpu`): the tests'
own Python, pipeline runs, each Airflow component, Chromium, the S3 server; and
lists the single processes that spent the most (a run forked by `tests.warm_cli`
is titled with its command, so it reads as what it ran).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .process_cpu import UNATTRIBUTED, ProcessRow, ProcessSampler

ENV = "PIPELINES_TEST_PROFILE"


def busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine has spent not idle since boot (``/proc/stat``, all cores).

    The first eight fields (user, nice, system, idle, iowait, irq, softirq, steal);
    guest time is already inside user.  Idle and iowait are the time nobody ran.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class ModuleRow:
    module: str
    worker: str
    tests: int
    wall_s: float
    cpu_s: float
    first_start: float
    last_end: float

    @property
    def tier(self) -> str:
        return tier_of(self.module)


@dataclass
class Summary:
    wall_s: float
    cpu_s: float
    cores: int
    modules: list[ModuleRow] = field(default_factory=list)
    #: worker -> seconds from the run's start to its last test's end (how even the workers' loads were)
    worker_end_s: dict[str, float] = field(default_factory=dict)
    #: process kind -> (processes, CPU-s) over the whole run (`tests.process_cpu`), most CPU first
    process_kinds: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: every process that spent CPU over the whole run, most first (the printed table shows the first ones)
    largest: list[ProcessRow] = field(default_factory=list)
    #: the interpreter's version and build (a distribution's and pyenv's default differ by ~10 %)
    python: str = ""

    @property
    def busy_fraction(self) -> float:
        return self.cpu_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0

    def tiers(self) -> dict[str, tuple[float, float]]:
        """tier -> (wall-s, CPU-s) summed over its modules, largest CPU first."""
        totals: dict[str, list[float]] = {}
        for row in self.modules:
            wall_cpu = totals.setdefault(row.tier, [0.0, 0.0])
            wall_cpu[0] += row.wall_s
            wall_cpu[1] += row.cpu_s
        return {t: (w, c) for t, (w, c) in sorted(totals.items(), key=lambda kv: -kv[1][1])}

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cores": self.cores,
            "busy_fraction": self.busy_fraction,
            "worker_end_s": self.worker_end_s,
            "tiers": {t: {"wall_s": w, "cpu_s": c} for t, (w, c) in self.tiers().items()},
            "modules": [asdict(row) for row in self.modules],
            "process_kinds": {k: {"processes": n, "cpu_s": c} for k, (n, c) in self.process_kinds.items()},
            "largest_processes": [asdict(row) for row in self.largest],
            "python": self.python,
        }


def tier_of(module: str) -> str:
    """``tests/integration/test_x.py`` -> ``integration``."""
    parts = module.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else parts[0]


def summarise(
    records: Iterable[dict[str, Any]],
    *,
    start: dict[str, float],
    end: dict[str, float],
    kinds: dict[str, tuple[int, float]] | None = None,
    largest: Iterable[ProcessRow] = (),
) -> Summary:
    """Per-module rows (most CPU first) from the tests' records; ``start``/``end``: the run's ``t`` and ``cpu``.

    ``kinds``: `ProcessSampler`'s CPU per process kind; what the run's busy CPU holds
    beyond their sum (processes shorter than the sampling interval) is added as
    `UNATTRIBUTED`.  ``largest``: its processes that spent the most, kept as given.

    A record is one test on one worker: ``id`` (its node id), ``worker``, and ``t0``/``t1``
    (wall clock) and ``cpu0``/``cpu1`` (`busy_cpu_seconds`) around all its phases.
    """
    rows: dict[tuple[str, str], ModuleRow] = {}
    ends: dict[str, float] = {}
    for rec in records:
        module = rec["id"].split("::", 1)[0]
        key = (module, rec["worker"])
        row = rows.get(key)
        if row is None:
            row = rows[key] = ModuleRow(module, rec["worker"], 0, 0.0, 0.0, rec["t0"], rec["t1"])
        row.tests += 1
        row.wall_s += rec["t1"] - rec["t0"]
        row.cpu_s += rec["cpu1"] - rec["cpu0"]
        row.first_start = min(row.first_start, rec["t0"])
        row.last_end = max(row.last_end, rec["t1"])
        ends[rec["worker"]] = max(ends.get(rec["worker"], 0.0), rec["t1"] - start["t"])
    cpu_s = end["cpu"] - start["cpu"]
    process_kinds = dict(kinds or {})
    if process_kinds:
        process_kinds[UNATTRIBUTED] = (0, max(cpu_s - sum(c for _, c in process_kinds.values()), 0.0))
    return Summary(
        wall_s=end["t"] - start["t"],
        cpu_s=cpu_s,
        cores=os.cpu_count() or 1,
        modules=sorted(rows.values(), key=lambda r: -r.cpu_s),
        worker_end_s=dict(sorted(ends.items())),
        process_kinds=process_kinds,
        largest=list(largest),
        python=f"{platform.python_version()} ({os.path.realpath(sys.executable)})",
    )


def table(summary: Summary, *, top: int = 25, top_processes: int = 15) -> list[str]:
    """The summary as lines of text: the run, the tiers, then the modules with the most CPU."""
    lines = [
        f"suite profile: {summary.wall_s:.0f} s wall, {summary.cpu_s:.0f} CPU-s busy on {summary.cores} cores "
        f"({summary.busy_fraction:.0%} of them), Python {summary.python}; last test per worker at "
        + ", ".join(f"{w} +{s:.0f} s" for w, s in summary.worker_end_s.items()),
        "CPU-s: the machine's busy CPU during the tests (their servers included); a module's own only with "
        "TEST_WORKERS=0",
        f"{'tier':<14}{'wall-s':>9}{'CPU-s':>9}",
        *(f"{tier:<14}{wall:>9.1f}{cpu:>9.1f}" for tier, (wall, cpu) in summary.tiers().items()),
        f"{'module':<62}{'worker':>7}{'tests':>7}{'wall-s':>9}{'CPU-s':>9}",
    ]
    for row in summary.modules[:top]:
        lines.append(f"{row.module:<62}{row.worker:>7}{row.tests:>7}{row.wall_s:>9.1f}{row.cpu_s:>9.1f}")
    if summary.process_kinds:
        lines.append(f"{'process kind (the same run, sampled from /proc)':<62}{'procs':>14}{'CPU-s':>9}{'share':>9}")
        for kind, (count, cpu) in summary.process_kinds.items():
            share = cpu / summary.cpu_s if summary.cpu_s > 0 else 0.0
            lines.append(f"{kind:<62}{count or '':>14}{cpu:>9.1f}{share:>9.0%}")
    if summary.largest:
        lines.append(f"{'largest processes (command line as last read)':<85}{'CPU-s':>9}{'share':>9}")
        for row in summary.largest[:top_processes]:
            share = row.cpu_s / summary.cpu_s if summary.cpu_s > 0 else 0.0
            command = row.cmdline if len(row.cmdline) <= 84 else row.cmdline[:81] + "..."
            lines.append(f"{command:<85}{row.cpu_s:>9.1f}{share:>9.0%}")
    return lines


class SuiteProfile:
    """The pytest plugin: records each test in every process; the controller sums them up."""

    def __init__(self, folder: Path, *, distributed: bool = False, sample_every: float = 1.0) -> None:
        """``distributed``: this is the controller of xdist workers (they run and record the tests).

        ``sample_every``: seconds between the controller's readings of every process's CPU.
        """
        self.folder = folder
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.controller = "PYTEST_XDIST_WORKER" not in os.environ
        # xdist replays each worker's test reports on the controller: recorded there too, they would count twice.
        self.records = not (self.controller and distributed)
        self.open: dict[str, tuple[float, float]] = {}
        self.start = {"t": time.time(), "cpu": busy_cpu_seconds()}
        self.summary: Summary | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.sampler: ProcessSampler | None = None
        if self.controller:  # a new run: records of an earlier one would be summed in
            for old in folder.glob("*.jsonl"):
                old.unlink()
            # One sampler for the machine, in the controller: the workers' readings would overlap.
            self.sampler = ProcessSampler(sample_every)
            self.sampler.start()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if self.records:
            self.open[nodeid] = (time.time(), busy_cpu_seconds())

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        if not self.records:
            return
        t0, cpu0 = self.open.pop(nodeid)
        # One line per test, appended and flushed at once: a crashed worker keeps what it ran.
        record = {"id": nodeid, "worker": self.worker, "t0": t0, "t1": time.time(), "cpu0": cpu0}
        record["cpu1"] = busy_cpu_seconds()
        with (self.folder / f"{self.worker}.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        if not self.controller:
            return
        end = {"t": time.time(), "cpu": busy_cpu_seconds()}
        kinds = self.sampler.stop() if self.sampler is not None else None
        # Every process in summary.json (which single runs the suite starts, and what each cost); the table, the top.
        largest = self.sampler.largest(top=None) if self.sampler is not None else []
        records = [
            json.loads(line) for path in sorted(self.folder.glob("*.jsonl")) for line in path.read_text().splitlines()
        ]
        self.summary = summarise(records, start=self.start, end=end, kinds=kinds, largest=largest)
        (self.folder / "summary.json").write_text(json.dumps(self.summary.to_dict(), indent=2))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary is not None:
            terminalreporter.section("suite profile")
            for line in table(self.summary):
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"(every test's record and this summary: {self.folder})")
