"""The date convention: a run processes exactly the UTC day of its data interval.

The run for day D has logical date D 00:00Z, data interval D 00:00Z -> D+1
00:00Z, ``ds`` D, and is scheduled at the spec's cron time on D+1.  A day that
is not over cannot be run (it would be partial; a future one would never start
and would block the vertical).  See docs/airflow.md, "Dates".
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from pendulum import instance

from pipelines.orchestration.tasks import InvalidRunParams, check_run_dates, run_ds
from pipelines.orchestration.timetable import DayNotOverError, UtcDayTimetable, day_interval

pytestmark = pytest.mark.airflow


def utc(*args: int) -> datetime:
    return instance(datetime(*args, tzinfo=UTC))


def restriction(earliest: datetime | None, *, catchup: bool, latest: datetime | None = None):
    from airflow.timetables.base import TimeRestriction

    return TimeRestriction(earliest=earliest, latest=latest, catchup=catchup)


def test_scheduled_runs_cover_one_utc_day_each_and_start_at_the_cron_time_the_next_day():
    timetable = UtcDayTimetable("30 2 * * *")
    info = timetable.next_dagrun_info(
        last_automated_data_interval=day_interval(date(2026, 11, 26)),
        restriction=restriction(utc(2024, 1, 1), catchup=True),
    )
    assert info is not None
    assert info.data_interval == (utc(2026, 11, 27), utc(2026, 11, 28))
    assert info.logical_date == utc(2026, 11, 27)  # ds 2026-11-27: the day of the interval
    assert info.run_after == utc(2026, 11, 28, 2, 30)


def test_a_run_of_the_old_cron_interval_is_followed_by_the_next_day():
    """Right after the switch from the 02:00 -> 02:00 intervals: no day skipped, none twice."""
    from airflow.timetables.base import DataInterval

    old = DataInterval(utc(2026, 11, 26, 2), utc(2026, 11, 27, 2))  # processed the 26th
    info = UtcDayTimetable("0 2 * * *").next_dagrun_info(
        last_automated_data_interval=old, restriction=restriction(utc(2024, 1, 1), catchup=True)
    )
    assert info is not None and info.data_interval == day_interval(date(2026, 11, 27))


def test_without_catchup_the_first_run_is_the_latest_day_whose_start_time_passed():
    now = datetime.now(UTC)
    info = UtcDayTimetable("0 0 * * *").next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction(utc(2024, 1, 1), catchup=False)
    )
    assert info is not None
    assert info.data_interval == day_interval(now.date() - timedelta(days=1))  # yesterday, started at 00:00 today
    assert info.run_after <= now


def test_a_manual_run_gets_the_day_of_its_logical_date():
    timetable = UtcDayTimetable("0 2 * * *")
    assert timetable.infer_manual_data_interval(run_after=utc(2026, 11, 27, 15, 4)) == day_interval(date(2026, 11, 27))


@pytest.mark.parametrize("days_ahead", [0, 1, 30])
def test_a_day_that_is_not_over_is_refused_with_a_clear_message(days_ahead):
    day = datetime.now(UTC) + timedelta(days=days_ahead)
    with pytest.raises(DayNotOverError, match="not over yet") as err:
        UtcDayTimetable("0 2 * * *").infer_manual_data_interval(run_after=instance(day))
    assert isinstance(err.value, ValueError)  # Airflow's trigger endpoint answers a ValueError with 400
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert f"up to {yesterday}" in str(err.value)


@pytest.mark.parametrize("cron", ["0 * * * *", "*/5 2 * * *", "0 2 * * 1", "0 2 1 * *", "@daily", "61 2 * * *"])
def test_only_a_daily_cron_is_a_valid_schedule(cron):
    with pytest.raises(ValueError, match="not a daily cron"):
        UtcDayTimetable(cron)


def test_the_timetable_survives_serialization_as_the_scheduler_and_api_server_read_it(dagbag):
    """Stored by the DAG processor, read back by the API server: the plugin registers the class."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.dags["finance"]))
    assert type(dag.timetable).__name__ == "UtcDayTimetable"
    assert dag.timetable.summary == "0 2 * * *"
    assert dag.timetable.infer_manual_data_interval(run_after=utc(2026, 11, 27)) == day_interval(date(2026, 11, 27))


# -- at run start (tasks) -------------------------------------------------------


def context(logical: datetime | None, interval: tuple[datetime, datetime] | None = None) -> dict:
    start, end = interval or (None, None)
    return {"logical_date": logical, "data_interval_start": start, "data_interval_end": end, "params": {}}


def test_ds_is_the_day_of_the_data_interval():
    ctx = context(utc(2026, 11, 27), tuple(day_interval(date(2026, 11, 27))))
    assert run_ds(ctx) == "2026-11-27"
    check_run_dates("finance", ctx)  # agrees: no error


def test_a_run_whose_day_is_not_over_fails_at_run_start():
    """E.g. triggered with an explicit data interval, which bypasses the timetable's refusal."""
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    with pytest.raises(InvalidRunParams, match=f"finance: logical date {tomorrow}: .*not over yet"):
        check_run_dates("finance", context(instance(datetime.combine(tomorrow, datetime.min.time(), UTC))))


def test_a_data_interval_that_is_not_the_processed_day_fails_at_run_start():
    other = (utc(2026, 11, 26, 2), utc(2026, 11, 27, 2))
    with pytest.raises(InvalidRunParams, match="is not the UTC day 2026-11-27"):
        check_run_dates("finance", context(utc(2026, 11, 27), other))


# -- the API server's trigger guard (its HTTP side: tests/integration/test_airflow_rest.py) ----------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"logical_date": "2026-11-27T00:00:00Z", "conf": {}}, None),
        ({"logical_date": "2026-11-27T15:04:00+02:00", "conf": {"force_reason": "ignored"}}, None),
        ({"logical_date": None, "conf": {}}, None),  # no logical date: covers the day before it ran
        ({"logical_date": "2999-01-01T00:00:00Z", "conf": {}}, "not over yet"),
        ({"logical_date": "2026-11-27T00:00:00Z", "conf": {"force_promotion": True}}, "force_reason is empty"),
        ({"logical_date": "2026-11-27T00:00:00Z", "conf": {"force_promotion": True, "force_reason": " "}}, "empty"),
    ],
)
def test_trigger_guard_rules(body, problem):
    import json

    from pipelines.orchestration.trigger_guard import trigger_problem

    found = trigger_problem("finance", json.dumps(body).encode())
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith("finance: ") and problem in found


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"logical_date": "yesterday"}'])
def test_trigger_guard_leaves_malformed_requests_to_airflow(body):
    from pipelines.orchestration.trigger_guard import trigger_problem

    assert trigger_problem("finance", body) is None
