"""Helpers for the tests that run real Airflow: environments, runs, state snapshots.

Airflow always runs in a subprocess here, with an environment built from the
same embedded defaults `make run` uses, pointed at a throw-away AIRFLOW_HOME
(its own SQLite metadata DB) and the test's PIPELINES_HOME.  The pytest process
itself never imports Airflow's configuration, so nothing leaks between tests.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.config import PROJECT_ROOT
from pipelines.orchestration.airflow_env import embedded_env, with_interpreter_on_path
from pipelines.orchestration.stack import free_ports

from .. import warm_cli
from ..conftest import seeded_warehouse_file, short_window_specs

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
REGISTRY_TABLES = ("model_versions", "decisions", "deployments")
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 600


def airflow_env(pipelines_home: Path, airflow_home: Path, *, port: int | None = None, **extra: str) -> dict[str, str]:
    """The process environment for an Airflow command of one test.

    Inherits nothing Airflow- or pipelines-specific from the caller except the
    SMTP connection (the `smtp_server` fixture sets it).  ``port`` moves the
    API server (and the URLs derived from it) off the default 8080.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_"))}
    if "AIRFLOW_CONN_SMTP_DEFAULT" in os.environ:
        env["AIRFLOW_CONN_SMTP_DEFAULT"] = os.environ["AIRFLOW_CONN_SMTP_DEFAULT"]
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # recompiling Airflow in every process costs seconds
    env.setdefault("PYTHONPYCACHEPREFIX", str(PROJECT_ROOT / ".state" / "pycache"))
    env["PIPELINES_HOME"] = str(pipelines_home)
    env["AIRFLOW_HOME"] = str(airflow_home)
    if port is not None:
        env["AIRFLOW__API__PORT"] = str(port)
        # The worker's and triggerer's log servers too: their fixed defaults (8793, 8794) would
        # collide with another test's Airflow running at the same time (pytest-xdist workers).
        # Chosen apart from ``port`` (not yet bound): the same port twice left a scheduler's log server
        # on the API server's port, and the API server exited "address already in use" (seen once).
        worker_logs, trigger_logs = free_ports(2, avoid={port})
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(worker_logs)
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(trigger_logs)
    env.update(embedded_env(env))
    env.update(extra)
    with_interpreter_on_path(env)
    return env


#: The spec changes for tests about orchestration, not model quality (REST clears, trigger guards,
#: task logs, the trigger form): no tuning sweep, and a window a half (finance) or a sixth
#: (healthcare) of the year's.  Finance keeps its 90-day holdout (>= 200 rows, its gate's floor):
#: its first model is still approved and deployed by the real gate.  Healthcare's runs here stop
#: at ``validate`` (a corrupted day), which re-checks each day of a failed first backfill alone.
ORCHESTRATION_OVERLAY: dict[str, dict[str, Any]] = {
    "finance": {
        "model": {"tuning": {"enabled": False}},
        "window": {"train_days": 180, "holdout_days": 90, "validation_days": 30},
    },
    "healthcare": {"window": {"train_days": 60, "holdout_days": 20, "validation_days": 15}},
}


def orchestration_specs(folder: Path, overlay: dict[str, dict[str, Any]] | None = None) -> Path:
    """A specs folder (``PIPELINES_SPECS_DIR``): the repo's specs with ``overlay`` (`ORCHESTRATION_OVERLAY`) applied."""
    import yaml

    for vertical, changes in (ORCHESTRATION_OVERLAY if overlay is None else overlay).items():
        written = short_window_specs(folder / ".overlay", vertical, **changes)
        for path in written.glob("*.yaml"):
            if yaml.safe_load(path.read_text())["name"] == vertical or not (folder / path.name).exists():
                shutil.copyfile(path, folder / path.name)
    shutil.rmtree(folder / ".overlay")
    return folder


