"""The console lines of `make run` (pipelines.orchestration.run_output), from real task-instance states."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from pipelines.orchestration.run_output import (
    Console,
    StageOutcome,
    captured_output,
    failure_lines,
    run_log_path,
    stage_outcomes,
    vertical_line,
)

TASKS = ["extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report"]
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def _ti(task_id: str, state: str | None, seconds: float | None = None, tries: int = 1) -> SimpleNamespace:
    """What `DagRun.get_task_instances()` gives: task id, state, start/end dates, try number."""
    end = None if seconds is None else T0 + timedelta(seconds=seconds)
    return SimpleNamespace(task_id=task_id, state=state, start_date=T0 if end else None, end_date=end, try_number=tries)


def test_a_successful_run_is_one_line_with_every_stage_in_dag_order():
    # Task instances come back in any order; the line follows the DAG's.
    tis = [_ti(t, "success", 0.25 * (i + 1)) for i, t in reversed(list(enumerate(TASKS)))]
    tis[4] = _ti("train", "success", 83.4, tries=2)
    stages = stage_outcomes(tis, TASKS)
    assert [s.task_id for s in stages] == TASKS
    line = vertical_line("finance", "2026-11-29", "success", 91.0, stages)
    assert line.startswith("finance       2026-11-29  ok       1m31s  extract 0.2s · validate 0.5s")
    assert "train 1m23s (2 tries)" in line and line.endswith("report 2.0s")
    assert "\n" not in line
    # The longest demo name still leaves a space before the date.
    assert vertical_line("manufacturing", "2026-11-29", "success", 1.0, stages).startswith("manufacturing 2026-11-29 ")


def test_a_failed_run_names_the_failed_stage_and_its_error():
    tis = [_ti("extract", "success", 1.0), _ti("validate", "failed", 3.21)]
    tis += [_ti(t, "upstream_failed") for t in TASKS[2:]]
    stages = stage_outcomes(tis, TASKS)
    line = vertical_line("healthcare", "2026-11-29", "failed", 9.0, stages)
    assert "validate FAILED 3.2s · snapshot not run · train not run" in line
    assert " FAILED " in line[:40]
    row = {
        "blocked": "data quality",
        "error": "healthcare 2026-11-29: 1 of 23 expectations failed\nexpect_column_values_to_be_between(age)\n\n"
        "a\nb\nc",
    }
    assert failure_lines(row, stages) == [
        "  ✗ validate: healthcare 2026-11-29: 1 of 23 expectations failed",
        "    expect_column_values_to_be_between(age)",
        "    a",
    ]
    assert failure_lines({"vertical": "x"}, stages) == []


def test_a_short_circuited_deploy_reads_skipped_without_a_duration():
    cell = StageOutcome("deploy", "skipped", 0.01, 0).cell
    assert cell == "deploy skipped"


def test_log_files_are_per_run_under_the_homes_logs(tmp_path):
    path = run_log_path(tmp_path, "2026-11-29", datetime(2026, 11, 30, 6, 1, 2, tzinfo=UTC))
    assert path == tmp_path / "logs" / "run-2026-11-29-20261130T060102Z.log"


def test_everything_written_to_fds_1_and_2_goes_to_the_file_and_console_lines_do_not(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with captured_output(log) as console:
        print("airflow says a lot")
        print("a warning", file=sys.stderr)
        os.write(1, b"C library output\n")
        subprocess.run([sys.executable, "-c", "print('a subprocess')"], check=True)
        console.line("finance  ok")
    print("after")
    out, err = capfd.readouterr()
    assert err == "finance  ok\n" and out == "after\n"
    assert log.read_text().splitlines() == ["airflow says a lot", "a warning", "C library output", "a subprocess"]


@pytest.mark.parametrize("tty", [False, True])
def test_the_status_line_is_drawn_only_on_a_terminal(tty):
    stream = io.StringIO()
    stream.isatty = lambda: tty  # type: ignore[method-assign]
    console = Console(stream)
    console.running("finance", "train")
    console.line("finance  ok")
    console.close()
    text = stream.getvalue()
    assert ("finance: train …" in text) is tty
    assert text.endswith("finance  ok\n" + ("\r\x1b[K" if tty else ""))
