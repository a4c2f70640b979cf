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
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.config import PROJECT_ROOT
from pipelines.orchestration.airflow_env import embedded_env, with_interpreter_on_path

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
REGISTRY_TABLES = ("model_versions", "decisions", "deployments")


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
    env.update(embedded_env(env))
    env.update(extra)
    with_interpreter_on_path(env)
    return env


@cache
def migrated_airflow_home() -> Path:
    """One metadata DB per test session (``airflow db migrate`` takes seconds)."""
    home = Path(tempfile.mkdtemp(prefix="pipelines-test-airflow-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    proc = subprocess.run(
        [AIRFLOW_BIN, "db", "migrate"],
        env=airflow_env(home / "unused-state", home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return home


@cache
def _seeded_warehouse() -> Path:
    from pipelines.seed import seed_warehouse

    folder = Path(tempfile.mkdtemp(prefix="pipelines-test-seed-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    seed_warehouse(f"sqlite:///{folder / 'warehouse.db'}")
    return folder / "warehouse.db"


def seed_home(home: Path) -> Path:
    """Give ``home`` its own copy of the demo warehouse (seeded once per session)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_seeded_warehouse(), home / "warehouse.db")
    return home / "warehouse.db"


@dataclass
class NightlyResult:
    returncode: int
    rows: dict[str, dict[str, Any]]
    stdout: str
    stderr: str


def run_nightly(
    pipelines_home: Path, *args: str, airflow_home: Path | None = None, timeout: int = 900
) -> NightlyResult:
    """``python -m pipelines.orchestration run ARGS`` (what `make run` calls), via dag.test()."""
    summary = Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.orchestration", "run", *args, "--summary-json", str(summary)],
            env=airflow_env(pipelines_home, airflow_home or migrated_airflow_home()),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
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
