"""Airflow's cluster policy for the distributed tests' stack only (tests/distributed/conftest.py).

The stack's processes find this module on ``PYTHONPATH`` (``StackConfig.extra_env``),
the way a deployment ships its own ``airflow_local_settings.py``.  The DAGs are
unchanged: every task still retries with exponential backoff, only the base delay is
seconds instead of the production minute (so 1-2 s before the first retry instead of
60-120 s).  What the tests prove is *that* a task whose worker was killed is retried on
the other worker and the run completes, not how long Airflow waits before retrying.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

#: The base retry delay of every task in the test stack (production: 1 minute, `dag_factory.RETRY_DELAY`).
RETRY_DELAY = timedelta(seconds=1)


def task_policy(task: Any) -> None:
    """Applied by the dag-processor before a DAG is serialised, so the scheduler sees it too."""
    task.retry_delay = RETRY_DELAY
