"""Two runs at once: one runs, the others are told so; a killed run never blocks the vertical.

Real ``python -m pipelines`` processes against one data root and one SQLite
registry, on finance with a short window (30 days, 2 epochs) so a whole run
takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT

from .. import warm_cli

pytestmark = pytest.mark.slow

DS = "2026-11-27"
RUNS = 5
TABLES = ("model_versions", "decisions", "deployments", "run_leases")


@pytest.fixture
def home(tmp_path: Path, seeded_warehouse: Path) -> Path:
    home = tmp_path / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    spec = yaml.safe_load((PROJECT_ROOT / "verticals" / "finance.yaml").read_text())
    spec["window"] = {"train_days": 30, "holdout_days": 10, "validation_days": 8}
    spec["model"]["epochs"] = 2
    # The lease is under test, not the model: no sweep, and a 2-epoch model on a few dozen rows is too
    # weak for Platt calibration (refused as a training error), so the threshold stays fixed.
    spec["model"]["tuning"]["enabled"] = False
    spec["model"]["threshold"] = {"objective": "fixed"}
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "finance.yaml").write_text(yaml.safe_dump(spec))
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    env.update(PIPELINES_HOME=str(home), PIPELINES_SPECS_DIR=str(home.parent / "specs"))
    return env


def _start(home: Path, *args: str) -> warm_cli.WarmProcess | subprocess.Popen[str]:
    """``python -m pipelines run finance ...`` in its own process, forked warm (`tests.warm_cli`)."""
    return warm_cli.start(
        [sys.executable, "-m", "pipelines", "run", "finance", "--date", DS, *args], cwd=PROJECT_ROOT, env=_env(home)
    )


def _counts(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "registry.db") as db:
        return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}


def _bucket(home: Path) -> list[str]:
    root = home / "bucket"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_five_runs_at_once_one_runs_the_others_are_told_and_a_killed_one_blocks_nothing(home: Path):
    """Five runs at once: one runs, four are told.  Then a rerun killed mid-run leaves its lease behind,
    and the next run takes it over and duplicates nothing (the five's one run is the first night).
    """
    procs = [_start(home) for _ in range(RUNS)]
    results = [p.communicate(timeout=900) for p in procs]
    outcomes = [(p.returncode, out, err) for p, (out, err) in zip(procs, results, strict=True)]

    for _code, out, err in outcomes:
        assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    ran = [o for o in outcomes if o[0] == 0]
    refused = [o for o in outcomes if o[0] == 75]
    assert len(ran) == 1 and len(refused) == RUNS - 1, [(c, e[-500:]) for c, _, e in outcomes]
    for _, out, err in refused:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "already running" in errors[0]
        assert all(word in errors[0] for word in ("run id cli:", "pid ", "host ", f"date {DS}"))
        assert "BLOCKED (already running)" in out

    # The one run's outcome is all there is: one model, one decision, at most one pointer move, no lease left.
    counts = _counts(home)
    assert counts["model_versions"] == 1 and counts["decisions"] == 1 and counts["deployments"] <= 1
    assert counts["run_leases"] == 0
    report = json.loads((home / "runs" / "finance" / DS / "report.json").read_text())
    pointer = home / "bucket" / "finance" / "production.json"
    if report["deployed"]:
        assert json.loads(pointer.read_text())["version"] == report["model_version"]
    else:
        assert not pointer.exists()
    assert not list((home / "data" / "finance").glob("raw/*.parquet"))  # every extracted day was moved on

    # -- a killed run does not block the vertical (the one run above is the completed first run) ----
    counts, bucket = _counts(home), _bucket(home)

    rerun = _start(home)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _counts(home)["run_leases"] == 0:
        assert rerun.poll() is None, "the rerun ended before it was killed"
        time.sleep(0.05)
    os.kill(rerun.pid, signal.SIGKILL)  # no cleanup, no release: the lease stays behind
    rerun.communicate()
    with sqlite3.connect(home / "registry.db") as db:
        assert db.execute("select pid from run_leases").fetchall() == [(rerun.pid,)]

    again = _start(home)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert "took over the run lease" in err and f"pid {rerun.pid}" in err and "is gone" in err
    assert "Traceback" not in err
    # The killed rerun and its replacement duplicated nothing.
    assert _counts(home) == counts and _bucket(home) == bucket
    assert "finance" in out
