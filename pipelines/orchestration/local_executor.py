"""The embedded default's executor: Airflow's LocalExecutor, with the pipeline stack imported once.

Airflow's LocalExecutor forks its worker processes from the scheduler when it starts, and each
worker forks every task it runs (the task SDK's supervisor).  Importing `worker_preload` in the
scheduler just before those workers are forked means every task starts with Great Expectations,
torch, Lightning, DVC and Optuna already in memory, as the Celery workers do (`celery_config`),
instead of importing them again: about 10 CPU-seconds per validate or train task on 2 cores.
The scheduler pays that once when it starts and holds the modules (about 0.6 GB resident, shared
copy-on-write with its workers and their tasks).

Set ``[core] executor`` to ``pipelines.orchestration.local_executor.PreloadingLocalExecutor``
(the embedded defaults do, `airflow_env`).  Airflow loads an executor by module path; this one
only adds the import, so Airflow's own LocalExecutor stays the reference for how tasks run.  The
DAG processor and API server never start an executor, so neither parsing nor the UI imports the
stack.  With the ``spawn`` start method (macOS) the workers are fresh interpreters that would not
inherit the modules, so nothing is preloaded there.  A failing import (a broken install) stops
the scheduler at start, as it stops a Celery worker: every task would fail the same way.
"""

from __future__ import annotations

import importlib

from airflow.executors.local_executor import LocalExecutor

#: What every task's stage would otherwise import on its own (the Celery workers import the same).
PRELOAD_MODULE = "pipelines.orchestration.worker_preload"


class PreloadingLocalExecutor(LocalExecutor):
    """`LocalExecutor` whose forked workers (and so every task) start with the stack imported."""

    def start(self) -> None:
        if self.is_mp_using_fork:
            importlib.import_module(PRELOAD_MODULE)
        super().start()
