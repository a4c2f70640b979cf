"""Snapshots from separate processes: verticals in parallel, and one vertical twice at once.

Each worker is a fresh interpreter (as Airflow and the CLI run them), started
together behind a barrier file so their DVC work really overlaps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.config import PROJECT_ROOT

WORKER = """
import json, sys, time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.data.versioning import snapshot_window

import dvc.repo  # noqa: F401  (pay the imports before the barrier)
import scmrepo.git  # noqa: F401

base, vertical, ds, go, ready = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
settings = Settings(
    home=base / "home", specs_dir=base, expectations_dir=base, bucket_url=(base / "bucket").as_uri(),
    registry_url="sqlite://", dvc_remote=str(base / "dvc-remote"),
)
rng = np.random.default_rng(7)
frame = pd.DataFrame({"x": rng.normal(size=200_000), "k": rng.integers(0, 50, 200_000)})
ready.touch()
while not go.exists():  # everyone is ready: start together
    time.sleep(0.002)
version = snapshot_window(frame, vertical=vertical, ds=ds, settings=settings)
print(json.dumps(version.to_dict()))
"""


def run_together(tmp_path: Path, jobs: list[tuple[str, str]]) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    ready = [tmp_path / f"ready-{n}" for n in range(len(jobs))]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), vertical, ds, str(go), str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for (vertical, ds), flag in zip(jobs, ready, strict=True)
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(proc.poll() is None for proc in procs), "a worker died during start-up"
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"worker failed:\n{err}"
        assert "Unable to acquire lock" not in err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_verticals_snapshot_in_parallel_processes(tmp_path: Path) -> None:
    finance, health = run_together(tmp_path, [("finance", "2026-11-27"), ("health", "2026-11-27")])

    assert finance["created"] and health["created"]
    assert finance["tag"] == "finance@2026-11-27" and health["tag"] == "health@2026-11-27"
    # same frame in two interpreters: same bytes, same id, one object in the shared remote
    assert finance["id"] == health["id"]
    md5 = finance["md5"]
    assert (tmp_path / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).exists()


def test_one_vertical_twice_at_once_is_serialised(tmp_path: Path) -> None:
    first, second = run_together(tmp_path, [("finance", "2026-11-27"), ("finance", "2026-11-27")])

    # whichever ran second found the first one's tag: one snapshot, one no-op
    assert sorted([first["created"], second["created"]]) == [False, True]
    assert first["commit"] == second["commit"]
    repo = tmp_path / "home" / "dvc" / "finance"
    commits = subprocess.run(
        ["git", "-C", str(repo), "rev-list", "--count", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert commits == "2"  # the repo's initial commit + one snapshot
