"""The embedded default's executor: Airflow's LocalExecutor whose workers start with the stack in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.config import PROJECT_ROOT
from pipelines.orchestration.airflow_env import PRELOADING_LOCAL_EXECUTOR, embedded_env

# A fresh interpreter, as the scheduler is: which executor Airflow loads from the embedded defaults,
# whether `airflow standalone` keeps it (a local one), and which shared libraries its forked workers
# have mapped.  A worker forks every task it runs, so what a worker has mapped, every task starts with.
_PROBE = textwrap.dedent(
    """
    import json, sys
    from airflow.executors.executor_loader import ExecutorLoader
    from airflow.executors.local_executor import LocalExecutor

    def mapped(pid):
        with open(f"/proc/{pid}/maps") as maps:
            text = maps.read()
        return {"torch": "libtorch_cpu" in text, "arrow": "libarrow." in text}

    cls, _ = ExecutorLoader.import_default_executor_cls()
    executor = cls(parallelism=2)
    before = {"preloaded": "pipelines.orchestration.worker_preload" in sys.modules, **mapped("self")}
    executor.start()
    try:
        workers = [mapped(pid) for pid in executor.workers]
    finally:
        executor.end()
    print(json.dumps({
        "path": f"{cls.__module__}.{cls.__name__}",
        "is_local_executor": issubclass(cls, LocalExecutor) and cls.is_local,
        "before": before,
        "workers": workers,
    }))
    """
)


def test_the_embedded_executor_forks_workers_that_already_hold_the_stack(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(PIPELINES_HOME=str(tmp_path), AIRFLOW_HOME=str(tmp_path / "airflow"))
    env.update(embedded_env(env))
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["path"] == env["AIRFLOW__CORE__EXECUTOR"] == PRELOADING_LOCAL_EXECUTOR
    assert probe["is_local_executor"]  # so `airflow standalone` keeps it instead of forcing its own
    # Nothing heavy before the scheduler starts its executor (the API server and DAG processor never do) ...
    assert probe["before"] == {"preloaded": False, "torch": False, "arrow": False}
    # ... and both workers forked after the import: torch and Arrow are in memory before any task starts.
    assert probe["workers"] == [{"torch": True, "arrow": True}] * 2
