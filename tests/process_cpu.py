"""Which kinds of process the suite's CPU went to: `make test-profile`'s second table (issue 14).

The per-module table says which tests cost the most; this says what inside
them did: the tests' own Python, the pipeline runs they start, Airflow's
scheduler, API server and workers, Chromium, the S3 server, PostgreSQL.
A thread reads every process's CPU from ``/proc/<pid>/stat`` at a fixed
interval and charges it to a kind chosen from its command line.  A process
that starts and ends between two readings is never seen: its CPU is in the
run's busy total (`suite_profile.busy_cpu_seconds`) but in no kind, and the
table shows that remainder as ``unattributed``.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

#: (kind, pattern searched in the command line), first match wins.  Forked children keep their
#: parent's command line unless they set a title (Airflow's task processes do: ``airflow worker -- ...``,
#: under either executor); a `tests.warm_cli` run reads as the multiprocessing forkserver it came from.  pytest first:
#: an xdist worker's title names its test (``[pytest-xdist running] tests/distributed/test_celery...``),
#: and only pytest itself, not every process given a ``/tmp/pytest-of-...`` path.
PYTEST = "pytest (the tests' own Python)"
KINDS: tuple[tuple[str, str], ...] = (
    (PYTEST, r"^\[pytest-xdist|-m pytest(\s|$)|bin/pytest(\s|$)"),
    ("pipelines runs (CLI, dag.test, warm forks)", r"-m pipelines\b|_fault_runner\.py|multiprocessing\.forkserver"),
    ("Airflow Celery workers", r"celery"),
    ("Airflow task processes (LocalExecutor and Celery)", r"airflow worker -- |airflow supervisor|airflow task"),
    ("Airflow scheduler", r"airflow scheduler"),
    ("Airflow API server", r"airflow api[-_]server"),
    ("Airflow dag-processor", r"airflow dag[-_]processor"),
    ("Airflow triggerer", r"airflow triggerer"),
    ("Airflow, other (standalone, log servers, db migrate)", r"\bairflow\b"),
    ("benchmark harness", r"benchmarks/"),
    ("Chromium", r"chrom|headless_shell"),
    ("S3 server (weed)", r"(^|/)weed\b"),
    ("PostgreSQL", r"^postgres"),
    ("Redis", r"redis-server"),
    ("other Python", r"python"),
)
OTHER = "other (kernel, machine services)"
UNATTRIBUTED = "unattributed (processes shorter than the interval)"


def kind_of(cmdline: str) -> str:
    """The kind a process's command line (arguments joined by spaces) is charged to."""
    for kind, pattern in KINDS:
        if re.search(pattern, cmdline):
            return kind
    return OTHER


@dataclass
class _Seen:
    kind: str
    #: CPU ticks it had when first seen, if it was already running when the ledger started.
    baseline: int
    ticks: int
    #: its command line as last read (a title set after a fork replaces the parent's)
    cmdline: str = ""


@dataclass(frozen=True)
class ProcessRow:
    """One process of the run: what it was, its kind and the CPU it spent during the run."""

    cmdline: str
    kind: str
    cpu_s: float


class ProcessLedger:
    """Each process's CPU since the ledger's first reading, by kind (pure: fed by `ProcessSampler`)."""

    def __init__(self) -> None:
        self.processes: dict[tuple[int, int], _Seen] = {}
        self.readings = 0

    def observe(self, pid: int, started: int, cmdline: str, ticks: int) -> None:
        """One reading of one process: ``started`` (its start time, in ticks since boot) tells a reused pid apart.

        A process already running at the first reading is charged only what it spends after it;
        one that appears later is charged everything (it started during the run).
        """
        seen = self.processes.get((pid, started))
        if seen is None:
            baseline = ticks if self.readings == 0 else 0
            self.processes[(pid, started)] = _Seen(kind_of(cmdline), baseline, ticks, cmdline)
        else:
            seen.ticks = ticks
            if cmdline:  # a title set after the fork (or an exec) says better what it is
                seen.kind = kind_of(cmdline)
                seen.cmdline = cmdline

    def reading_done(self) -> None:
        self.readings += 1

    def by_kind(self, ticks_per_s: float) -> dict[str, tuple[int, float]]:
        """kind -> (processes, CPU-s), most CPU first; kinds with no process are left out."""
        totals: dict[str, list[float]] = {}
        for seen in self.processes.values():
            spent = max(seen.ticks - seen.baseline, 0)
            if seen.baseline and not spent:
                continue  # running before and idle throughout: not part of the run
            row = totals.setdefault(seen.kind, [0, 0.0])
            row[0] += 1
            row[1] += spent / ticks_per_s
        return {k: (int(n), s) for k, (n, s) in sorted(totals.items(), key=lambda kv: -kv[1][1])}

    def largest(self, ticks_per_s: float, top: int | None = 15) -> list[ProcessRow]:
        """The ``top`` processes (``None``: every one) that spent CPU during the run, most first.

        A kind's total says where the CPU went; this says which single runs or servers
        carry it (the golden Airflow night, a standalone's API server), the ones worth profiling.
        """
        spent = [(max(seen.ticks - seen.baseline, 0), seen) for seen in self.processes.values()]
        spent.sort(key=lambda pair: -pair[0])
        return [ProcessRow(seen.cmdline, seen.kind, ticks / ticks_per_s) for ticks, seen in spent[:top] if ticks]


class ProcessSampler:
    """Reads every process's CPU every ``interval`` seconds on a daemon thread, into a `ProcessLedger`."""

    def __init__(self, interval: float = 1.0, proc: Path = Path("/proc")) -> None:
        self.interval = interval
        self.proc = proc
        self.ledger = ProcessLedger()
        self.ticks_per_s = float(os.sysconf("SC_CLK_TCK"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-cpu", daemon=True)

    def start(self) -> None:
        self.read()  # the baseline of what already runs, before any test starts
        self._thread.start()

    def stop(self) -> dict[str, tuple[int, float]]:
        """Stop, take one last reading, and return `ProcessLedger.by_kind` (`largest` reads the same ledger)."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        self.read()
        return self.ledger.by_kind(self.ticks_per_s)

    def largest(self, top: int | None = 15) -> list[ProcessRow]:
        """`ProcessLedger.largest` of what was read."""
        return self.ledger.largest(self.ticks_per_s, top)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.read()

    def read(self) -> None:
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # it ended between the listing and the read
                continue
            # The command name (field 2) is in parentheses and may hold spaces: split after its ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            utime, stime, started = int(fields[11]), int(fields[12]), int(fields[19])
            self.ledger.observe(int(entry.name), started, cmdline.strip(), utime + stime)
        self.ledger.reading_done()
