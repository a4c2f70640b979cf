"""The verticals' timetable: each run processes one whole UTC day, and says so.

Convention (docs/airflow.md, "Dates"): a run **processes the UTC day of its
data interval**, and that interval is exactly the day, ``[D 00:00Z, D+1
00:00Z)``; its logical date is ``D 00:00Z`` and ``ds`` is ``D``.  The spec's
``schedule`` (a daily cron, e.g. ``30 2 * * *``) only says *when* the run for
``D`` starts: at that time on ``D+1``, leaving the sources time for late rows.

Airflow's ``CronDataIntervalTimetable`` ties the interval to the cron instead
(02:30 -> 02:30), so the UI showed an interval that was not the day processed.
A manual run (UI, REST, ``make run``) gets the interval of its logical date's
day, and is refused while that day is not over: it would process a partial day
(and for a future logical date the scheduler never starts the run, which would
then block the vertical, ``max_active_runs=1``).  Airflow's trigger endpoint
answers that refusal as HTTP 400 with the message below.

A custom timetable must be registered with a plugin for the scheduler and the
DAG processor to (de)serialize it: ``plugins/vertical_runs.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from airflow.timetables.base import DagRunInfo, DataInterval, Timetable
from pendulum import DateTime, instance

if TYPE_CHECKING:
    from airflow.timetables.base import TimeRestriction

DAY = timedelta(days=1)
#: "M H * * *": fires once per UTC day, so every day gets exactly one scheduled run.
DAILY_CRON = re.compile(r"^\s*(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+\*\s*$")


class DayNotOverError(ValueError):
    """A manual run for a day that has not ended yet (Airflow's REST API turns it into a 400)."""


def day_interval(day: date) -> DataInterval:
    """The data interval of the run that processes ``day``: exactly that UTC day."""
    start = instance(datetime.combine(day, time.min, tzinfo=UTC))
    return DataInterval(start=start, end=start + DAY)


def check_day_is_over(day: date, now: datetime | None = None) -> None:
    """Raise `DayNotOverError` unless the UTC day ``day`` has ended (its data is complete)."""
    now = now or datetime.now(UTC)
    end = datetime.combine(day, time.min, tzinfo=UTC) + DAY
    if end > now:
        latest = (now - DAY).date().isoformat()
        raise DayNotOverError(
            f"logical date {day.isoformat()}: that UTC day is not over yet (it ends {end.isoformat()}); "
            f"a run processes one complete UTC day, so trigger a logical date up to {latest}"
        )


class UtcDayTimetable(Timetable):
    """One run per UTC day ``D``, started at the spec's daily cron time on ``D+1``."""

    def __init__(self, cron: str) -> None:
        match = DAILY_CRON.match(cron)
        if not match or int(match[1]) > 59 or int(match[2]) > 23:
            raise ValueError(
                f"schedule {cron!r} is not a daily cron 'M H * * *' (e.g. '30 2 * * *'): each run processes "
                "one UTC day, so the schedule must fire exactly once a day; fix 'schedule' in the spec"
            )
        self._cron = cron.strip()
        self._offset = timedelta(hours=int(match[2]), minutes=int(match[1]))
        clock = f"{int(match[2]):02d}:{int(match[1]):02d}"
        self.description = f"Daily at {clock} UTC, for the previous UTC day (00:00-24:00)"

    # -- serialization (the plugin registers the class) -------------------------

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> Timetable:
        return cls(data["cron"])

    def serialize(self) -> dict[str, Any]:
        return {"cron": self._cron}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UtcDayTimetable) and other._cron == self._cron

    def __hash__(self) -> int:
        return hash(self._cron)

    @property
    def summary(self) -> str:
        return self._cron

    # -- scheduling -------------------------------------------------------------

    def run_after(self, day: date) -> DateTime:
        """When the scheduled run for ``day`` starts: the cron time on the next day."""
        return day_interval(day).end + self._offset

    def _info(self, day: date) -> DagRunInfo:
        return DagRunInfo(run_after=self.run_after(day), data_interval=day_interval(day))

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        # For a manual run Airflow passes the logical date here.
        day = run_after.astimezone(UTC).date()
        check_day_is_over(day)
        return day_interval(day)

    def next_dagrun_info(
        self, *, last_automated_data_interval: DataInterval | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        candidates: list[date] = []
        if last_automated_data_interval is not None:
            # The day after the last scheduled one (also right after a switch from
            # an interval that started at 02:00: its day is the day of its start).
            candidates.append(last_automated_data_interval.start.astimezone(UTC).date() + DAY)
        elif restriction.earliest is None:
            return None
        if restriction.earliest is not None:
            earliest = restriction.earliest.astimezone(UTC)
            first = earliest.date() if earliest.time() == time.min else earliest.date() + DAY
            candidates.append(first)
        if not restriction.catchup:
            # Only the latest day whose start time has passed (or the next one).
            now = datetime.now(UTC)
            latest = now.date() - DAY
            if self.run_after(latest) > now:
                latest -= DAY
            candidates.append(latest)
        day = max(candidates)
        if restriction.latest is not None and day_interval(day).start > restriction.latest:
            return None
        return self._info(day)
