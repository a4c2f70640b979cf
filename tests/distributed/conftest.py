"""The production topology for real (`make stack`): fixtures for the distributed tier.

One stack per module: Airflow api-server, scheduler, dag-processor, triggerer
and two Celery workers (Redis broker, PostgreSQL metadata DB and result
backend), S3 (SeaweedFS) and SMTP (aiosmtpd) on loopback, the registry and
the warehouse in PostgreSQL.  Each worker's ``PIPELINES_HOME`` starts empty.
The specs are short-window copies (30 days, a few epochs, a gate any model
passes) so a run takes a minute, not ten; the path through the code is the
nightly one.  Airflow's test-only settings (heartbeats, scheduler naps, a
cluster policy for retry delays) are in ``live_stack``'s ``extra_env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from pipelines.config import PROJECT_ROOT
from pipelines.orchestration.stack import Stack, StackConfig, free_ports

from ..conftest import POSTGRES_URL, require_service

#: Holds the test stack's ``airflow_local_settings.py`` (a cluster policy: shorter retry delays).
AIRFLOW_SETTINGS = Path(__file__).parent / "airflow_settings"
REDIS_URL = os.environ.get("PIPELINES_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_TIMEOUT_S = 600
#: Each vertical's model settings in the stack.  The two runs at once train a few epochs.  The run
#: whose worker is killed trains every one of its many epochs (no early stopping): its worker is
#: killed once a checkpoint is in S3, with most epochs (a few seconds of training) still to go.
MODEL = {
    "finance": {"epochs": 2},
    "healthcare": {"epochs": 2},
    "education": {"epochs": 80, "early_stopping": None},
    "manufacturing": {"epochs": 2},
}


def short_spec(name: str, model: dict[str, Any]) -> dict[str, Any]:
    """The vertical's spec with a 30-day window, ``model`` settings, no sweep, and a gate every model passes.

    The gate is not under test here: the deployment is, so the first model of
    each vertical must be promoted.
    """
    spec = yaml.safe_load((PROJECT_ROOT / "verticals" / f"{name}.yaml").read_text())
    spec["window"] = {"train_days": 30, "holdout_days": 10, "validation_days": 8}
    spec["model"].update(model)
    spec["model"]["tuning"] = {"enabled": False}
    spec["model"]["threshold"] = {"objective": "fixed"}
    spec["gate"] = {
        "thresholds": {"accuracy": 0.0, "recall": 0.0, "f1": 0.0},
        "baselines": {"majority": None, "logistic": None},
        "min_holdout_rows": 1,
        "first_model": "promote_if_thresholds",
    }
    return spec


def _fresh_databases(server: str, prefix: str) -> None:
    """Drop the stack's databases from an earlier session: every session starts from empty ones."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for suffix in ("", "_registry", "_warehouse"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{prefix}{suffix}" WITH (FORCE)'))
    finally:
        engine.dispose()


