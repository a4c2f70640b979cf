"""Where a stage runs: an Airflow task (with its run and log links) or a CLI call.

The core never imports Airflow: the orchestration layer builds a `RunContext`
from the task's context and passes it down; a CLI call passes none and gets
`CLI`.  Messages use it to link the run and to give the rerun hint that fits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """Ids and links of the run a stage belongs to."""

    #: "airflow" or "cli".
    origin: str = "cli"
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    try_number: int | None = None
    #: The DAG run in the Airflow UI.
    run_url: str | None = None
    #: The task's log in the Airflow UI.
    log_url: str | None = None

    @property
    def from_airflow(self) -> bool:
        return self.origin == "airflow"


#: A run started from ``python -m pipelines`` (or any caller that names no run).
CLI = RunContext()


def actor(run_id: str | None = None) -> str:
    """Who made a registry change: ``airflow:<run_id>``, or ``cli:<login>`` (plain ``cli`` if unknown)."""
    if run_id:
        return f"airflow:{run_id}"
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name, e.g. in a container
        return "cli"
