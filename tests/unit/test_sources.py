"""Extraction: bound date intervals from SQL (SQLite and PostgreSQL) and files."""

from __future__ import annotations

import json
import uuid
from datetime import date, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.config import VerticalSpec, check_ds, parse_ds
from pipelines.data.preparation import add_up
from pipelines.data.sources import (
    assemble_window,
    extract_days,
    read_partitions,
    resolve_connection_url,
    window_days,
    write_partition,
)
from pipelines.errors import InvalidArgumentError, SourceError
from pipelines.layout import Layout


def make_spec(source: dict, name: str = "demo", **extra: Any) -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": name,
            "description": "test vertical",
            "owner": "tests",
            "source": source,
            "key": "id",
            "label": {"column": "y", "positive": 1},
            "features": {"numeric": ["x"]},
            "window": {"train_days": 10, "holdout_days": 3},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["owner@example.com"]},
            **extra,
        }
    )


def rows(start: date, days: int, per_day: int = 3) -> pd.DataFrame:
    records = []
    for d in range(days):
        for i in range(per_day):
            records.append({"id": d * 100 + i, "x": float(i), "y": i % 2, "event_date": start + timedelta(days=d)})
    return pd.DataFrame(records)


def write_table(url: str, table: str, frame: pd.DataFrame) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        frame.to_sql(table, conn, index=False, if_exists="replace", dtype={"event_date": sa.Date()})
    engine.dispose()


def test_parse_ds_rejects_bad_dates_with_the_expected_format():
    assert parse_ds("2026-11-27") == date(2026, 11, 27)
    for bad in ("27/11/2026", "20261127", "2026-W48-5", "2026-11-27T00:00"):
        with pytest.raises(InvalidArgumentError, match="use YYYY-MM-DD") as err:
            parse_ds(bad)
        assert err.value.exit_code == 2
    with pytest.raises(InvalidArgumentError, match="2026-13-01"):
        parse_ds("2026-13-01")


def test_check_ds_keeps_dates_between_the_source_start_and_today():
    spec = make_spec({"kind": "sql", "table": "t", "start": "2024-01-01"})
    today = date(2026, 11, 30)
    assert check_ds("2024-01-01", spec, today=today) == date(2024, 1, 1)
    assert check_ds("2026-11-30", spec, today=today) == today
    with pytest.raises(InvalidArgumentError, match=r"before 2024-01-01, the first day of its source") as err:
        check_ds("2023-12-31", spec, today=today)
    assert err.value.exit_code == 2
    with pytest.raises(InvalidArgumentError, match=r"after today \(2026-11-30 UTC\)"):
        check_ds("2026-12-01", spec, today=today)
    with pytest.raises(InvalidArgumentError, match="after today"):
        check_ds("9999-12-31", spec, today=today)


def test_check_ds_without_a_declared_start_still_refuses_absurd_dates():
    spec = make_spec({"kind": "sql", "table": "t"})
    with pytest.raises(InvalidArgumentError, match="before 1970-01-01, the earliest date accepted"):
        check_ds("1900-01-01", spec, today=date(2026, 11, 30))
    assert check_ds("1999-05-01", spec, today=date(2026, 11, 30)) == date(1999, 5, 1)


def test_window_never_reaches_back_before_the_source_start():
    spec = make_spec({"kind": "sql", "table": "t", "start": "2024-01-01"})
    days = window_days(spec, "2024-01-05")
    assert days == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert len(window_days(spec, "2026-11-27")) == spec.window.train_days


def test_window_days_ends_at_ds_inclusive():
    spec = make_spec({"kind": "sql", "table": "t"})
    days = window_days(spec, "2026-01-10")
    assert days[0] == "2026-01-01" and days[-1] == "2026-01-10" and len(days) == 10


def test_sqlite_extract_writes_one_partition_per_day_only_for_the_interval(settings, monkeypatch):
    url = f"sqlite:///{settings.home / 'src.db'}"
    write_table(url, "events", rows(date(2026, 1, 1), 5))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    spec = make_spec({"kind": "sql", "conn_id": "src", "table": "events"})

    counts = extract_days(spec, ["2026-01-02", "2026-01-03"], settings)

    assert counts == {"2026-01-02": 3, "2026-01-03": 3}
    layout = Layout(settings, "demo")
    part = pd.read_parquet(layout.raw("2026-01-02"))
    assert set(part["event_date"]) == {"2026-01-02"}
    assert list(part["id"]) == sorted(part["id"])
    assert not layout.raw("2026-01-01").exists() and not layout.raw("2026-01-04").exists()