@dataclass
class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, persisting to an append-only file.

    Its own, so a test may restart it without disturbing anyone else's broker;
    with persistence, as a production broker has, so queued messages survive.
    """

    folder: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*args, "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer on {self.url}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # its clean shutdown: the append-only file is complete
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class LiveStack:
    """A running stack and a logged-in REST client for its API server."""

    stack: Stack
    client: httpx.Client
    #: The broker when the test runs its own (``redis-server`` installed); None on a shared one.
    redis: PrivateRedis | None = None

    @property
    def config(self) -> StackConfig:
        return self.stack.config

    def sql(self, database_suffix: str, query: str, **params: Any) -> list[Any]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.config.db_url(database_suffix))
        try:
            with engine.begin() as conn:  # committed: a planted bad day must be seen by the workers
                return list(conn.execute(text(query), params).all())
        finally:
            engine.dispose()

    def trigger(self, dag_id: str, ds: str) -> str:
        response = self.client.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": f"{ds}T00:00:00Z", "conf": {}}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        response = self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return {ti["task_id"]: ti for ti in response.json()["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of one task (state, hostname), from the REST API."""
        response = self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        response.raise_for_status()
        return sorted(response.json()["task_instances"], key=lambda t: t["try_number"])

    def wait_until(self, what: str, check: Any, timeout: float = RUN_TIMEOUT_S, every: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.stack.processes.items() if p.poll() is not None and n not in self.killed]
            if dead:
                pytest.fail(f"{', '.join(dead)} exited waiting for {what}:\n{self.stack.log_tail(dead[0])}")
            result = check()
            if result:
                return result
            time.sleep(every)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.stack.log_tail('scheduler')}")

    def wait_for_run(self, dag_id: str, run_id: str) -> str:
        return str(
            self.wait_until(
                f"{dag_id} {run_id}",
                lambda: (s := self.run_state(dag_id, run_id)) in ("success", "failed") and s,
            )
        )

    def kill(self, worker: str) -> None:
        self.killed.add(worker)
        self.stack.kill(worker)

    def __post_init__(self) -> None:
        self.killed: set[str] = set()

    def mails(self) -> list[Any]:
        from email import message_from_bytes, policy

        new = self.config.maildir / "new"
        return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(new.iterdir())]


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The whole topology on free loopback ports, fresh databases, an empty broker; stopped afterwards.

    The broker is a ``redis-server`` of its own when one is installed (CI), else
    the machine's Redis at ``PIPELINES_TEST_REDIS_URL`` (that database is flushed).
    """
    require_service("PostgreSQL", "127.0.0.1", 5432)
    private: PrivateRedis | None = None
    if shutil.which("redis-server"):
        private = PrivateRedis(tmp_path_factory.mktemp("redis"))
        private.start()
        broker_url = private.url
    else:
        shared = urlsplit(REDIS_URL)
        require_service("Redis", shared.hostname or "127.0.0.1", shared.port or 6379)
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()  # no message of an earlier, killed session
        broker_url = REDIS_URL
    pg = urlsplit(POSTGRES_URL)
    server = f"{pg.scheme}://{pg.netloc}"
    prefix = f"{pg.path.strip('/') or 'test'}_stack"
    _fresh_databases(server, prefix)

    root = tmp_path_factory.mktemp("stack")
    specs = root / "specs"
    specs.mkdir()
    for name, model in MODEL.items():
        (specs / f"{name}.yaml").write_text(yaml.safe_dump(short_spec(name, model)))
    base = free_ports(8, consecutive=True)[0]  # the stack's ports are offsets of one base
    config = StackConfig(
        root=root,
        api_port=base,
        s3_port=base + 1,
        smtp_port=base + 2,
        log_port=base + 3,
        workers=2,
        postgres=server,
        database=prefix,
        broker_url=broker_url,
        specs_dir=specs,
        extra_env={
            # Only the runs the tests trigger: no cron run for "yesterday".
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # A killed worker's task is noticed in seconds, not the default 5 minutes: each task's
            # supervisor heartbeats every second (default 5), so 10 s is ten missed beats; checked
            # every 2 s.  The 1 s interval also bounds the supervisor's last wait: once a finished
            # task has closed its sockets, it sleeps up to this interval before it notices the
            # process has exited and the worker takes the next task (with 5 s, ~5 s after most tasks).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            # The scheduler's nap when a loop found nothing to do (default 1 s): a finished task's
            # successor is queued sooner, and a failed run marks one more level upstream_failed per loop.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.3",
            # The DAG files never change while the module runs: each parsed once, not every 30 s.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            # airflow_local_settings.py: a retry waits seconds, not the DAGs' minute (see that file).
            "PYTHONPATH": os.pathsep.join(p for p in (str(AIRFLOW_SETTINGS), os.environ.get("PYTHONPATH")) if p),
        },
    )
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        if private is not None:
            cleanup.callback(private.stop)
        stack = cleanup.enter_context(Stack(config))
        print(f"\nstack up in {time.monotonic() - started:.0f} s ({root})")
        password = json.loads((root / "passwords.json").read_text())["admin"]
        client = httpx.Client(base_url=config.api_url, timeout=60)
        token = client.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code == 201, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        live = LiveStack(stack, client, private)
        for dag_id in MODEL:
            live.wait_until(f"DAG {dag_id} parsed", lambda d=dag_id: client.get(f"/api/v2/dags/{d}").status_code == 200)
        train = client.get("/api/v2/dags/education/tasks/train").json()
        delay = train["retry_delay"]
        assert (delay["days"], delay["seconds"]) == (0, 1), (
            f"the stack's cluster policy ({AIRFLOW_SETTINGS}) did not apply: retry_delay {delay}"
        )
        try:
            yield live
        finally:
            client.close()
            # The object store's data dies with this tmp folder, so it is killed, not stopped: on
            # SIGTERM weed's filer waits for requests still open (up to 15 s; 11-12 s after the
            # worker-kill test).  Every run has ended by now; the other components still stop gracefully.
            stack.kill("s3")
