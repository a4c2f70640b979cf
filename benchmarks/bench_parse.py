"""DAG file parse time, and which heavy modules a parse imports (budget: 0.3 s, none).

Each DAG file is parsed in a fresh interpreter that has already imported
``airflow.sdk`` (what every parse pays anyway); the baseline is the same for a
one-task DAG file with no project code.  Parsing runs in a subprocess so one
file's imports never make the next one look fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from harness import ROOT, Config, Figure, child_json

HEAVY = ("torch", "lightning", "pytorch_lightning", "great_expectations", "dvc", "sklearn", "onnxruntime")
PARSE_BUDGET_S = 0.3

_PROBE = """
import importlib.util, json, sys, time
import airflow.sdk  # noqa: F401 - paid by every parse, not by the DAG file
before = set(sys.modules)
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - start
heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before if m.split(".")[0] in json.loads(sys.argv[2])})
print(json.dumps({"seconds": seconds, "heavy": heavy}))
"""

_TRIVIAL = """
from airflow.sdk import dag, task

@dag(schedule=None, catchup=False)
def trivial():
    @task
    def one():
        return 1
    one()

trivial()
"""


def _env(airflow_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".state" / "pycache"))
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
    )
    return env


def _parse(path: Path, env: dict[str, str]) -> dict:
    return child_json(_PROBE, str(path), json.dumps(HEAVY), env=env, what=f"parsing {path.name}", timeout=300)


def run(config: Config) -> list[Figure]:
    files = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
    if config.quick:
        files = files[:1]
    reps = max(config.reps, 1)
    figures = []
    with tempfile.TemporaryDirectory(dir=config.workdir) as tmp:
        env = _env(Path(tmp) / "airflow")
        trivial = Path(tmp) / "trivial_dag.py"
        trivial.write_text(_TRIVIAL)
        for path in files:
            measured, baseline, heavy = [], [], set()
            for _ in range(reps):
                result = _parse(path, env)
                measured.append(result["seconds"])
                heavy.update(result["heavy"])
                baseline.append(_parse(trivial, env)["seconds"])
            m, b = sorted(measured)[len(measured) // 2], sorted(baseline)[len(baseline) // 2]
            verdict = "ok" if m <= PARSE_BUDGET_S and not heavy else "OVER"
            figures.append(
                Figure(
                    name=f"parse dags/{path.name} vs a one-task DAG",
                    measured=m,
                    baseline=b,
                    detail=f"absolute budget {PARSE_BUDGET_S} s: {verdict}; heavy modules at parse: "
                    f"{', '.join(sorted(heavy)) or 'none'}",
                    samples={"measured": measured, "baseline": baseline},
                )
            )
    return figures
