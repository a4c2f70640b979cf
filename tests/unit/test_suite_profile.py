"""`make test-profile`: the suite's time per module and tier, the CPU of what tests start included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.config import PROJECT_ROOT

from ..suite_profile import summarise, table


def _rec(node: str, worker: str, wall: tuple[float, float], cpu: tuple[float, float]) -> dict:
    return {"id": node, "worker": worker, "t0": wall[0], "t1": wall[1], "cpu0": cpu[0], "cpu1": cpu[1]}


def test_records_add_up_per_module_worker_and_tier_most_cpu_first():
    records = [
        _rec("tests/unit/test_a.py::test_one", "gw0", (100.0, 101.0), (10.0, 11.5)),
        _rec("tests/unit/test_a.py::test_two", "gw0", (101.0, 103.0), (11.5, 12.0)),
        _rec("tests/integration/test_b.py::test_x[p]", "gw1", (100.0, 110.0), (10.0, 30.0)),
        _rec("tests/unit/test_c.py::test_z", "gw1", (110.0, 111.0), (30.0, 30.25)),
    ]

    summary = summarise(records, start={"t": 99.0, "cpu": 9.0}, end={"t": 112.0, "cpu": 40.0})

    assert [(r.module, r.worker, r.tests) for r in summary.modules] == [
        ("tests/integration/test_b.py", "gw1", 1),
        ("tests/unit/test_a.py", "gw0", 2),
        ("tests/unit/test_c.py", "gw1", 1),
    ]
    a = summary.modules[1]
    assert (a.wall_s, a.cpu_s, a.first_start, a.last_end) == (3.0, 2.0, 100.0, 103.0)
    assert summary.tiers() == {"integration": (10.0, 20.0), "unit": (4.0, 2.25)}
    assert (summary.wall_s, summary.cpu_s) == (13.0, 31.0)
    assert summary.worker_end_s == {"gw0": 4.0, "gw1": 12.0}
    assert summary.busy_fraction == 31.0 / (13.0 * summary.cores)
    lines = table(summary)
    assert lines[0].startswith("suite profile: 13 s wall, 31 CPU-s busy") and "gw1 +12 s" in lines[0]
    assert any(line.startswith("tests/integration/test_b.py") and line.endswith("20.0") for line in lines)


def test_a_test_run_counts_the_cpu_of_the_processes_it_started(tmp_path: Path):
    """A test whose child process burns CPU is charged that CPU (``time`` of pytest would not see it)."""
    folder = tmp_path / "profile"
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            sys.path.insert(0, {str(PROJECT_ROOT / "tests")!r})
            from suite_profile import SuiteProfile

            def pytest_configure(config):
                config.pluginmanager.register(SuiteProfile(Path({str(folder)!r})), "suite-profile")
            """
        )
    )
    burn = "import time\nwhile time.process_time() < 0.5:\n    pass\n"
    child = f"subprocess.run([sys.executable, '-c', {burn!r}], check=True)"
    (tmp_path / "test_burn.py").write_text(f"import subprocess, sys\n\ndef test_child_burns():\n    {child}\n")
    (tmp_path / "test_idle.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(0.2)\n")

    # Not this run's: an xdist worker's PYTEST_XDIST_WORKER would make the inner run a worker without a controller.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PIPELINES_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((folder / "summary.json").read_text())
    rows = {Path(row["module"]).name: row for row in summary["modules"]}
    assert rows["test_burn.py"]["tests"] == 1 and rows["test_burn.py"]["cpu_s"] >= 0.45
    assert rows["test_idle.py"]["wall_s"] >= 0.2
    assert summary["cpu_s"] >= rows["test_burn.py"]["cpu_s"] and summary["worker_end_s"].keys() == {"main"}
    assert "suite profile:" in proc.stdout and "test_burn.py" in proc.stdout
