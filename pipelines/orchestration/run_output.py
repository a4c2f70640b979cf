"""What `make run` prints: one line per vertical with every stage's outcome and duration.

``dag.test()`` streams every task's log (Airflow's, Great Expectations',
Lightning's) to the console: about 800 lines for four verticals, in which a
data-quality failure's one useful line is easy to miss.  `captured_output`
sends all of it, at the file-descriptor level (so subprocesses and C
libraries are caught too), to a log file under ``<PIPELINES_HOME>/logs/``;
the console keeps only what `Console` writes:

* one line per vertical, once its run ends: outcome, time, and each stage's
  duration or state (`vertical_line`); a failed stage's error summary below it;
* on a terminal only, a status line that names the running stage and its
  elapsed time, rewritten in place once a second (nothing in a non-TTY log);
* the log file's path, then the decision table (printed by the caller).

The stage states come from the DAG run's task instances after the run, so a
stage the scheduler skipped (``deploy`` after a rejecting ``gate``) or never
reached (``upstream_failed``) is shown too; the live status line follows
Airflow's task-instance listener hooks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pluggy

#: Airflow's listener hooks are pluggy hooks of the project "airflow" (``airflow.listeners.hookimpl``);
#: pluggy's own marker keeps this module importable before Airflow is configured.
hookimpl = pluggy.HookimplMarker("airflow")
#: How a stage that did not simply succeed reads in the line (Airflow state -> words).
_STATE_WORDS = {
    "failed": "FAILED",
    "upstream_failed": "not run",
    "skipped": "skipped",
    "removed": "removed",
    "up_for_retry": "retrying",
}
#: How often the terminal status line is rewritten.
STATUS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class StageOutcome:
    """One task of a DAG run as the console shows it."""

    task_id: str
    state: str
    seconds: float | None
    tries: int

    @property
    def cell(self) -> str:
        """``train 25.0s``, ``validate FAILED 2.1s``, ``deploy skipped``, ``train 30.2s (2 tries)``."""
        parts = [self.task_id]
        if self.state != "success":
            parts.append(_STATE_WORDS.get(self.state, self.state))
        if self.seconds is not None and self.state not in ("skipped", "upstream_failed"):
            parts.append(_duration(self.seconds))
        if self.tries > 1:
            parts.append(f"({self.tries} tries)")
        return " ".join(parts)


def stage_outcomes(task_instances: Iterable[Any], order: list[str]) -> list[StageOutcome]:
    """The run's task instances as `StageOutcome` s, in the DAG's task order."""
    rank = {task_id: i for i, task_id in enumerate(order)}
    outcomes = []
    for ti in task_instances:
        start, end = getattr(ti, "start_date", None), getattr(ti, "end_date", None)
        seconds = (end - start).total_seconds() if start and end else None
        state = getattr(ti.state, "value", ti.state)
        outcomes.append(StageOutcome(ti.task_id, str(state or "none"), seconds, int(ti.try_number or 0)))
    return sorted(outcomes, key=lambda o: (rank.get(o.task_id, len(rank)), o.task_id))


def vertical_line(vertical: str, ds: str, state: str, seconds: float, stages: list[StageOutcome]) -> str:
    """``finance       2026-11-29  ok       41.3s  extract 0.5s · validate 3.2s · …``."""
    outcome = "ok" if state == "success" else state.upper()
    cells = " · ".join(s.cell for s in stages) or "no task ran"
    return f"{vertical:<13} {ds:<11} {outcome:<7}{_duration(seconds):>7}  {cells}"


def failure_lines(row: dict[str, Any], stages: list[StageOutcome]) -> list[str]:
    """Below a failed vertical's line: the failed stage and its error's first lines (indented)."""
    if "blocked" not in row:
        return []
    failed = next((s.task_id for s in stages if s.state == "failed"), None)
    error = [line.strip() for line in str(row.get("error") or "").splitlines() if line.strip()]
    head = f"  ✗ {failed or row['blocked']}: " if failed else f"  ✗ {row['blocked']}: "
    lines = [head + (error[0] if error else "see the log")]
    lines.extend(f"    {line}" for line in error[1:3])
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def run_log_path(home: Path, ds: str, now: datetime | None = None) -> Path:
    """``<home>/logs/run-<ds>-<UTC time>.log``: one file per `make run`, never overwritten."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return home / "logs" / f"run-{ds}-{stamp}.log"


class Console:
    """The terminal `make run` was started on, while fds 1 and 2 go to the log file."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.is_tty = stream.isatty()
        self._lock = threading.Lock()
        self._status: tuple[str, str, float] | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def line(self, text: str) -> None:
        """A line of its own (clearing the status line first on a terminal)."""
        with self._lock:
            self.stream.write(("\r\x1b[K" if self.is_tty else "") + text + "\n")
            self.stream.flush()

    # -- the status line (terminal only) ---------------------------------------

    def running(self, vertical: str, task_id: str) -> None:
        """``vertical``'s ``task_id`` started: show it, with its elapsed time, until the next event."""
        if not self.is_tty:
            return
        with self._lock:
            self._status = (vertical, task_id, time.monotonic())
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="make-run-status", daemon=True)
            self._ticker.start()
        self._draw()

    def idle(self) -> None:
        with self._lock:
            self._status = None
            if self.is_tty:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        self.idle()

    def _tick(self) -> None:
        while not self._stop.wait(STATUS_INTERVAL_S):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self._status is None:
                return
            vertical, task_id, started = self._status
            self.stream.write(f"\r\x1b[K{vertical}: {task_id} … {_duration(time.monotonic() - started)}")
            self.stream.flush()


class StatusListener:
    """Airflow task-instance listener that moves the console's status line (see `watch_tasks`)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self.console.running(task_instance.dag_id, task_instance.task_id)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self.console.idle()

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        self.console.idle()


def watch_tasks(console: Console) -> None:
    """Register a `StatusListener` with the Task SDK's listener manager (a terminal only).

    ``dag.test()`` runs each task in this process, where the task runner calls
    these hooks; the manager is a process-wide singleton.
    """
    if not console.is_tty:
        return
    from airflow.sdk.listener import get_listener_manager

    get_listener_manager().add_listener(StatusListener(console))


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[Console]:
    """Send fds 1 and 2 (Python, subprocesses, C libraries) to ``log_path``; yield the real console.

    The console writes to a copy of the original stderr, so the lines it
    prints and the decision table (written to ``Console.stdout`` by the
    caller) reach the terminal, and everything else the log file.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = Console(os.fdopen(os.dup(saved_err), "w", encoding="utf-8", errors="replace", buffering=1))
    try:
        with open(log_path, "ab", buffering=0) as log_file:
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            # Python-level writers too, in case sys.stdout/stderr were swapped for objects off fds 1/2.
            streams = sys.stdout, sys.stderr
            redirected = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
            sys.stdout = sys.stderr = redirected
            try:
                yield console
            finally:
                redirected.close()  # flushes; fd 1 stays open (closefd=False)
                sys.stdout, sys.stderr = streams
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
    finally:
        console.close()
        console.stream.close()
        os.close(saved_out)
        os.close(saved_err)
