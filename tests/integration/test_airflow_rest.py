"""What an operator does through a real Airflow's REST API: reruns, refused triggers, a task log.

One ``airflow standalone`` (API server, scheduler with LocalExecutor,
dag-processor, triggerer) for the module, on a free loopback port with its own
AIRFLOW_HOME and SQLite DB.  The tests run in file order and each holds
whichever order they run in:

1. Clearing a run reproduces it exactly: one vertical is triggered for a fixed
   logical date, then ``train`` is cleared with its downstream tasks, then the
   whole run.  Each rerun must give the same data and model versions, add no
   registry rows, leave the bucket's objects byte-identical and deploy exactly
   once; a second trigger for the date is refused (409).
2. A logical date whose UTC day is not over (today, tomorrow; with or without
   an explicit data interval), and a forced promotion without a reason, answer
   HTTP 400 with the reason and create no run, so nothing sits "running" and
   blocks the vertical (``max_active_runs=1``); a valid trigger right after is
   accepted, gets exactly its day as data interval and runs to success.  The
   rollback DAG refuses a blank reason the same way.
3. A corrupted day fails ``validate`` with a task log that ends with the
   summary: no traceback, no Great Expectations notices.
4. A run an operator marks failed, or deletes, between two tasks leaves the
   vertical's lease parked for a next task that never comes; the next run asks
   Airflow, finds that run over (or gone) and takes the lease at once instead of
   waiting out the park.
5. Two writes at once (what the trigger dialog of a paused DAG sends) both
   answer at once: neither waits out SQLite's 60 s lock timeout, neither fails.
6. The standalone's executor is the embedded default's (`PreloadingLocalExecutor`):
   its task workers hold the stack before any task starts; its servers never load it.

All of it is about orchestration, not model quality: the specs are the
orchestration overlay (`airflow_support.ORCHESTRATION_OVERLAY`): finance without
a tuning sweep on a half-year window (its first model still passes the real
gate and is deployed), and healthcare on 60 days, so its failed first backfill
re-checks 60 days one by one, not a year.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from .airflow_support import (
    Airflow,
    bucket_listing,
    orchestration_specs,
    pointer,
    record,
    registry_counts,
    seed_home,
    session_members,
    standalone,
)

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VERTICAL = "finance"
DS = "2026-11-27"
#: The `ps` title Airflow gives its LocalExecutor workers.
WORKER_TITLE = "airflow worker -- LocalExecutor"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("state")
    seed_home(home)
    specs = orchestration_specs(tmp_path_factory.mktemp("specs"))
    with standalone(home, tmp_path_factory.mktemp("airflow"), VERTICAL, specs_dir=specs) as server:
        server.pipelines_home = home  # type: ignore[attr-defined]
        yield server


def snapshot_state(home: Path) -> dict[str, Any]:
    return {
        "data_version": record(home, VERTICAL, DS, "snapshot")["id"],
        "model_version": record(home, VERTICAL, DS, "train")["model_version"],
        "registry": registry_counts(home),
        "bucket": bucket_listing(home),
        "pointer": pointer(home, VERTICAL),
    }


def test_clearing_tasks_or_the_run_reproduces_it_without_duplicates(airflow: Airflow):
    home = airflow.pipelines_home  # type: ignore[attr-defined]
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


def _run_ids(airflow: Airflow) -> set[str]:
    listed = airflow.client.get(f"/api/v2/dags/{VERTICAL}/dagRuns").json()
    return {run["dag_run_id"] for run in listed["dag_runs"]}


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

    before = _run_ids(airflow)
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

    # Nothing was created (the runs are those from before), so nothing can block.
    assert _run_ids(airflow) == before

    # The rollback DAG's reason is required and must not be blank.
    response = client.post(
        "/api/v2/dags/rollback_model/dagRuns",
        json={"logical_date": None, "conf": {"vertical": VERTICAL, "reason": "   "}},
    )
    assert response.status_code == 400, response.text

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
    # Let it end (a dry run on the orchestration overlay: seconds) rather than mark it failed: the
    # next test's runs must not meet this run's tasks.
    assert (
        airflow.wait_for(
            "the run to end", lambda: (s := airflow.run_state(run["dag_run_id"])) in ("success", "failed") and s, 300
        )
        == "success"
    ), airflow.task_states(run["dag_run_id"])


def _log_lines(airflow: Airflow, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    response = airflow.client.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    content = response.json()["content"]
    return [line if isinstance(line, dict) else {"event": str(line)} for line in content]


def test_a_data_quality_failure_ends_its_task_log_with_the_summary(airflow: Airflow):
    vertical, home = "healthcare", airflow.pipelines_home  # type: ignore[attr-defined]
    with sqlite3.connect(home / "warehouse.db") as db:
        db.execute(
            "update healthcare_covid_tests set age = 250 where test_id in "
            "(select test_id from healthcare_covid_tests where event_date = ? order by test_id limit 2)",
            (DS,),
        )
    client = airflow.client
    assert client.patch(f"/api/v2/dags/{vertical}", json={"is_paused": False}).status_code == 200
    trigger = client.post(f"/api/v2/dags/{vertical}/dagRuns", json={"logical_date": f"{DS}T00:00:00Z", "conf": {}})
    assert trigger.status_code == 200, trigger.text
    run_id = trigger.json()["dag_run_id"]
    url = f"/api/v2/dags/{vertical}/dagRuns/{run_id}"
    airflow.wait_for("the run to fail", lambda: client.get(url).json()["state"] == "failed", 600)
    validate = client.get(f"{url}/taskInstances/validate").json()
    assert (validate["state"], validate["try_number"]) == ("failed", 1)  # no retry

    lines = _log_lines(airflow, vertical, run_id, "validate")
    text = "\n".join(str(line) for line in lines)
    assert "Traceback" not in text and not any(line.get("error_detail") for line in lines), text[-4000:]
    assert "Skipping registering function" not in text  # GX notices went to the library log file
    assert len(lines) < 80, text[-4000:]
    ours = [i for i, line in enumerate(lines) if line.get("logger") == "pipelines.orchestration.tasks"]
    assert ours, text[-4000:]
    summary, hint = (str(lines[i]["event"]) for i in ours[-2:])
    assert "expectations failed" in summary and "age" in summary
    assert "no retry" in hint and "clear 'validate'" in hint
    after = [str(line.get("event")) for line in lines[ours[-1] + 1 :]]
    assert len(after) <= 8, after  # Airflow's own closing lines only ("Task exited", the retry decision)
    # Routed, not lost: GX's import notices are in the library log, written where GX was imported (the
    # scheduler, which preloads the stack for its LocalExecutor workers), never in a task log or the console.
    assert (home / "logs" / "libraries.log").read_text().count("Skipping registering function") > 0


def test_a_run_marked_failed_or_deleted_between_tasks_does_not_hold_up_the_next_one(airflow: Airflow):
    from pipelines.registry import migrations as registry_migrations
    from pipelines.registry.run_lock import RunLock
    from pipelines.registry.schema import create_registry_engine

    client, home = airflow.client, airflow.pipelines_home  # type: ignore[attr-defined]
    runs = f"/api/v2/dags/{VERTICAL}/dagRuns"
    # A run that an operator marks failed while it sits between two tasks: paused, nothing of it starts.
    assert client.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": True}).status_code == 200
    marked = client.post(runs, json={"logical_date": "2026-11-20T00:00:00Z", "conf": {}})
    assert marked.status_code == 200, marked.text
    marked_id = marked.json()["dag_run_id"]
    assert client.patch(f"{runs}/{marked_id}", json={"state": "failed"}).status_code == 200
    # ... after its last task parked the vertical's lease for the next one, as every task does on exit.
    engine = create_registry_engine(f"sqlite:///{home / 'registry.db'}")
    try:
        registry_migrations.upgrade(engine)
        lock = RunLock(engine)
        lock.acquire(VERTICAL, "2026-11-20", marked_id)
        assert lock.park(VERTICAL, marked_id)  # parked for 20 min: the next run would wait them out

        assert client.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": False}).status_code == 200
        nxt = client.post(runs, json={"logical_date": f"{DS}T16:00:00Z", "conf": {"dry_run": True}})
        assert nxt.status_code == 200, nxt.text
        run_id = nxt.json()["dag_run_id"]
        state = airflow.wait_for(
            "the next run to end", lambda: (s := airflow.run_state(run_id)) in ("success", "failed") and s, 300
        )
        assert state == "success", airflow.task_states(run_id)
        assert airflow.task_states(run_id)["extract"]["try_number"] == 1  # no RunAlreadyActive retry
        text = "\n".join(str(line.get("event")) for line in _log_lines(airflow, VERTICAL, run_id, "extract"))
        assert f"took over the run lease of run id {marked_id}, between tasks" in text, text[-3000:]
        assert f"its Airflow run {VERTICAL} / {marked_id} is failed" in text
        assert lock.current(VERTICAL) is None  # the next run's report gave it back

        # The same for a run an operator deletes between two tasks: Airflow answers "no such run".
        assert client.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": True}).status_code == 200
        deleted = client.post(runs, json={"logical_date": "2026-11-21T00:00:00Z", "conf": {}})
        assert deleted.status_code == 200, deleted.text
        deleted_id = deleted.json()["dag_run_id"]
        lock.acquire(VERTICAL, "2026-11-21", deleted_id)
        assert lock.park(VERTICAL, deleted_id)
        assert client.delete(f"{runs}/{deleted_id}").status_code == 204
        assert client.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": False}).status_code == 200
        after = client.post(runs, json={"logical_date": f"{DS}T17:00:00Z", "conf": {"dry_run": True}})
        assert after.status_code == 200, after.text
        after_id = after.json()["dag_run_id"]
        state = airflow.wait_for(
            "the run after the deleted one to end",
            lambda: (s := airflow.run_state(after_id)) in ("success", "failed") and s,
            300,
        )
        assert state == "success", airflow.task_states(after_id)
        assert airflow.task_states(after_id)["extract"]["try_number"] == 1
        text = "\n".join(str(line.get("event")) for line in _log_lines(airflow, VERTICAL, after_id, "extract"))
        assert f"its Airflow run {VERTICAL} / {deleted_id} was deleted" in text, text[-3000:]
        assert lock.current(VERTICAL) is None
    finally:
        engine.dispose()


def test_writes_at_once_both_answer_at_once(airflow: Airflow):
    """A trigger and a pause switch sent together, as the trigger dialog of a paused DAG does, three times.

    Before `pipelines.orchestration.sqlite_writes`, the first such pair took 60.2 s and its other
    request answered 500: one request's audit-log row waited for the SQLite lock on the API
    server's event loop, which the request holding the lock needed to commit.  The trigger is
    education's, kept paused so its runs never start; the switch is the rollback DAG's.
    """
    headers = dict(airflow.client.headers)
    base = str(airflow.client.base_url)
    assert airflow.client.get("/api/v2/dags/education").json()["is_paused"] is True
    answers: list[tuple[str, int, float, str]] = []

    def write(method: str, path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            started = time.monotonic()
            response = client.request(method, path, json=body)
            answers.append((f"{method} {path}", response.status_code, time.monotonic() - started, response.text[:300]))

    for n, day in enumerate(("2026-11-20", "2026-11-21", "2026-11-22")):
        pair = [
            threading.Thread(
                target=write, args=("POST", "/api/v2/dags/education/dagRuns", {"logical_date": f"{day}T00:00:00Z"})
            ),
            threading.Thread(target=write, args=("PATCH", "/api/v2/dags/rollback_model", {"is_paused": n % 2 == 1})),
        ]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()

    # A normal write takes well under a second here; a stall is SQLite's whole 60 s lock timeout.
    assert [a for a in answers if a[1] != 200 or a[2] > 30] == [], answers
    runs = airflow.client.get("/api/v2/dags/education/dagRuns").json()["dag_runs"]
    assert sorted(run["logical_date"][:10] for run in runs) == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert airflow.client.get("/api/v2/dags/rollback_model").json()["is_paused"] is False  # the last switch
    for run in runs:  # queued on a paused DAG: they never started
        assert run["state"] == "queued", run
        assert airflow.client.delete(f"/api/v2/dags/education/dagRuns/{run['dag_run_id']}").status_code == 204
    assert airflow.client.patch("/api/v2/dags/rollback_model", json={"is_paused": True}).status_code == 200


def _mapped(pid: int) -> dict[str, bool]:
    """Which of the stack's shared libraries process ``pid`` has mapped (torch's, Arrow's)."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return {"torch": "libtorch_cpu" in text, "arrow": "libarrow." in text}