@cache
def migrated_airflow_home() -> Path:
    """One metadata DB per test session (``airflow db migrate`` takes seconds)."""
    home = Path(tempfile.mkdtemp(prefix="pipelines-test-airflow-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return migrate_airflow_home(home)


def migrate_airflow_home(home: Path) -> Path:
    """``airflow db migrate`` into ``home`` (an AIRFLOW_HOME of its own); returns ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [AIRFLOW_BIN, "db", "migrate"],
        env=airflow_env(home / "unused-state", home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return home


def seed_home(home: Path) -> Path:
    """Give ``home`` its own copy of the demo warehouse (`seeded_warehouse_file`: seeded once per test process)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seeded_warehouse_file(), home / "warehouse.db")
    return home / "warehouse.db"


def probe_json(script: str, *args: str, env: dict[str, str]) -> Any:
    """Run ``python -c script args`` with an Airflow test environment; its last stdout line as JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class NightlyResult:
    returncode: int
    rows: dict[str, dict[str, Any]]
    stdout: str
    stderr: str


def run_nightly(
    pipelines_home: Path,
    *args: str,
    airflow_home: Path | None = None,
    timeout: int = 900,
    fresh: bool = False,
    specs_dir: Path | None = None,
) -> NightlyResult:
    """``python -m pipelines.orchestration run ARGS`` (what `make run` calls), via dag.test().

    In its own process, forked from the warm interpreter of `tests.warm_cli` (Airflow itself is
    imported after the fork); ``fresh=True`` starts a new interpreter, as `make run` does.
    ``specs_dir`` replaces the repo's specs (``PIPELINES_SPECS_DIR``).
    """
    summary = Path(tempfile.mkstemp(suffix=".json")[1])
    argv = [sys.executable, "-m", "pipelines.orchestration", "run", *args, "--summary-json", str(summary)]
    specs = {"PIPELINES_SPECS_DIR": str(specs_dir)} if specs_dir else {}
    env = airflow_env(pipelines_home, airflow_home or migrated_airflow_home(), **specs)
    try:
        if fresh:
            proc = subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
        else:
            proc = warm_cli.run(argv, env=env, cwd=PROJECT_ROOT, timeout=timeout)
        rows = json.loads(summary.read_text() or "[]") if summary.stat().st_size else []
    finally:
        summary.unlink(missing_ok=True)
    return NightlyResult(proc.returncode, {row["vertical"]: row for row in rows}, proc.stdout, proc.stderr)


def record(home: Path, vertical: str, ds: str, stage: str) -> dict[str, Any]:
    return json.loads((home / "runs" / vertical / ds / f"{stage}.json").read_text())


def bucket_listing(home: Path) -> dict[str, str]:
    """Every object in the deployment bucket with its content hash."""
    bucket = home / "bucket"
    return {
        str(p.relative_to(bucket)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(bucket.rglob("*"))
        if p.is_file()
    }


def registry_counts(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "registry.db") as db:
        return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in REGISTRY_TABLES}


def pointer(home: Path, vertical: str) -> dict[str, Any] | None:
    path = home / "bucket" / vertical / "production.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- a real `airflow standalone` ---------------------------------------------------


def free_port() -> int:
    return free_ports(1)[0]


#: A component of ``airflow standalone``, as its command line (or the title it sets) names it.
_COMPONENT = re.compile(r"\b(api[-_]server|scheduler|dag[-_]processor|triggerer)\b")


class StandaloneWatch:
    """Waits on a running ``airflow standalone``, failing at once when it or one of its components exits.

    standalone keeps running when one of its components dies (an API server whose port was
    taken, say): watching only standalone's own process, a wait ran out its whole timeout
    (minutes) and then reported a timeout rather than the component that exited.
    """

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        #: Each component's pid, as first seen among standalone's children.
        self.components: dict[str, int] = {}

    def problem(self) -> str | None:
        """What has exited (standalone, or the first of its components seen to), if anything."""
        if self.process.poll() is not None:
            return f"airflow standalone exited ({self.process.returncode})"
        children = live_children(self.process.pid)
        for pid, command in children.items():
            if found := _COMPONENT.search(command):
                self.components.setdefault(found.group(1).replace("_", "-"), pid)
        dead = [name for name, pid in self.components.items() if pid not in children]
        return f"airflow standalone's {dead[0]} exited (standalone itself still runs)" if dead else None

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        """``check()``'s first truthy result, polled until ``timeout``; a test failure, with the log, if none."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if problem := self.problem():
                pytest.fail(f"{problem} waiting for {what}:\n{self.log_tail()}")
            result = check()
            if result:
                return result
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def live_children(parent: int) -> dict[int, str]:
    """The live (not zombie) child processes of ``parent``: pid -> command line (from /proc)."""
    children = {}
    for pid, ppid, _ in _live_processes():
        if ppid == parent:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # exited meanwhile
            children[pid] = command.strip()
    return children


@dataclass
class Airflow:
    """A running ``airflow standalone`` and an authenticated REST client for it."""

    process: subprocess.Popen[bytes]
    client: httpx.Client
    home: Path
    log: Path
    #: The DAG the run/task helpers address.
    dag_id: str
    watch: StandaloneWatch = field(init=False)

    def __post_init__(self) -> None:
        self.watch = StandaloneWatch(self.process, self.log)

    def log_tail(self, chars: int = 6000) -> str:
        return self.watch.log_tail(chars)

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        return self.watch.wait_for(what, check, timeout)

    def run_state(self, run_id: str) -> str:
        response = self.client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()["state"]

    def task_states(self, run_id: str) -> dict[str, dict[str, Any]]:
        response = self.client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances")
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
            f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
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
        response = self.client.post(f"/api/v2/dags/{self.dag_id}/clearTaskInstances", json=body)
        assert response.status_code == 200, response.text
        return sorted(ti["task_id"] for ti in response.json()["task_instances"])


def standalone_env(pipelines_home: Path, airflow_home: Path, port: int, specs_dir: Path | None) -> dict[str, str]:
    """The environment of a test's ``airflow standalone``; ``specs_dir`` overrides the repo's specs."""
    return airflow_env(
        pipelines_home,
        airflow_home,
        port=port,
        # Only the runs this test triggers: no cron run for "yesterday" after unpausing.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        # One secret for every component, so task tokens validate at the API server.
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        # The scheduler's nap when a loop found nothing to do (default 1 s): a finished task's
        # successor is queued sooner, and a failed run marks one more level upstream_failed per loop.
        AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.3",
        # The DAG files never change while a test runs: parse each once, not again every 30 s
        # (a forked parse per file each time: ~0.7 CPU-s per 30 s on an idle standalone).
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="3600",
        **({"PIPELINES_SPECS_DIR": str(specs_dir)} if specs_dir else {}),
    )


@contextmanager
def standalone(
    pipelines_home: Path, tmp_path: Path, dag_id: str, *, specs_dir: Path | None = None
) -> Iterator[Airflow]:
    """``airflow standalone`` on a free loopback port, healthy, with a logged-in REST client.

    Its own AIRFLOW_HOME and SQLite DB under ``tmp_path``; the caller seeds
    ``pipelines_home``; ``specs_dir`` (e.g. `orchestration_specs`) replaces the
    repo's specs for every component.  Stopped (every child) on exit.
    """
    airflow_home = tmp_path / "airflow"
    airflow_home.mkdir()
    port = free_port()
    env = standalone_env(pipelines_home, airflow_home, port, specs_dir)
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
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=120
    )  # the API waits up to 60 s for the SQLite write lock
    server = Airflow(process, client, airflow_home, log, dag_id)
    try:
        server.wait_for("a healthy scheduler", lambda: healthy(client), STARTUP_TIMEOUT_S)
        passwords = airflow_home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        token = client.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code == 201, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        server.wait_for(f"DAG {dag_id}", lambda: client.get(f"/api/v2/dags/{dag_id}").status_code == 200, 180)
        yield server
    finally:
        client.close()
        stop_standalone(process)


