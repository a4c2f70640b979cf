"""Every vertical's DAG end to end through Airflow (``dag.test()``) on the demo data.

One `make run`-style invocation runs all verticals in one Airflow process
(the in-process Execution API starts once); the tests then check each run's
task states, the deployed pointer and the stored report, and that a dry run
skips only ``deploy``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import vertical_names

from .airflow_support import (
    NightlyResult,
    bucket_listing,
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


@pytest.fixture(scope="module")
def nightly(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NightlyResult]:
    """Tonight's run of every vertical for ``DS``, as `make run` does it."""
    home = tmp_path_factory.mktemp("state")
    seed_home(home)
    result = run_nightly(home, "all", "--date", DS)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-6000:]}"
    return home, result


def test_prints_the_decision_table(nightly):
    _, result = nightly
    assert "(challenger/threshold/champion)" in result.stdout
    for vertical in VERTICALS:
        assert any(line.startswith(f"{vertical} ") and DS in line for line in result.stdout.splitlines())


@pytest.mark.parametrize("vertical", VERTICALS)
def test_all_tasks_succeed_and_the_model_is_deployed(nightly, vertical):
    home, result = nightly
    row = result.rows[vertical]
    assert "blocked" not in row, row
    assert {task: t["state"] for task, t in row["tasks"].items()} == dict.fromkeys(TASK_IDS, "success")
    assert all(t["try_number"] == 1 for t in row["tasks"].values())

    summary = record(home, vertical, DS, "report")
    assert summary == {k: v for k, v in row.items() if k not in ("run_id", "seconds", "tasks")}
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
