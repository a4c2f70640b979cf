"""Airflow plugin: what the verticals' runs need from Airflow's own processes.

* ``timetables``: `UtcDayTimetable` (one run per UTC day).  Airflow
  (de)serializes a custom timetable only when a plugin registers it: the DAG
  processor stores the DAGs with it, the scheduler and API server read it back.
* ``fastapi_root_middlewares``: `TriggerGuard`, which answers HTTP 400 to a
  vertical trigger (UI or REST) for a day that is not over, or forcing a
  promotion without a reason, before Airflow creates a run that could never
  succeed; and `SqliteWriteSerializer`, which lets one state-changing request
  at a time into an API server on SQLite (two at once could stall it for 60 s
  and fail one of them: `pipelines.orchestration.sqlite_writes`).

The code lives in `pipelines.orchestration`; the API server reads plugins at
start-up (restart it after a change).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipelines.orchestration.sqlite_writes import SqliteWriteSerializer
from pipelines.orchestration.timetable import UtcDayTimetable
from pipelines.orchestration.trigger_guard import TriggerGuard


class VerticalRunsPlugin(AirflowPlugin):
    """The verticals' timetable, the trigger guard and the SQLite write queue."""

    name = "vertical_runs"
    timetables = [UtcDayTimetable]
    fastapi_root_middlewares = [
        {"middleware": TriggerGuard, "args": [], "kwargs": {}, "name": "vertical trigger guard"},
        {"middleware": SqliteWriteSerializer, "args": [], "kwargs": {}, "name": "one SQLite write at a time"},
    ]
