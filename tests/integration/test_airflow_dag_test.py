"""Every vertical's DAG end to end through Airflow (``dag.test()``) on the demo data.

One `make run`-style invocation runs all verticals in one Airflow process
(the in-process Execution API starts once); the tests then check each run's
task states, the deployed pointer and the stored report, and that a dry run
skips only ``deploy``.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, vertical_names

from .airflow_support import (
    NightlyResult,
    bucket_listing,
    migrated_airflow_home,
    pointer,
    record,
    registry_counts,
    run_nightly,
    seed_home,
)

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DS = "2026-11-27"
VERTICALS = vertical_names()
TASK_IDS = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")


STARTED = datetime.now(UTC)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NightlyResult]:
    """Tonight's run of every vertical for ``DS``, as `make run` does it."""
    home = tmp_path_factory.mktemp("state")
    seed_home(home)
    result = run_nightly(home, "all", "--date", DS)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-6000:]}"
    return home, result


def test_runs_show_their_real_start_duration_trigger_and_the_day_they_processed(nightly):
    """What the UI shows for `make run`'s runs: the metadata DB rows of each DAG run."""
    _, result = nightly
    with sqlite3.connect(migrated_airflow_home() / "airflow.db") as db:
        for vertical in VERTICALS:
            row = result.rows[vertical]
            start, end, triggered_by, user, run_type, logical, di_start, di_end = db.execute(
                "select start_date, end_date, triggered_by, triggering_user_name, run_type, logical_date,"
                " data_interval_start, data_interval_end from dag_run where dag_id = ? and run_id = ?",
                (vertical, row["run_id"]),
            ).fetchone()
            started, ended = datetime.fromisoformat(start), datetime.fromisoformat(end)
            assert started.replace(tzinfo=UTC) >= STARTED.replace(microsecond=0), start  # not the logical date
            assert 0 < (ended - started).total_seconds() <= row["seconds"] + 5
            assert (triggered_by, run_type) == ("CLI", "manual")  # the DB stores the enum name
            assert user.endswith("(make run)")
            # The day processed (ds) is the logical date and exactly the data interval.
            assert logical.startswith(f"{DS} 00:00:00")
            assert di_start.startswith(f"{DS} 00:00:00") and di_end.startswith("2026-11-28 00:00:00")


def test_prints_the_decision_table(nightly):
    _, result = nightly
    assert "(challenger/threshold/champion)" in result.stdout
    for vertical in VERTICALS:
        assert any(line.startswith(f"{vertical} ") and DS in line for line in result.stdout.splitlines())


def test_prints_one_line_per_vertical_and_sends_the_task_logs_to_a_file(nightly):
    """What a person reads: a stage line per vertical, the log's path, the table; Airflow's logs in the file."""
    home, result = nightly
    console = (result.stderr + result.stdout).splitlines()
    assert len(console) < 40, "\n".join(console)
    for vertical in VERTICALS:
        [line] = [x for x in result.stderr.splitlines() if x.startswith(f"{vertical} ") and " ok " in x]
        stages = line.split("  ")[-1].split(" · ")
        assert [cell.split()[0] for cell in stages] == list(TASK_IDS), line
        assert all(re.fullmatch(r"\w+ \d+\.\ds|\w+ \d+m\d\ds", cell) for cell in stages), line
    [log] = re.findall(r"full log: (\S+\.log)", result.stderr)
    path = PROJECT_ROOT / log  # printed relative to the working directory when below it
    assert path.parent == home / "logs"
    assert "[DAG TEST]" in path.read_text() and "[DAG TEST]" not in result.stderr + result.stdout


@pytest.mark.parametrize("vertical", VERTICALS)
def test_all_tasks_succeed_and_the_model_is_deployed(nightly, vertical):
    home, result = nightly
    row = result.rows[vertical]
    assert "blocked" not in row, row
    assert {task: t["state"] for task, t in row["tasks"].items()} == dict.fromkeys(TASK_IDS, "success")
    assert all(t["try_number"] == 1 for t in row["tasks"].values())

    summary = record(home, vertical, DS, "report")
    assert summary == {k: v for k, v in row.items() if k not in ("run_id", "seconds", "tasks", "stages")}
    assert summary["deployed"] and summary["approved"]
    assert pointer(home, vertical)["version"] == summary["model_version"]
    assert record(home, vertical, DS, "train")["run_id"] == row["run_id"]  # lineage names the DAG run
    assert (home / "reports" / vertical / DS / "summary.txt").exists()


def test_dry_run_skips_deploy_but_still_reports(nightly):
    home, _ = nightly
    vertical = VERTICALS[0]
    before = (bucket_listing(home), registry_counts(home)["deployments"])

    result = run_nightly(home, vertical, "--date", DS, "--dry-run")

    assert result.returncode == 0, result.stderr[-6000:]
    states = {task: t["state"] for task, t in result.rows[vertical]["tasks"].items()}
    assert states == {**dict.fromkeys(TASK_IDS, "success"), "deploy": "skipped"}
    assert record(home, vertical, DS, "deploy")["why"].startswith("dry run")
    assert record(home, vertical, DS, "report")["deployed"] is False
    assert (bucket_listing(home), registry_counts(home)["deployments"]) == before
