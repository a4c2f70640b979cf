"""Airflow plugin: registers the verticals' timetable, `UtcDayTimetable`.

Airflow (de)serializes a custom timetable only when a plugin registers it: the
DAG processor needs it to store the DAGs, the scheduler and API server to read
them back.  The class lives in `pipelines.orchestration.timetable`.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipelines.orchestration.timetable import UtcDayTimetable


class VerticalTimetablePlugin(AirflowPlugin):
    """Each vertical run processes exactly the UTC day of its data interval."""

    name = "vertical_timetable"
    timetables = [UtcDayTimetable]