def test_day_without_rows_still_gets_an_empty_partition(settings, monkeypatch):
    url = f"sqlite:///{settings.home / 'src.db'}"
    write_table(url, "events", rows(date(2026, 1, 1), 2))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    spec = make_spec({"kind": "sql", "conn_id": "src", "table": "events"})
    counts = extract_days(spec, ["2026-01-05"], settings)
    assert counts == {"2026-01-05": 0}
    assert len(pd.read_parquet(Layout(settings, "demo").raw("2026-01-05"))) == 0


def test_reextracting_unchanged_rows_gives_identical_bytes(settings, monkeypatch):
    url = f"sqlite:///{settings.home / 'src.db'}"
    write_table(url, "events", rows(date(2026, 1, 1), 2))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    spec = make_spec({"kind": "sql", "conn_id": "src", "table": "events"})
    path = Layout(settings, "demo").raw("2026-01-01")
    extract_days(spec, ["2026-01-01"], settings)
    first = path.read_bytes()
    extract_days(spec, ["2026-01-01"], settings)
    assert path.read_bytes() == first


@pytest.mark.postgres
def test_postgres_extract_binds_the_interval(settings, monkeypatch, postgres_url):
    table = f"events_{uuid.uuid4().hex[:8]}"
    write_table(postgres_url, table, rows(date(2026, 1, 1), 4))
    try:
        # Airflow's URI form (postgres://) is accepted and mapped to the psycopg driver.
        monkeypatch.setenv("AIRFLOW_CONN_PG_SRC", postgres_url.replace("postgresql+psycopg://", "postgres://"))
        spec = make_spec({"kind": "sql", "conn_id": "pg_src", "table": table})
        counts = extract_days(spec, ["2026-01-03", "2026-01-04"], settings)
        assert counts == {"2026-01-03": 3, "2026-01-04": 3}
        part = pd.read_parquet(Layout(settings, "demo").raw("2026-01-04"))
        assert set(part["event_date"]) == {"2026-01-04"}  # driver dates normalised to ISO strings
    finally:
        engine = sa.create_engine(postgres_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()


def test_file_source_reads_one_file_per_day(settings, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    frame = rows(date(2026, 2, 1), 3)
    frame["event_date"] = frame["event_date"].astype(str)
    for day, part in frame.groupby("event_date"):
        part.to_csv(folder / f"{day}.csv", index=False)
    spec = make_spec({"kind": "files", "url": f"file://{folder}/{{ds}}.csv", "format": "csv"})
    counts = extract_days(spec, ["2026-02-02", "2026-02-09"], settings)
    assert counts == {"2026-02-02": 3, "2026-02-09": 0}


def test_unreachable_source_is_a_clear_source_error(settings, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SRC", f"sqlite:///{settings.home / 'missing' / 'no.db'}")
    spec = make_spec({"kind": "sql", "conn_id": "src", "table": "events"})
    with pytest.raises(SourceError, match="unreachable or the table 'events' is missing"):
        extract_days(spec, ["2026-01-01"], settings)


def test_connection_resolution(settings, monkeypatch):
    assert resolve_connection_url("warehouse_default", settings) == settings.warehouse_url
    with pytest.raises(SourceError, match="AIRFLOW_CONN_NOPE"):
        resolve_connection_url("nope", settings)
    monkeypatch.setenv(
        "AIRFLOW_CONN_JSONCONN",
        json.dumps(
            {"conn_type": "postgres", "host": "db", "port": 5433, "login": "u", "password": "p@ss", "schema": "w"}
        ),
    )
    assert resolve_connection_url("jsonconn", settings) == "postgresql+psycopg://u:p%40ss@db:5433/w"
    monkeypatch.setenv("AIRFLOW_CONN_BAD", '{"conn_type": "ftp"}')
    with pytest.raises(SourceError, match="unsupported conn_type"):
        resolve_connection_url("bad", settings)


def test_assemble_window_reports_missing_days(settings):
    spec = make_spec({"kind": "sql", "table": "t"})
    layout = Layout(settings, "demo")
    frame = rows(date(2026, 1, 1), 10)
    frame["event_date"] = frame["event_date"].astype(str)
    from pipelines.data.sources import write_partition

    for day, part in frame.groupby("event_date"):
        if day != "2026-01-04":  # e.g. quarantined
            write_partition(part, layout.validated(day), "id")
    window, missing = assemble_window(spec, "2026-01-10", settings)
    assert missing == ["2026-01-04"]
    assert len(window) == 27
    assert list(window["event_date"]) == sorted(window["event_date"])


def test_missing_table_is_a_clear_source_error(settings, monkeypatch):
    url = f"sqlite:///{settings.home / 'src.db'}"
    write_table(url, "other", rows(date(2026, 1, 1), 1))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    spec = make_spec({"kind": "sql", "conn_id": "src", "table": "events"})
    with pytest.raises(SourceError, match="the table 'events' is missing: no such table: events"):
        extract_days(spec, ["2026-01-01"], settings)


# -- streaming: a backfill is its nights, whatever the chunk size --------------------------------


def _raw_bytes(settings, vertical: str, days: list[str]) -> dict[str, bytes]:
    layout = Layout(settings, vertical)
    return {day: layout.raw(day).read_bytes() for day in days}


def test_a_backfill_writes_each_day_as_its_own_nightly_run_does(tmp_path, seeded_warehouse, monkeypatch):
    """Education: PII, cleaning, and a schools table whose new rows are valid from 2025-08-01, inside the range."""
    from pipelines.config import load_spec
    from pipelines.data import integration
    from pipelines.data.pii import PII_KEY_ENV
    from tests.conftest import make_settings

    monkeypatch.setenv(PII_KEY_ENV, "a-test-secret-of-enough-characters")  # one key for both homes
    reads: list[str] = []
    fetch_table = integration.fetch_table
    monkeypatch.setattr(
        integration, "fetch_table", lambda spec, join, **kw: reads.append(join.name) or fetch_table(spec, join, **kw)
    )
    backfill = make_settings(tmp_path / "backfill", warehouse_file=str(seeded_warehouse))
    nightly = make_settings(tmp_path / "nightly", warehouse_file=str(seeded_warehouse))
    spec = load_spec("education", backfill)
    # 2025-08-02 is skipped, as a label-delay refresh skips the nights between.
    days = ["2025-07-29", "2025-07-30", "2025-07-31", "2025-08-01", "2025-08-03", "2025-08-04"]

    prepared: dict = {}
    counts = extract_days(spec, days, backfill, prepared=prepared, chunk_rows=10)
    assert reads == ["schools"], "the join table is read once per extract, not once per day"
    nights: list[dict] = []
    for day in days:
        nights.append({})
        assert extract_days(spec, [day], nightly, prepared=nights[-1]) == {day: counts[day]}

    assert _raw_bytes(backfill, "education", days) == _raw_bytes(nightly, "education", days)
    assert min(counts.values()) > 0 and not Layout(backfill, "education").raw("2025-08-02").exists()
    assert prepared == add_up(nights) and prepared["rows"] == sum(counts.values())
    before, after = (pd.read_parquet(Layout(backfill, "education").raw(d)) for d in ("2025-07-31", "2025-08-01"))
    assert before["joined_schools"].all() and after["joined_schools"].all()


def _events_to_stream(start: date, days: int) -> pd.DataFrame:
    """Three rows a day: ``note`` null in a day's first two (a trap for dtypes guessed chunk by chunk),
    ``w`` null in its first and otherwise 10 x day + 1 and + 2 (a median that differs from day to day)."""
    frame = rows(start, days)
    frame["note"] = [None if n % 3 < 2 else n for n in range(len(frame))]
    frame["w"] = [None if n % 3 == 0 else 10.0 * (n // 3) + n % 3 for n in range(len(frame))]
    return frame


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_chunk_size_never_changes_a_partition(settings, monkeypatch, request, backend):
    table = f"events_{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{settings.home / 'src.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    write_table(url, table, _events_to_stream(date(2026, 1, 1), 4))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    impute = {"columns": {"w": {"impute": {"strategy": "median"}}}}
    spec = make_spec(
        {"kind": "sql", "conn_id": "src", "table": table}, cleaning=impute, features={"numeric": ["x", "w"]}
    )
    days = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]  # the last one has no rows
    try:
        written = {}
        for chunk_rows in (1, 2, 5, 10_000):
            assert extract_days(spec, days, settings, chunk_rows=chunk_rows) == dict.fromkeys(days[:4], 3) | {
                "2026-01-05": 0
            }
            written[chunk_rows] = _raw_bytes(settings, "demo", days)
        nightly = {}
        for day in days:
            extract_days(spec, [day], settings)
            nightly |= _raw_bytes(settings, "demo", [day])
    finally:
        if backend == "postgresql":
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
            engine.dispose()
    assert all(parts == nightly for parts in written.values())
    part = pd.read_parquet(Layout(settings, "demo").raw("2026-01-02"))
    assert part["note"].dtype == "float64" and part["note"].isna().sum() == 2
    assert list(part["w"]) == [11.5, 11.0, 12.0], "imputed with the day's median, as its nightly run does"


def test_rows_whose_event_time_is_no_date_are_left_out_with_a_warning(settings, monkeypatch, caplog):
    """As before streaming: an in-range text value that is no ISO date belongs to no day; NULL never matches."""
    url = f"sqlite:///{settings.home / 'src.db'}"
    frame = rows(date(2026, 1, 1), 2).assign(event_date=lambda f: f["event_date"].astype(str))
    frame.loc[1, "event_date"] = "2026-01-01T25:00"  # sorts inside the range, parses to nothing
    frame.loc[4, "event_date"] = None
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        frame.to_sql("events", conn, index=False)
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    spec = make_spec({"kind": "sql", "conn_id": "src", "table": "events"})
    with caplog.at_level("WARNING", logger="pipelines.data.sources"):
        counts = extract_days(spec, ["2026-01-01", "2026-01-02"], settings, chunk_rows=2)
    assert counts == {"2026-01-01": 2, "2026-01-02": 2}
    assert "1 row(s) from 2026-01-01 to 2026-01-02 have an event time that is no ISO date" in caplog.text
    assert sorted(pd.read_parquet(Layout(settings, "demo").raw("2026-01-01"))["id"]) == [0, 2]


def _day(day: int, **columns: Any) -> pd.DataFrame:
    rows = len(next(iter(columns.values())))
    return pd.DataFrame({"id": range(day * 10, day * 10 + rows), **columns})


#: Days whose columns change type from one day to the next, as real sources do: a column all
#: null for a day (Arrow's null type), int then float with NaN, nullable Int64, bool with a
#: missing value, strings with None, time-zone-aware times, categoricals with different
#: categories, a day with no rows, and the same schema again after a different one.
MIXED_DAYS = [
    _day(0, x=[1.5, 2.0], n=[1, 2], s=["a", None], b=[True, False], k=pd.array([1, None], dtype="Int64")),
    _day(1, x=[None, None], n=[3, 4], s=["c", "d"], b=[True, True], k=pd.array([2, 3], dtype="Int64")),
    _day(2, x=[0.5, float("nan")], n=[5, 6], s=[None, None], b=[False, None], k=pd.array([None, 4], dtype="Int64")),
    _day(3, x=[1.0, 2.0], n=[7, 8], s=["e", "f"], b=[True, False], k=pd.array([5, 6], dtype="Int64")),
    _day(4, x=[1.0, 2.0], n=[7.5, float("nan")], s=["g", "h"], b=[True, False], k=pd.array([5, 6], dtype="Int64")),
    _day(5, x=pd.Series([], dtype=float), n=pd.Series([], dtype="int64"), s=pd.Series([], dtype="str")),
    _day(6, x=[3.0], t=pd.to_datetime(["2026-01-01T10:00"]).tz_localize("Europe/Paris")),
    _day(7, x=[4.0], t=pd.to_datetime(["2026-01-02T10:00"]).tz_localize("Europe/Paris")),
    _day(8, x=[5.0, 6.0], c=pd.Categorical(["u", "v"])),
    _day(9, x=[7.0, 8.0], c=pd.Categorical(["w", "x"])),  # as many categories: the same schema
]


@pytest.mark.parametrize(
    "days",
    [MIXED_DAYS, MIXED_DAYS[:1], MIXED_DAYS[3:4] * 3, MIXED_DAYS[6:8], MIXED_DAYS[8:], []],
    ids=["mixed", "one", "same-schema", "time-zones", "categoricals", "none"],
)
def test_read_partitions_gives_the_frame_pandas_concat_of_each_day_gives(tmp_path, days):
    paths = []
    for i, frame in enumerate(days):
        paths.append(tmp_path / f"{i}.parquet")
        write_partition(frame, paths[-1], "id")
    pd.DataFrame().to_parquet(tmp_path / "no-columns.parquet")
    paths.insert(len(paths) // 2, tmp_path / "no-columns.parquet")  # a partition with no columns is left out
    per_day = [f for f in (pd.read_parquet(p) for p in paths) if len(f.columns)]
    expected = pd.concat(per_day, ignore_index=True) if per_day else pd.DataFrame()

    got = read_partitions(paths)

    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.dtypes.astype(str).to_dict() == expected.dtypes.astype(str).to_dict()
