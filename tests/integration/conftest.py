"""Integration fixtures: a seeded demo warehouse, and the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

#: A logical date inside the demo span with a full year of history before it.
DS = "2026-11-27"


@dataclass
class Cli:
    """Runs ``python -m pipelines`` in a subprocess against one data root."""

    home: Path
    extra_env: dict[str, str]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PIPELINES_HOME"] = str(self.home)
        env.update(self.extra_env)
        return env

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines", *args],
            cwd=PROJECT_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"`pipelines {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    def record(self, vertical: str, ds: str, stage: str) -> dict:
        return json.loads((self.home / "runs" / vertical / ds / f"{stage}.json").read_text())


@pytest.fixture
def cli(tmp_path: Path, seeded_warehouse: Path) -> Cli:
    """A fresh data root holding its own copy of the seeded warehouse."""
    home = tmp_path / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    return Cli(home, {})
