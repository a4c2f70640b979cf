"""One vertical's nightly run through Airflow vs the same stages via the CLI (budget: <= 1.25x).

Both sides are what an operator types, each in a fresh interpreter (its imports,
Airflow's start-up and the metadata DB included):

* measured: ``python -m pipelines.orchestration run VERTICAL --date D`` (`make run`'s
  path: ``dag.test()`` on the embedded defaults, its own AIRFLOW_HOME);
* baseline: ``python -m pipelines run VERTICAL --date D`` (the same stages, no Airflow).

Each side has its own data root with a copy of one seeded warehouse, and is primed
with a first run (the backfill; for Airflow also the metadata DB's creation) of
the night before the first timed one, so every timed run is a nightly incremental
run of a new date.  The timed nights are interleaved (Airflow, CLI, Airflow, ...).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

from harness import ROOT, Config, Figure, median_pair, timed

VERTICAL = "finance"
LAST_NIGHT = date(2026, 11, 27)
RUN_TIMEOUT_S = 1800


def _env(home: Path) -> dict[str, str]:
    """The caller's environment minus its Airflow/pipelines settings, pointed at ``home``.

    The embedded defaults (``pipelines.orchestration.airflow_env``) fill in the rest, as
    for `make run`; the CLI side ignores the ``AIRFLOW_*`` ones.
    """
    from pipelines.orchestration.airflow_env import embedded_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINES_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # both sides read compiled bytecode, as a user's venv does
    env["PIPELINES_HOME"] = str(home)
    env["AIRFLOW_HOME"] = str(home / "airflow")
    env.update(embedded_env(env))
    return env


def _run(home: Path, *command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if proc.returncode != 0:
        output = proc.stdout[-1500:] + proc.stderr[-2500:]
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{output}")


def _airflow(home: Path, ds: str) -> None:
    _run(home, "pipelines.orchestration", "run", VERTICAL, "--date", ds)


def _cli(home: Path, ds: str) -> None:
    _run(home, "pipelines", "run", VERTICAL, "--date", ds)


def run(config: Config) -> list[Figure]:
    from pipelines.demo.seed import seed_warehouse

    warehouse = config.workdir / "airflow-warehouse.db"
    seed_warehouse(f"sqlite:///{warehouse}", verticals=[VERTICAL])
    nights = [str(LAST_NIGHT - timedelta(days=config.reps - 1 - i)) for i in range(config.reps)]
    primer = str(date.fromisoformat(nights[0]) - timedelta(days=1))
    sides = {"airflow": _airflow, "cli": _cli}
    homes: dict[str, Path] = {}
    for name, command in sides.items():
        home = config.workdir / f"airflow-bench-{name}"
        home.mkdir()
        shutil.copyfile(warehouse, home / "warehouse.db")
        command(home, primer)  # the first run: backfill (and Airflow's metadata DB), not timed
        homes[name] = home
    queue = {name: iter(nights) for name in sides}

    def night(name: str) -> float:
        ds = next(queue[name])
        return timed(lambda: sides[name](homes[name], ds))

    m, b, samples = median_pair(config.reps, lambda: night("airflow"), lambda: night("cli"))
    return [
        Figure(
            name=f"nightly run through Airflow vs the CLI ({VERTICAL})",
            measured=m,
            baseline=b,
            budget=1.25,
            detail=f"each a fresh process; nights {nights[0]}..{nights[-1]} after a first run of {primer}",
            samples=samples,
        ),
        airflow_floor(config, homes["airflow"], cli=b, nights=len(nights)),
    ]


#: A DAG of as many tasks as a vertical's, each doing nothing, run as `make run` runs a DAG.
NOOP_DAG = """
import sys
from datetime import datetime, timezone

from airflow.sdk import DAG, task

with DAG("bench_noop", schedule=None, catchup=False) as noop:
    previous = None
    for name in {tasks!r}:
        step = task(task_id=name)(lambda: None)()
        if previous is not None:
            previous >> step
        previous = step

if __name__ == "__main__":
    run = noop.test(logical_date=datetime.fromisoformat(sys.argv[1]).replace(tzinfo=timezone.utc))
    sys.exit(0 if str(run.state) == "success" else 1)
"""
#: The stages of a vertical's DAG (`pipelines.orchestration.dag_factory`).
STAGES = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")


def airflow_floor(config: Config, home: Path, *, cli: float, nights: int) -> Figure:
    """The floor of the figure above: what Airflow alone costs a process, against what 1.25x allows it.

    An 8-task DAG whose tasks do nothing, through ``dag.test()`` in a fresh interpreter on
    the measured side's metadata DB and embedded defaults (its own DAG folder): importing
    Airflow, putting the DAG in the DB, building the in-process Execution API, and running
    eight tasks through the task runner.  The budget leaves Airflow 0.25x the CLI's night;
    where this row's ratio is over 1, no ``dag.test()`` run of one vertical in its own
    process can meet the budget, whatever the stages cost.
    """
    folder = config.workdir / "noop-dags"  # the DAG must be in the DAG folder to be serialised
    folder.mkdir()
    script = folder / "bench_noop_dag.py"
    script.write_text(NOOP_DAG.format(tasks=STAGES))
    env = {**_env(home), "AIRFLOW__CORE__DAGS_FOLDER": str(folder)}
    dates = iter(str(LAST_NIGHT + timedelta(days=1 + i)) for i in range(nights))

    def noop() -> float:
        ds = next(dates)

        def run() -> None:
            proc = subprocess.run(
                [sys.executable, str(script), ds], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the no-op DAG failed ({proc.returncode}):\n{proc.stderr[-2500:]}")

        return timed(run)

    samples = [noop() for _ in range(nights)]
    fixed, allowance = statistics.median(samples), 0.25 * cli
    return Figure(
        name="  floor: Airflow alone vs the 0.25x of the CLI it may add",
        measured=fixed,
        baseline=allowance,
        detail=f"an {len(STAGES)}-task no-op DAG through dag.test() in a fresh process (its interpreter start "
        f"included); the budget leaves Airflow {allowance:.2f} s"
        + ("; the 1.25x budget is below it" if fixed > allowance else ""),
        samples={"noop_dag": samples},
    )
