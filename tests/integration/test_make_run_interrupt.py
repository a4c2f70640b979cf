"""Ctrl-C during `make run` stops it, and the same command then finishes the night.

`make run` runs each vertical's DAG with ``dag.test()``, whose tasks run in its own
process, so Ctrl-C lands inside a task. Airflow's task runner took the interrupt
for a failure to retry (and Lightning turns it into ``SystemExit``): the night went
on after the retry delay. Now the task ends its run (no retry, no task-failure
email), the run's lease is given back, no further vertical starts, and the
command exits 130 saying how to finish.

The interrupt is a real ``SIGINT`` the process sends itself at the end of a
training epoch (`tests/reliability/_fault_runner.py`), not after a sleep.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

from .. import warm_cli
from .airflow_support import airflow_env, migrated_airflow_home, orchestration_specs, pointer, seed_home

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

RUNNER = PROJECT_ROOT / "tests" / "reliability" / "_fault_runner.py"
DS = "2026-11-27"


def _make_run(
    env: dict[str, str], summary: Path, *args: str, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``make run``'s command; with ``fault``, in a new interpreter under the fault runner.

    The interrupted run is a real process started as a console starts it (its own
    interpreter, imports and signal handlers).  The run that finishes the night after
    it is the same module forked from the warm interpreter (`tests.warm_cli`): what it
    checks is what the first run left behind, not the start-up.
    """
    command = ["run", *args, "--date", DS, "--summary-json", str(summary)]
    if fault:
        argv = [sys.executable, str(RUNNER), fault, "orchestration", *command]
        return subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    argv = [sys.executable, "-m", "pipelines.orchestration", *command]
    return warm_cli.run(argv, env=env, cwd=PROJECT_ROOT, timeout=600)


def test_ctrl_c_stops_make_run_at_once_and_the_same_command_then_finishes(tmp_path: Path):
    home = tmp_path / "state"
    seed_home(home)
    specs = tmp_path / "specs"
    specs.mkdir()
    env = airflow_env(home, migrated_airflow_home(), PIPELINES_SPECS_DIR=str(orchestration_specs(specs)))
    summary = tmp_path / "summary.json"

    stopped = _make_run(env, summary, "finance", "healthcare", fault="interrupt-epoch:1")

    assert stopped.returncode == 130, stopped.stderr[-3000:]
    [log] = (home / "logs").glob(f"run-{DS}-*.log")  # the console's stderr goes to the run's log meanwhile
    assert "fault runner: SIGINT at interrupt-epoch:1" in log.read_text()
    assert "interrupted (Ctrl-C); not run: healthcare; run the same command again to finish" in stopped.stderr
    [row] = json.loads(summary.read_text())  # healthcare never started
    assert (row["vertical"], row["blocked"]) == ("finance", "interrupted")
    tasks = row["tasks"]
    assert tasks["train"] == {"state": "failed", "try_number": 1}  # ended, not retried after the delay
    assert {tasks[t]["state"] for t in ("evaluate", "gate", "deploy", "report")} == {"upstream_failed"}
    assert not (home / "outbox").exists()  # no task-failure email for the operator's own Ctrl-C
    with sqlite3.connect(home / "registry.db") as db:
        assert db.execute("select count(*) from run_leases").fetchone()[0] == 0  # nothing parked to wait out
    assert pointer(home, "finance") is None

    again = _make_run(env, summary, "finance")  # at once: no lease left to wait out

    assert again.returncode == 0, again.stderr[-3000:]
    [row] = json.loads(summary.read_text())
    assert "blocked" not in row and row["tasks"]["extract"]["try_number"] == 1
    assert pointer(home, "finance")["version"] == row["model_version"]  # type: ignore[index]
