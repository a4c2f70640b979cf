"""Triggers that could never run correctly are refused by the real Airflow API server.

A logical date whose UTC day is not over (today, tomorrow; with or without an
explicit data interval), and a forced promotion without a reason, answer HTTP
400 with the reason and create no run, so nothing sits "running" and blocks the
vertical (``max_active_runs=1``); a valid trigger right after is accepted, gets
exactly its day as data interval and starts.  The rollback DAG refuses a blank
reason the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .airflow_support import Airflow, seed_home, standalone

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VERTICAL = "finance"
DS = "2026-11-27"


@pytest.fixture
def airflow(settings, tmp_path: Path) -> Iterator[Airflow]:
    seed_home(settings.home)
    with standalone(settings.home, tmp_path, VERTICAL) as server:
        yield server


def _midnight(days_from_today: int) -> str:
    day = datetime.now(UTC).date() + timedelta(days=days_from_today)
    return f"{day.isoformat()}T00:00:00Z"


def test_triggers_that_cannot_run_are_refused_and_never_block_the_vertical(airflow: Airflow):
    client = airflow.client
    assert client.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": False}).status_code == 200
    runs = f"/api/v2/dags/{VERTICAL}/dagRuns"
    tomorrow, today = _midnight(1), _midnight(0)
    next_day = _midnight(2)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()

    refused = {
        "future date": {"logical_date": tomorrow, "conf": {}},
        "future date, explicit interval": {
            "logical_date": tomorrow,
            "data_interval_start": tomorrow,
            "data_interval_end": next_day,
            "conf": {},
        },
        "today (not over)": {"logical_date": today, "conf": {}},
    }
    for what, body in refused.items():
        response = client.post(runs, json=body)
        assert response.status_code == 400, (what, response.text)
        detail = response.json()["detail"]
        assert "not over yet" in detail and f"up to {yesterday}" in detail, (what, detail)
        assert VERTICAL in detail

    for reason in (None, "", "   "):
        conf = {"force_promotion": True} | ({} if reason is None else {"force_reason": reason})
        response = client.post(runs, json={"logical_date": f"{DS}T00:00:00Z", "conf": conf})
        assert response.status_code == 400, (conf, response.text)
        assert "force_reason is empty" in response.json()["detail"]

    listed = client.get(runs).json()
    assert listed["total_entries"] == 0, listed  # nothing was created, so nothing can block

    # A valid trigger is untouched by the guard, gets exactly its day, and starts.
    ok = client.post(runs, json={"logical_date": f"{DS}T15:04:00Z", "conf": {"dry_run": True}})
    assert ok.status_code == 200, ok.text
    run = ok.json()
    assert (run["data_interval_start"], run["data_interval_end"]) == (
        "2026-11-27T00:00:00Z",
        "2026-11-28T00:00:00Z",
    )
    assert run["triggered_by"] == "rest_api"
    airflow.wait_for("the run to start", lambda: airflow.run_state(run["dag_run_id"]) in ("running", "success"), 120)

    # The rollback DAG's reason is required and must not be blank.
    response = client.post(
        "/api/v2/dags/rollback_model/dagRuns",
        json={"logical_date": None, "conf": {"vertical": VERTICAL, "reason": "   "}},
    )
    assert response.status_code == 400, response.text