def _titles(airflow: Airflow) -> dict[int, str]:
    """The standalone's processes (its session) by pid: each one's command line, as ``ps`` shows it."""
    titles = {}
    for pid in session_members(airflow.process.pid):
        try:
            titles[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # a task process that ended meanwhile
    return titles


def _is_dag_processor(title: str) -> bool:
    """``…/python …/bin/airflow dag-processor``: the DAG processor keeps its command line as its title."""
    parts = title.split()
    return len(parts) >= 2 and parts[-1] == "dag-processor" and parts[-2].endswith("/airflow")


def test_task_workers_start_with_the_stack_and_the_servers_never_import_it(airflow: Airflow):
    """The embedded default's executor (`PreloadingLocalExecutor`) in the real standalone.

    `airflow standalone` keeps it (a local executor); its scheduler imports the stack once and
    then forks its LocalExecutor workers, so every task a worker forks starts with torch and
    Arrow in memory.  The API server and the DAG processor never start an executor: neither the
    UI nor parsing imports the stack.  Read from /proc, what each process has mapped.
    """
    # The scheduler reports healthy before its executor has imported the stack and forked.
    titles = airflow.wait_for(
        "the LocalExecutor's workers",
        lambda: (t := _titles(airflow)) and len([x for x in t.values() if x.startswith(WORKER_TITLE)]) >= 2 and t,
        120,
    )
    workers = [pid for pid, title in titles.items() if title.startswith(WORKER_TITLE)]
    servers = [
        pid for pid, title in titles.items() if title.startswith("airflow api_server") or _is_dag_processor(title)
    ]
    assert len(workers) == 2, titles  # the embedded default's parallelism, all forked at the scheduler's start
    assert [_mapped(pid) for pid in workers] == [{"torch": True, "arrow": True}] * 2, titles
    assert len(servers) == 2, titles
    assert [_mapped(pid) for pid in servers] == [{"torch": False, "arrow": False}] * 2, titles
