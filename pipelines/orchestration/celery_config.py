"""The Celery settings of the production stack: Airflow's, plus the pipeline stack imported once per worker.

Set ``[celery] celery_config_options`` to ``pipelines.orchestration.celery_config.CELERY_CONFIG``
(``make stack`` and docker-compose.yml do).  Celery's ``imports`` are imported by the worker's
main process at start, before it forks its pool; Airflow's supervisor forks each task from a
pool process, so every task starts with Great Expectations, torch, Lightning, DVC and Optuna
already in memory instead of importing them again (`worker_preload`): seconds per task, and the
pages are shared between the tasks of one worker.  Airflow's own provider does the same for its
operators (``on_celery_import_modules``).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

from pipelines.orchestration.local_executor import PRELOAD_MODULE

CELERY_CONFIG: dict[str, Any] = {
    **DEFAULT_CELERY_CONFIG,
    "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), PRELOAD_MODULE),
}
