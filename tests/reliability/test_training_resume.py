"""Fault injection: a training task killed mid-fit resumes from its checkpoint.

The retry must continue from ``last.ckpt`` (not start over) and end with the
same model version and bit-identical weights as a run that was never killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
DS = "2026-11-27"


def _env(home: Path, specs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({"PIPELINES_HOME": str(home), "PIPELINES_SPECS_DIR": str(specs)})
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args, "finance", "--date", DS],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(env: dict[str, str], *stages: str) -> None:
    for stage in stages:
        proc = _cli(env, stage)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


@pytest.fixture
def long_training_specs(tmp_path: Path) -> Path:
    """The finance spec with enough epochs that a kill lands mid-fit."""
    specs = tmp_path / "specs"
    specs.mkdir()
    text = (PROJECT_ROOT / "verticals" / "finance.yaml").read_text()
    lines = [("  epochs: 400" if line.strip().startswith("epochs:") else line) for line in text.splitlines()]
    (specs / "finance.yaml").write_text("\n".join(lines) + "\n")
    return specs


def _prepared_home(root: Path, seeded_warehouse: Path, specs: Path) -> dict[str, str]:
    home = root / "state"
    home.mkdir(parents=True)
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    env = _env(home, specs)
    _run(env, "extract", "validate", "snapshot")
    return env


def test_killed_training_resumes_to_identical_weights(tmp_path, seeded_warehouse, long_training_specs):
    killed_env = _prepared_home(tmp_path / "killed", seeded_warehouse, long_training_specs)
    home = Path(killed_env["PIPELINES_HOME"])

    proc = _cli(killed_env, "train")
    checkpoints = home / "checkpoints" / "finance"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/last.ckpt")) and time.monotonic() < deadline:
        assert proc.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.05)
    time.sleep(0.5)  # a few more epochs
    proc.send_signal(signal.SIGKILL)  # no cleanup, like a lost worker
    proc.wait()
    assert not list((home / "models" / "finance").glob("*/model.json")), "model finished before the kill"

    _run(killed_env, "train")
    record = json.loads((home / "runs" / "finance" / DS / "train.json").read_text())
    assert record["resumed_from_checkpoint"] is True
    resumed = Path(record["model_dir"]) / "weights.pt"

    clean_env = _prepared_home(tmp_path / "clean", seeded_warehouse, long_training_specs)
    _run(clean_env, "train")
    clean = json.loads((Path(clean_env["PIPELINES_HOME"]) / "runs" / "finance" / DS / "train.json").read_text())

    assert clean["model_version"] == record["model_version"]
    assert clean["resumed_from_checkpoint"] is False
    digest = hashlib.sha256
    assert (
        digest(resumed.read_bytes()).hexdigest()
        == digest((Path(clean["model_dir"]) / "weights.pt").read_bytes()).hexdigest()
    )
