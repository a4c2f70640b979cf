"""Clearing a run through the real Airflow REST API reproduces it exactly.

Starts ``airflow standalone`` (API server, scheduler with LocalExecutor,
dag-processor, triggerer) on a free loopback port with its own AIRFLOW_HOME
and SQLite DB, triggers one vertical for a fixed logical date, then clears
``train`` with its downstream tasks, and then the whole run.  Each rerun must
give the same data and model versions, add no registry rows, leave the
bucket's objects byte-identical and deploy exactly once.  The run is about
orchestration, not model quality: finance runs on the orchestration overlay
(`airflow_support.ORCHESTRATION_OVERLAY`: no tuning sweep, a half-year window;
its first model still passes the real gate and is deployed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .airflow_support import (
    Airflow,
    bucket_listing,
    orchestration_specs,
    pointer,
    record,
    registry_counts,
    seed_home,
    standalone,
)

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VERTICAL = "finance"
DS = "2026-11-27"


@pytest.fixture
def airflow(settings, tmp_path: Path) -> Iterator[Airflow]:
    seed_home(settings.home)
    with standalone(settings.home, tmp_path, VERTICAL, specs_dir=orchestration_specs(tmp_path / "specs")) as server:
        yield server


def snapshot_state(home: Path) -> dict[str, Any]:
    return {
        "data_version": record(home, VERTICAL, DS, "snapshot")["id"],
        "model_version": record(home, VERTICAL, DS, "train")["model_version"],
        "registry": registry_counts(home),
        "bucket": bucket_listing(home),
        "pointer": pointer(home, VERTICAL),
    }


def test_clearing_tasks_or_the_run_reproduces_it_without_duplicates(airflow: Airflow, settings):
    home = settings.home
    airflow.wait_for(f"DAG {VERTICAL}", lambda: airflow.client.get(f"/api/v2/dags/{VERTICAL}").status_code == 200, 180)
    assert airflow.client.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": False}).status_code == 200

    trigger = airflow.client.post(
        f"/api/v2/dags/{VERTICAL}/dagRuns", json={"logical_date": f"{DS}T00:00:00Z", "conf": {}}
    )
    assert trigger.status_code == 200, trigger.text
    run_id = trigger.json()["dag_run_id"]
    airflow.wait_for_run(run_id)

    first = snapshot_state(home)
    assert first["pointer"]["version"] == first["model_version"]
    assert first["registry"]["deployments"] == 1
    assert airflow.xcom(run_id, "snapshot")["id"] == first["data_version"]
    assert airflow.xcom(run_id, "train")["model_version"] == first["model_version"]
    first_deploy = airflow.xcom(run_id, "deploy")
    assert first_deploy["deployed"] is True

    # 1. "Clear" train with its downstream tasks (the UI's Clear on a task).
    cleared = airflow.clear(run_id, ["train"])
    assert cleared == ["deploy", "evaluate", "gate", "report", "train"]
    airflow.wait_for_run(run_id)
    assert snapshot_state(home) == first
    assert airflow.xcom(run_id, "train")["reused"] is True  # found its own model instead of retraining
    # The model it promoted is in production: the rerun keeps that deployment's record
    # (same XCom), and the registry/bucket snapshot above proves nothing was deployed again.
    assert airflow.xcom(run_id, "deploy") == first_deploy

    # 2. Clear the whole run.
    assert len(airflow.clear(run_id, None)) == 8
    airflow.wait_for_run(run_id)
    assert snapshot_state(home) == first
    assert airflow.task_states(run_id)["train"]["try_number"] >= 3  # it really ran three times

    # 3. A second trigger for the same date is refused: reruns go through clearing.
    again = airflow.client.post(
        f"/api/v2/dags/{VERTICAL}/dagRuns", json={"logical_date": f"{DS}T00:00:00Z", "conf": {}}
    )
    assert again.status_code == 409, again.text
