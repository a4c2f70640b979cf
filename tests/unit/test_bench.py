"""A smoke run of the benchmark harness (`make bench BENCH_ARGS=--quick`, two cheap suites).

Not a timing test: it checks that the harness runs the project's own code against
its baselines and records ratios, medians, cores and versions, so `make bench`
does not rot between the (manual) full runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

from .. import warm_cli

pytestmark = pytest.mark.slow


def test_quick_harness_writes_ratios_against_baselines_with_the_machine(tmp_path: Path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    # Forked from the tests' warm interpreter (`tests.warm_cli`): the suites time the work, not imports.
    argv = [sys.executable, "benchmarks/harness.py", "--quick", "--only", "dvc", "train", "--json", str(out)]
    proc = warm_cli.run(argv, cwd=PROJECT_ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["errors"] == {}
    assert result["machine"]["cores"] >= 1 and result["machine"]["versions"]["torch"]
    interpreter = Path(result["machine"]["python_executable"])
    assert interpreter.is_file() and not interpreter.is_relative_to(sys.prefix)  # the build, not the venv's link
    names = [f["name"] for f in result["figures"]]
    assert any(n.startswith("DVC snapshot of a new window") for n in names)
    assert any(n.startswith("DVC snapshot of an unchanged window") for n in names)
    assert any(n.startswith("Lightning fit vs plain PyTorch") for n in names)
    for figure in result["figures"]:
        assert figure["measured"] > 0 and figure["baseline"] > 0
        assert figure["ratio"] == pytest.approx(figure["measured"] / figure["baseline"])
        assert figure["verdict"] in ("ok", "OVER", "-")
    # Beside an over-budget figure, its floor: the tool's own cost alone, against the same baseline.
    [floor] = [f for f in result["figures"] if f["name"].strip().startswith("floor: DVC's own add")]
    assert floor["budget"] is None and "no serialising, push or commit" in floor["detail"]
    train = next(f for f in result["figures"] if f["name"].startswith("Lightning"))
    assert "weights bit-identical: True" in train["detail"]  # the baseline does the same work
    assert "ratio" in proc.stdout.splitlines()[1] and "verdict" in proc.stdout.splitlines()[1]
