"""Every vertical's DAG end to end through Airflow (``dag.test()``) on the demo data.

One `make run`-style invocation runs all verticals in one Airflow process
(the in-process Execution API starts once); the tests then check each run's
task states, the deployed pointer and the stored report, and that a dry run
skips only ``deploy``.  The specs are the repo's, with education's and manufacturing's
first-night sweeps cut to 2 trials (`conftest.airflow_nightly_specs`).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import PROJECT_ROOT, vertical_names

from ..conftest import GoldenHomes
from .airflow_support import (
    NightlyResult,
    airflow_env,
    bucket_listing,
    migrated_airflow_home,
    pointer,
    record,
    registry_counts,
    run_nightly,
)
from .conftest import AIRFLOW_NIGHTLY, airflow_nightly, airflow_nightly_metadata, airflow_nightly_specs

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DS = "2026-11-27"
VERTICALS = vertical_names()
TASK_IDS = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")


STARTED = datetime.now(UTC)


@pytest.fixture(scope="module")
def nightly(golden: GoldenHomes) -> tuple[Path, NightlyResult]:
    """Tonight's run of every vertical for ``DS``, as `make run` runs it (the session's golden night)."""
    home = airflow_nightly(golden)
    return home, golden.built[AIRFLOW_NIGHTLY]


def test_runs_show_their_real_start_duration_trigger_and_the_day_they_processed(nightly, golden: GoldenHomes):
    """What the UI shows for `make run`'s runs: the metadata DB rows of each DAG run.

    Each run's start and end are wall-clock times from the DB, checked against other
    wall-clock times only (a VM paused under load stops the monotonic clock that the
    summary's ``seconds`` come from, not the wall clock): a run starts after the one
    before it ended and before its first task, and ends after its last task.
    """
    _, result = nightly
    previous_end = STARTED.replace(microsecond=0, tzinfo=None)
    with sqlite3.connect(airflow_nightly_metadata(golden) / "airflow.db") as db:
        for vertical in VERTICALS:  # `make run` runs them one after another, in this order
            row = result.rows[vertical]
            start, end, triggered_by, user, run_type, logical, di_start, di_end = db.execute(
                "select start_date, end_date, triggered_by, triggering_user_name, run_type, logical_date,"
                " data_interval_start, data_interval_end from dag_run where dag_id = ? and run_id = ?",
                (vertical, row["run_id"]),
            ).fetchone()
            first_task, last_task = db.execute(
                "select min(start_date), max(end_date) from task_instance where dag_id = ? and run_id = ?",
                (vertical, row["run_id"]),
            ).fetchone()
            started, ended = datetime.fromisoformat(start), datetime.fromisoformat(end)
            # Not the logical date, nor when `make run` started: this run's own start, and its own end.
            assert previous_end <= started <= datetime.fromisoformat(first_task), (start, first_task)
            assert datetime.fromisoformat(last_task) <= ended, (end, last_task)
            previous_end = ended
            assert (triggered_by, run_type) == ("CLI", "manual")  # the DB stores the enum name
            assert user.endswith("(make run)")
            # The day processed (ds) is the logical date and exactly the data interval.
            assert logical.startswith(f"{DS} 00:00:00")
            assert di_start.startswith(f"{DS} 00:00:00") and di_end.startswith("2026-11-28 00:00:00")
    assert previous_end <= datetime.now(UTC).replace(tzinfo=None)


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
    for metric in ("accuracy", "recall", "f1"):
        assert summary["metrics"][metric]["challenger"] >= summary["metrics"][metric]["threshold"]

    # The serving contract (every vertical here; the CLI tier checks it on finance only):
    # the deployed model scores raw warehouse rows on its own, at the one operating point
    # chosen on validation at training, which the evaluation (hence the gate) scored too.
    from pipelines.release.deploy import load_production

    raw = pd.read_parquet(home / "data" / vertical / "validated" / f"{DS}.parquet")
    model = load_production(vertical, bucket_url=(home / "bucket").as_uri(), cache_dir=home / "serve")
    prob = model.predict_proba(raw)
    assert len(prob) == len(raw) and ((prob >= 0) & (prob <= 1)).all()
    chosen = record(home, vertical, DS, "train")["decision_threshold"]
    assert record(home, vertical, DS, "evaluate")["challenger"]["threshold"] == chosen
    assert model.decision_threshold == chosen
    assert (model.predict(raw) == (prob >= chosen)).all()


def test_status_shows_each_verticals_new_champion(nightly, golden: GoldenHomes):
    """`python -m pipelines status` on the data root Airflow's runs wrote."""
    home, _ = nightly
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "status", "--json"],
        env=airflow_env(home, migrated_airflow_home(), PIPELINES_SPECS_DIR=str(airflow_nightly_specs(golden))),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    status = {s["vertical"]: s for s in json.loads(proc.stdout)}
    for vertical in VERTICALS:
        summary = record(home, vertical, DS, "report")
        assert status[vertical]["champion"]["model_version"] == summary["model_version"]
        assert status[vertical]["champion"]["data_version"] == summary["data_version"]
        assert status[vertical]["last_decision"]["approved"] is True


def test_dry_run_skips_deploy_but_still_reports(nightly, golden: GoldenHomes):
    home, _ = nightly
    vertical = VERTICALS[0]
    before = (bucket_listing(home), registry_counts(home)["deployments"])

    result = run_nightly(home, vertical, "--date", DS, "--dry-run", specs_dir=airflow_nightly_specs(golden))

    assert result.returncode == 0, result.stderr[-6000:]
    states = {task: t["state"] for task, t in result.rows[vertical]["tasks"].items()}
    assert states == {**dict.fromkeys(TASK_IDS, "success"), "deploy": "skipped"}
    assert record(home, vertical, DS, "deploy")["why"].startswith("dry run")
    assert record(home, vertical, DS, "report")["deployed"] is False
    assert (bucket_listing(home), registry_counts(home)["deployments"]) == before
