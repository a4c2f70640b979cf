"""The embedded Airflow defaults: one machine, zero setup.

Every entry point that starts Airflow locally (`make run`, `make airflow`,
the integration tests) takes its environment from `embedded_env`, so they all
agree on where the metadata DB, the DAGs and the data root live.  Anything
already set in the environment wins: production configures the same keys
(PostgreSQL, CeleryExecutor, ...) without a code change.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from pipelines.config import PROJECT_ROOT

DEFAULT_PORT = 8080
#: `pipelines.orchestration.local_executor`, named by path so reading the defaults imports no Airflow.
PRELOADING_LOCAL_EXECUTOR = "pipelines.orchestration.local_executor.PreloadingLocalExecutor"

#: SQLite metadata DB: how long a connection waits for another process's write lock (s).  Python's
#: default of 5 s turns a busy scheduler on 2 loaded cores into API 500s ("Database error").
SQLITE_CONNECT_ARGS = {"timeout": 60}


def embedded_env(env: Mapping[str, str] | None = None, *, root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The Airflow settings of the embedded default (SQLite, a LocalExecutor, 2 cores).

    Values derived from others (the DB inside ``AIRFLOW_HOME``, the URLs from the
    port) follow what ``env`` already sets.
    """
    env = os.environ if env is None else env
    state = Path(env.get("PIPELINES_HOME") or root / ".state")
    home = Path(env.get("AIRFLOW_HOME") or state / "airflow")
    port = int(env.get("AIRFLOW__API__PORT") or DEFAULT_PORT)
    base_url = f"http://localhost:{port}"
    conn = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or f"sqlite:///{home / 'airflow.db'}"
    sqlite_only = (
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.SQLITE_CONNECT_ARGS",
        }
        if conn.startswith("sqlite")
        else {}
    )
    return {
        "PIPELINES_HOME": str(state),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Airflow's LocalExecutor, its workers forked with the pipeline stack imported (seconds per task).
        "AIRFLOW__CORE__EXECUTOR": PRELOADING_LOCAL_EXECUTOR,
        # 2 cores: the default would fork 32 workers.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        # New DAGs show up within seconds after `make dags`, not after 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # Each task's supervisor heartbeats every second (default 5): once a finished task has
        # closed its sockets, the supervisor waits up to this interval before it sees the process
        # exit, so with 5 s each task's successor started ~5 s late.  One loopback call per second
        # per running task (2 at most here) is nothing.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        **sqlite_only,
    }


def apply_embedded_defaults(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Fill ``env`` (default: ``os.environ``) with the embedded defaults it does not set yet.

    Must run before ``airflow`` is imported: Airflow reads its configuration once,
    at import time.
    """
    target = os.environ if env is None else env
    for key, value in embedded_env(target).items():
        target.setdefault(key, value)
    return target


def with_interpreter_on_path(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Put this interpreter's ``bin`` first on PATH: ``airflow standalone`` spawns ``airflow`` by name."""
    bin_dir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    return env
