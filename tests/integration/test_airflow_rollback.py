"""Rollback from the Airflow UI's trigger form: the ``rollback_model`` DAG, run by Airflow."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

from .. import warm_cli
from ..conftest import GoldenHomes
from .airflow_support import airflow_env, migrated_airflow_home, pointer, run_nightly
from .conftest import DS, airflow_nightly, airflow_nightly_specs

pytestmark = [pytest.mark.airflow, pytest.mark.slow]
#: SECOND is a Saturday: finance's spec sweeps its tuning every Sunday (2026-11-29), which a
#: second deployment to roll back from does not need.
FIRST, SECOND = DS, "2026-11-28"


def rollback_via_airflow(home: Path, specs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipelines.orchestration rollback ARGS`` in its own process, forked warm (`tests.warm_cli`)."""
    return warm_cli.run(
        [sys.executable, "-m", "pipelines.orchestration", "rollback", *args],
        env=airflow_env(home, migrated_airflow_home(), PIPELINES_SPECS_DIR=str(specs)),
        cwd=PROJECT_ROOT,
        timeout=600,
    )


def last_deployment(home: Path) -> tuple[str, str, str]:
    with sqlite3.connect(home / "registry.db") as db:
        return db.execute(
            "select action, model_version, actor from deployments where vertical = 'finance' order by seq desc limit 1"
        ).fetchone()


def test_rollback_dag_restores_the_previous_version_records_it_and_notifies(golden: GoldenHomes):
    home = airflow_nightly(golden)  # every vertical's night FIRST through Airflow: finance's first champion
    specs = airflow_nightly_specs(golden)  # the golden night's, for every run on its data root
    first = pointer(home, "finance")["version"]
    forced = run_nightly(
        home, "finance", "--date", SECOND, "--force-reason", "test: make a second deployment", specs_dir=specs
    )
    assert forced.returncode == 0, forced.stderr[-4000:]
    second = pointer(home, "finance")["version"]
    assert second != first

    refused = rollback_via_airflow(home, specs, "finance", "--reason", "   ")
    assert refused.returncode == 2 and "a rollback needs a reason" in refused.stderr  # refused before Airflow runs
    assert pointer(home, "finance")["version"] == second  # nothing moved

    done = rollback_via_airflow(home, specs, "finance", "--reason", "recall complaints from the review team")
    assert done.returncode == 0, done.stderr[-4000:]
    assert pointer(home, "finance")["version"] == first
    action, version, actor = last_deployment(home)
    assert (action, version) == ("rollback", first) and actor.startswith("airflow:")
    notices = sorted((home / "outbox").glob("*rollback*"))
    assert len(notices) == 1
    body = notices[0].read_text()
    assert second in body and first in body and "recall complaints" in body
