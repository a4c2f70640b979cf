"""`make test-profile`: the suite's time per module and tier, the CPU of what tests start included."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.config import PROJECT_ROOT

from ..process_cpu import OTHER, PYTEST, UNATTRIBUTED, ProcessLedger, ProcessRow, kind_of
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
    # Which interpreter build ran it: two builds of one version differ by ~10 % (docs/benchmarks.md).
    assert f"Python {platform.python_version()} ({os.path.realpath(sys.executable)})" in lines[0]
    assert any(line.startswith("tests/integration/test_b.py") and line.endswith("20.0") for line in lines)


def test_command_lines_are_charged_to_their_kind():
    """Command lines as the suite's processes show them in /proc (forked children keep their parent's)."""
    venv = "/work/x/.venv/bin"
    cases = {
        "[pytest-xdist running] tests/distributed/test_celery_topology.py::test_two_verticals": PYTEST,
        f"{venv}/python -m pytest -p no:cacheprovider tests/unit": PYTEST,
        f"{venv}/python -m pipelines.orchestration run all --date 2026-11-27 --summary-json /tmp/x.json": (
            "pipelines runs (CLI, dag.test, warm forks)"
        ),
        f"{venv}/python -c from multiprocessing.forkserver import main; main(16, 18, ['torch'])": (
            "pipelines runs (CLI, dag.test, warm forks)"
        ),
        f"{venv}/python {venv}/airflow celery worker -H worker-2@%h --concurrency 1": ("Airflow Celery workers"),
        "airflow worker -- LocalExecutor: 01a23ead-4189-7de1-9ecc-850149f314b1": (
            "Airflow task processes (LocalExecutor and Celery)"
        ),
        f"{venv}/python {venv}/airflow scheduler": "Airflow scheduler",
        f"{venv}/python {venv}/airflow api-server --port 14033": "Airflow API server",
        f"{venv}/python {venv}/airflow dag-processor": "Airflow dag-processor",
        f"{venv}/python {venv}/airflow standalone": "Airflow, other (standalone, log servers, db migrate)",
        f"{venv}/weed mini -dir=/tmp/pytest-of-root/pytest-0/popen-gw0/seaweedfs0/data -ip=127.0.0.1": (
            "S3 server (weed)"
        ),
        "/usr/lib/chromium/chromium --headless --user-data-dir=/tmp/pytest-of-root/x": "Chromium",
        "postgres: 16/main: postgres test 127.0.0.1(51234) idle": "PostgreSQL",
        "": OTHER,
    }
    assert {line: kind_of(line) for line in cases} == cases


def test_a_process_running_before_the_first_reading_is_charged_only_what_it_spends_after():
    ledger = ProcessLedger()
    ledger.observe(10, 500, "/usr/bin/redis-server 127.0.0.1:6379", ticks=900)  # running long before
    ledger.observe(11, 501, "postgres: walwriter", ticks=40)  # before too, and idle throughout
    ledger.reading_done()
    ledger.observe(10, 500, "/usr/bin/redis-server 127.0.0.1:6379", ticks=950)
    ledger.observe(11, 501, "postgres: walwriter", ticks=40)
    ledger.observe(12, 700, "python -m pipelines run finance", ticks=300)  # started during the run
    ledger.observe(13, 710, "python -c import sys;exec(eval(sys.stdin.readline()))", ticks=20)
    ledger.reading_done()
    ledger.observe(12, 701, "python -m pipelines run finance", ticks=5)  # pid 12 reused by a new process
    ledger.observe(13, 710, "[pytest-xdist running] tests/unit/test_a.py::test_one", ticks=120)  # titled later

    assert ledger.by_kind(100.0) == {
        "pipelines runs (CLI, dag.test, warm forks)": (2, 3.05),
        PYTEST: (1, 1.2),
        "Redis": (1, 0.5),
    }
    # The single processes that spent the most, each under the command line it showed last.
    assert ledger.largest(100.0, top=3) == [
        ProcessRow("python -m pipelines run finance", "pipelines runs (CLI, dag.test, warm forks)", 3.0),
        ProcessRow("[pytest-xdist running] tests/unit/test_a.py::test_one", PYTEST, 1.2),
        ProcessRow("/usr/bin/redis-server 127.0.0.1:6379", "Redis", 0.5),
    ]
    # Every process that spent CPU, for summary.json (an idle one is not listed).
    everything = ledger.largest(100.0, top=None)
    assert [row.cpu_s for row in everything] == [3.0, 1.2, 0.5, 0.05]  # the reused pid's second process too
    assert "postgres: walwriter" not in {row.cmdline for row in everything}
    # The printed table shows the first ones only; summary.json keeps them all.
    summary = summarise([], start={"t": 0.0, "cpu": 0.0}, end={"t": 10.0, "cpu": 5.0}, largest=everything)
    lines = table(summary, top_processes=2)
    printed = lines[next(i for i, line in enumerate(lines) if line.startswith("largest processes")) + 1 :]
    assert [line.split()[0] for line in printed] == ["python", "[pytest-xdist"]
    assert len(summary.to_dict()["largest_processes"]) == 4


def test_a_test_run_counts_the_cpu_of_the_processes_it_started(tmp_path: Path):
    """A test whose child process burns CPU is charged that CPU (``time`` of pytest would not see it)."""
    folder = tmp_path / "profile"
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import sys, types
            from pathlib import Path
            # The project's tests folder as a package of another name (a site-packages
            # distribution ships a top-level `tests`), so suite_profile's relative imports work.
            package = types.ModuleType("project_tests")
            package.__path__ = [{str(PROJECT_ROOT / "tests")!r}]
            sys.modules["project_tests"] = package
            from project_tests.suite_profile import SuiteProfile

            def pytest_configure(config):
                profile = SuiteProfile(Path({str(folder)!r}), sample_every=0.1)
                config.pluginmanager.register(profile, "suite-profile")
            """
        )
    )
    # The child idles a second after burning: the sampler reads a process only while it lives, so
    # without that pause the CPU it spent after the last reading (up to an interval, more on a
    # loaded machine) would fall to the unattributed remainder and the check below would flake.
    burn = "import time\nwhile time.process_time() < 0.5:\n    pass\ntime.sleep(1.0)\n"
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
    # The controller's sampler charged the child's CPU to its kind (a plain `python -c`), the
    # inner pytest's own to pytest, and the rest of the busy total is the unattributed remainder.
    kinds = {kind: row["cpu_s"] for kind, row in summary["process_kinds"].items()}
    assert kinds["other Python"] >= 0.45 and kinds[PYTEST] > 0, kinds
    assert abs(sum(kinds.values()) - summary["cpu_s"]) < 0.01 or kinds[UNATTRIBUTED] == 0, kinds
    assert "process kind" in proc.stdout and "other Python" in proc.stdout
    # The child is listed by its own command line among the run's largest processes.
    [burner] = [row for row in summary["largest_processes"] if "process_time() < 0.5" in row["cmdline"]]
    assert burner["kind"] == "other Python" and burner["cpu_s"] >= 0.45
    assert "largest processes" in proc.stdout
