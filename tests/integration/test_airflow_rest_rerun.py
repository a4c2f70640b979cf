"""Clearing a run through the real Airflow REST API reproduces it exactly.

Starts ``airflow standalone`` (API server, scheduler with LocalExecutor,
dag-processor, triggerer) on a free loopback port with its own AIRFLOW_HOME
and SQLite DB, triggers one vertical for a fixed logical date, then clears
``train`` with its downstream tasks, and then the whole run.  Each rerun must
give the same data and model versions, add no registry rows, leave the
bucket's objects byte-identical and deploy exactly once.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .airflow_support import AIRFLOW_BIN, airflow_env, bucket_listing, pointer, record, registry_counts, seed_home

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VERTICAL = "finance"
DS = "2026-11-27"
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Airflow:
    """A running ``airflow standalone`` and an authenticated REST client for it."""

    process: subprocess.Popen[bytes]
    client: httpx.Client
    home: Path
    log: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"airflow standalone exited ({self.process.returncode}) waiting for {what}:\n{self.log_tail()}"
                )
            result = check()
            if result:
                return result
            time.sleep(2)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log_tail()}")

    def run_state(self, run_id: str) -> str:
        response = self.client.get(f"/api/v2/dags/{VERTICAL}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()["state"]

    def task_states(self, run_id: str) -> dict[str, dict[str, Any]]:
        response = self.client.get(f"/api/v2/dags/{VERTICAL}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return {
            ti["task_id"]: {"state": ti["state"], "try_number": ti["try_number"]}
            for ti in response.json()["task_instances"]
        }

    def wait_for_run(self, run_id: str) -> None:
        state = self.wait_for(
            f"run {run_id}", lambda: (s := self.run_state(run_id)) in ("success", "failed") and s, RUN_TIMEOUT_S
        )
        assert state == "success", f"{self.task_states(run_id)}\n{self.log_tail()}"

    def xcom(self, run_id: str, task_id: str) -> Any:
        response = self.client.get(
            f"/api/v2/dags/{VERTICAL}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        )
        response.raise_for_status()
        value = response.json()["value"]
        return json.loads(value) if isinstance(value, str) else value

    def clear(self, run_id: str, task_ids: list[str] | None) -> list[str]:
        body: dict[str, Any] = {
            "dry_run": False,
            "dag_run_id": run_id,
            "only_failed": False,
            "reset_dag_runs": True,
            "include_downstream": True,
        }
        if task_ids is not None:
            body["task_ids"] = task_ids
        response = self.client.post(f"/api/v2/dags/{VERTICAL}/clearTaskInstances", json=body)
        assert response.status_code == 200, response.text
        return sorted(ti["task_id"] for ti in response.json()["task_instances"])


@pytest.fixture
def airflow(settings, tmp_path: Path) -> Iterator[Airflow]:
    seed_home(settings.home)
    airflow_home = tmp_path / "airflow"
    airflow_home.mkdir()
    port = free_port()
    env = airflow_env(
        settings.home,
        airflow_home,
        port=port,
        # Only the runs this test triggers: no cron run for "yesterday" after unpausing.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        # One secret for every component, so task tokens validate at the API server.
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
    )
    log = tmp_path / "standalone.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [AIRFLOW_BIN, "standalone"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every child
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    server = Airflow(process, client, airflow_home, log)
    try:
        server.wait_for("a healthy scheduler", lambda: _healthy(client), STARTUP_TIMEOUT_S)
        passwords = airflow_home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        token = client.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code == 201, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield server
    finally:
        client.close()
        _stop(process)


def _healthy(client: httpx.Client) -> bool:
    try:
        response = client.get("/api/v2/monitor/health")
    except httpx.TransportError:
        return False
    if response.status_code != 200:
        return False
    health = response.json()
    return all(health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to standalone itself (its clean shutdown, ~10 s), then SIGKILL whatever is left of its group.

    Not SIGTERM (standalone would orphan its children) and not SIGINT to the whole
    group (the components then die under standalone, which hangs reaping them).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


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
