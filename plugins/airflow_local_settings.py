"""Airflow's local-settings hook: every Airflow process imports this module while it imports Airflow.

Airflow puts the plugins folder on ``sys.path`` and imports ``airflow_local_settings`` from it in
every process it starts (scheduler, API server, DAG processor, triggerer, Celery workers, task
processes, ``dag.test()``), before the rest of Airflow loads.  The only setting here is the cyclic
collector's thresholds (`pipelines.memory.COLLECTOR_THRESHOLDS`): the same for the CLI, measured
there.  No cluster policy is defined; ``__all__`` is empty so Airflow copies nothing of this
module into its own settings.
"""

from __future__ import annotations

from pipelines.memory import tune_collector

__all__: list[str] = []

tune_collector()
