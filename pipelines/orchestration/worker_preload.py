"""What the stages import lazily, imported once by the process that forks the task processes.

A Celery worker imports it before it forks its pool (`celery_config`); the embedded default's
scheduler imports it just before its LocalExecutor forks its workers (`local_executor`).  Every
task forked from those processes starts with these modules in memory.

Never imported by a DAG file, the DAG processor or the API server: parsing a DAG stays free of
these (ARCHITECTURE's parse budget), and only a process that runs tasks pays for them, once.
"""

from __future__ import annotations

import gc
import importlib
import logging

#: What the stages import lazily, heaviest first: snapshot (DVC), validate (GX), train (Lightning,
#: Optuna), evaluate and gate (scikit-learn); s3fs because Lightning imports it on every fit (its
#: object-storage check on the checkpoint folder), even for a local one, and state on S3 needs it too.
MODULES = (
    "great_expectations",
    "pytorch_lightning",
    "torch",
    "dvc.repo",
    "optuna",
    "sklearn.metrics",
    "s3fs",
    "pyarrow.parquet",
    "pandas",
    "pipelines.stages",
)


def _route_library_notices() -> None:
    """GX's ~200 import-time notices go where a task sends them (the library log), not to this process's output."""
    from pipelines.config import Settings
    from pipelines.errors import PipelineError
    from pipelines.orchestration.task_logging import route_library_notices

    try:
        home = Settings.from_env().home
    except PipelineError as exc:  # a bad PIPELINES_* setting: every task will say so itself
        logging.getLogger(__name__).warning("library notices not routed: %s", exc)
        return
    route_library_notices(home)


_route_library_notices()
# The imports create millions of objects that live as long as the worker, and each full collection
# while they load walked all of those loaded so far again.  Paused, with one collection at the end:
# 8.1 -> 7.1 CPU-s at Python's default thresholds, 5.9 -> 5.6 at `COLLECTOR_THRESHOLDS` (which an
# Airflow process already has from airflow_local_settings), importing MODULES on 2 cores.
_collecting = gc.isenabled()
gc.disable()
try:
    for _name in MODULES:
        importlib.import_module(_name)
finally:
    gc.collect()  # what the imports left in cycles, before the freeze would keep it for good
    # As Airflow's own preload does: keep these objects out of the collector's generations, so a
    # collection in a forked task does not touch (and copy) the pages the worker's tasks share.
    gc.freeze()
    if _collecting:
        gc.enable()