def healthy(client: httpx.Client) -> bool:
    """Whether the API server answers and reports a healthy metadata DB and scheduler."""
    try:
        response = client.get("/api/v2/monitor/health")
    except httpx.TransportError:
        return False
    if response.status_code != 200:
        return False
    health = response.json()
    return all(health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler"))


def stop_standalone(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of standalone's session (it was started as a session leader); then reap it.

    A test's teardown needs no clean shutdown (the metadata DB and logs are thrown
    away), and standalone's own (SIGINT: each component terminated and awaited) took
    10-15 s of every module.  Killing the process group alone is not enough: Airflow's
    task supervisor puts each running task in a process group of its own, which would
    outlive it.  The session holds them all (nothing in Airflow calls ``setsid``).
    """
    for _ in range(5):  # again, for anything forked while the first signals were on their way
        members = session_members(process.pid)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    process.wait(timeout=30)


def session_members(session: int) -> list[int]:
    """The live (not zombie) processes whose session id is ``session`` (from /proc)."""
    return [pid for pid, _, session_id in _live_processes() if session_id == session]


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, session id) of every live (not zombie) process, from /proc/<pid>/stat."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the command name, which may hold spaces and parentheses: state, ppid, pgrp, session.
            state, ppid, _, session_id = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if state != "Z":
            yield int(stat.parent.name), int(ppid), int(session_id)
