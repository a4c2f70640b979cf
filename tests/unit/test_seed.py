"""The demo warehouse: deterministic frames from real datasets, idempotent seeding, the simulator."""

from __future__ import annotations

import re
import uuid
from datetime import date

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.config import load_spec
from pipelines.data.labels import apply_label
from pipelines.demo.seed import (
    DEMO_DAYS,
    DEMO_END,
    DEMO_START,
    build_demo_frames,
    build_dimension_frames,
    seed_warehouse,
    warehouse_engine,
    write_table,
)
from pipelines.demo.simulate import simulate_sensor_readings, spread_over_days
from pipelines.errors import SourceError

#: The 25th percentile of the STAR math scaled score per grade: what education's label rule encodes.
STAR_MATH_AT_RISK_BELOW = {"K": 454.0, "1": 500.0, "2": 550.0, "3": 591.0}
#: Extra tables the seed writes (joined by the specs), with their row counts.
DIMENSIONS = {"education_schools": 80 * 5, "healthcare_clinics": 88}

#: vertical -> (table, key, label column, positive, plausible positive-rate range)
DEMO = {
    "finance": ("finance_loans", "loan_id", "status", "bad", (0.2, 0.35)),
    "healthcare": ("healthcare_covid_tests", "test_id", "result", "positive", (0.04, 0.08)),
    "education": ("education_star_students", "record_id", "math_at_risk", "at_risk", (0.2, 0.3)),
    "manufacturing": ("manufacturing_sensor_readings", "reading_id", "machine_failure", "failure", (0.1, 0.2)),
}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return build_demo_frames()


def test_build_is_deterministic(frames: dict[str, pd.DataFrame]) -> None:
    again = build_demo_frames()
    assert list(again) == list(DEMO)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, again[name], obj=name)


def test_build_one_vertical_matches_the_full_build(frames: dict[str, pd.DataFrame]) -> None:
    # Each vertical has its own random stream: building one alone changes nothing.
    pd.testing.assert_frame_equal(build_demo_frames(["finance"])["finance"], frames["finance"])


def test_unknown_vertical_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match=r"no demo dataset for \['retail'\]"):
        build_demo_frames(["retail"])


@pytest.mark.parametrize("vertical", list(DEMO))
def test_every_day_of_the_span_has_rows(frames: dict[str, pd.DataFrame], vertical: str) -> None:
    dates = frames[vertical]["event_date"]
    assert dates.dtype == "datetime64[s]"
    assert (dates == dates.dt.normalize()).all(), "event_date is a date, not a timestamp"
    expected = pd.date_range(DEMO_START, DEMO_END, freq="D")
    assert len(expected) == DEMO_DAYS == 1461
    assert pd.DatetimeIndex(dates.unique()).sort_values().equals(expected.as_unit("s"))


@pytest.mark.parametrize("vertical", list(DEMO))
def test_keys_labels_and_column_names(frames: dict[str, pd.DataFrame], vertical: str) -> None:
    _, key, label, positive, (low, high) = DEMO[vertical]
    # Education's label is the spec's rule over the outcome, not a column of the table.
    frame, _ = apply_label(frames[vertical], load_spec(vertical))
    assert frame[key].notna().all() and frame[key].is_unique
    assert list(frame.columns[:2]) == [key, "event_date"]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in frame.columns), list(frame.columns)
    # The label keeps category strings, and both classes are present.
    assert frame[label].dtype == "str"
    assert positive in set(frame[label]) and frame[label].nunique() == 2
    assert low <= (frame[label] == positive).mean() <= high
    assert frame["event_date"].is_monotonic_increasing


def test_healthcare_keeps_real_order_and_drops_unusable_rows(frames: dict[str, pd.DataFrame]) -> None:
    tests = frames["healthcare"]
    # Stamped dates follow the real pandemic day: sorting by date keeps pan_day sorted.
    assert tests["pan_day"].is_monotonic_increasing
    assert set(tests["result"]) == {"positive", "negative"}
    assert tests["age"].between(0, 120).all()
    assert len(tests) == 15_524 - 301 - 1
    # The clinic is an id into the clinics table, which has every id.
    clinics = build_dimension_frames("healthcare")["clinics"]
    assert set(tests["clinic_id"]) <= set(clinics["clinic_id"]) and clinics["clinic_id"].is_unique
    assert "clinic_name" not in tests.columns


def test_education_label_rule_follows_the_per_grade_cutoff(frames: dict[str, pd.DataFrame]) -> None:
    star, _ = apply_label(frames["education"], load_spec("education"))
    cutoff = star["grade"].map(STAR_MATH_AT_RISK_BELOW)
    assert cutoff.notna().all() and star["math_score"].notna().all()
    assert ((star["math_score"] < cutoff) == (star["math_at_risk"] == "at_risk")).all()
    # Prior scores exist only from grade 1 on.
    assert star.loc[star["grade"] == "K", "prior_math_score"].isna().all()
    assert star.loc[star["grade"] != "K", "prior_math_score"].notna().mean() > 0.7


def _read_back(engine: sa.Engine, table: str, key: str, schema: str | None = None) -> pd.DataFrame:
    name = f"{schema}.{table}" if schema else table
    return pd.read_sql(f"SELECT * FROM {name} ORDER BY {key}", engine)


def _assert_tables_match_frames(engine: sa.Engine, frames: dict[str, pd.DataFrame], schema: str | None) -> None:
    for vertical, (table, key, label_column, _, _) in DEMO.items():
        label = "math_score" if vertical == "education" else label_column  # its label is derived at extract
        stored = _read_back(engine, table, key, schema)
        expected = frames[vertical].sort_values(key).reset_index(drop=True)
        assert len(stored) == len(expected), table
        assert list(stored.columns) == list(expected.columns)
        assert (stored[key].to_numpy() == expected[key].to_numpy()).all()
        assert (pd.to_datetime(stored["event_date"]) == expected["event_date"]).all()
        assert (stored[label].to_numpy() == expected[label].to_numpy()).all()
        # Every value, a missing one included, reads back as built (the bulk insert binds nothing itself).
        days = pd.to_datetime(stored["event_date"]).astype(expected["event_date"].dtype)
        pd.testing.assert_frame_equal(stored.assign(event_date=days), expected, check_dtype=False, obj=table)
        indexes = {tuple(i["column_names"]): i["unique"] for i in sa.inspect(engine).get_indexes(table, schema)}
        assert indexes[("event_date",)] in (0, False)
        assert indexes[(key,)] in (1, True)


def test_seed_sqlite_twice_is_idempotent(tmp_path, frames: dict[str, pd.DataFrame]) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'warehouse.db'}"  # the parent folder is created
    first = seed_warehouse(url)
    second = seed_warehouse(url)
    assert first == second == {table: len(frames[v]) for v, (table, *_) in DEMO.items()} | DIMENSIONS
    engine = sa.create_engine(url)
    try:
        _assert_tables_match_frames(engine, frames, schema=None)
    finally:
        engine.dispose()


def test_seed_one_vertical_leaves_the_others(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert seed_warehouse(url, verticals=["finance"]) == {"finance_loans": 4454}
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == ["finance_loans"]
    finally:
        engine.dispose()


def test_a_failed_rewrite_leaves_the_old_table(tmp_path) -> None:
    # DDL and rows are one transaction: a write that fails half-way (here on
    # the unique key index) must not leave an empty or partial table behind.
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    seed_warehouse(url, verticals=["finance"])
    engine = sa.create_engine(url)
    writer = warehouse_engine(url)
    try:
        before = _read_back(engine, "finance_loans", "loan_id")
        broken = before.head(10).copy()
        broken.loc[1, "loan_id"] = broken.loc[0, "loan_id"]
        with pytest.raises(sa.exc.IntegrityError):
            write_table(writer, "finance_loans", broken, key="loan_id")
        pd.testing.assert_frame_equal(_read_back(engine, "finance_loans", "loan_id"), before)
    finally:
        writer.dispose()
        engine.dispose()


def test_values_the_sqlite_driver_would_format_its_own_way_are_stored_as_sqlalchemy_stores_them(tmp_path) -> None:
    # A frame of numbers and text goes in through the driver's executemany; a timestamp column would
    # take sqlite3's own text (no microseconds when they are zero), so such a frame keeps SQLAlchemy's insert.
    engine = warehouse_engine(f"sqlite:///{tmp_path / 'w.db'}")
    frame = pd.DataFrame(
        {
            "id": [1, 2],
            "event_date": pd.to_datetime(["2026-01-01", "2026-01-02"]),
            "seen_at": pd.to_datetime(["2026-01-01 10:00:00.5", "2026-01-02 11:00:00.0"]),
            "score": [0.25, np.nan],
        }
    )
    try:
        assert write_table(engine, "events", frame, key="id") == 2
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, event_date, seen_at, score FROM events ORDER BY id").all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [
        (1, "2026-01-01", "2026-01-01 10:00:00.500000", 0.25),
        (2, "2026-01-02", "2026-01-02 11:00:00.000000", None),
    ]


@pytest.mark.postgres
def test_a_value_postgresql_refuses_fails_the_write_as_sqlalchemy_would_and_keeps_the_old_table(postgres_url: str):
    engine = warehouse_engine(postgres_url)
    schema = f"test_seed_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    good = pd.DataFrame({"id": [1], "event_date": pd.to_datetime(["2026-01-01"]), "note": ["kept"]})
    try:
        write_table(engine, "events", good, key="id", schema=schema)
        # PostgreSQL text cannot hold a NUL byte: COPY refuses the row mid-stream.
        with pytest.raises(sa.exc.DataError, match="0x00"):
            write_table(engine, "events", good.assign(note=["a\x00b"]), key="id", schema=schema)
        assert _read_back(engine, "events", "id", schema)["note"].tolist() == ["kept"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.mark.postgres
def test_seed_postgres_in_a_private_schema(postgres_url: str, frames: dict[str, pd.DataFrame]) -> None:
    engine = sa.create_engine(postgres_url)
    schema = f"test_seed_{uuid.uuid4().hex[:10]}"  # private: parallel runs never collide
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        first = seed_warehouse(postgres_url, schema=schema)
        expected = {table: len(frames[v]) for v, (table, *_) in DEMO.items()} | DIMENSIONS
        assert first == {f"{schema}.{table}": rows for table, rows in expected.items()}
        # Re-seeding replaces (the unique key index would reject appended duplicates).
        assert seed_warehouse(postgres_url, schema=schema, verticals=["healthcare"]) == {
            f"{schema}.healthcare_covid_tests": len(frames["healthcare"]),
            f"{schema}.healthcare_clinics": DIMENSIONS["healthcare_clinics"],
        }
        _assert_tables_match_frames(engine, frames, schema=schema)
        columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("finance_loans", schema)}
        assert isinstance(columns["event_date"], sa.Date)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


# -- simulator ---------------------------------------------------------------

SPAN = {"start": date(2024, 1, 1), "end": date(2024, 3, 31)}


def test_simulator_is_deterministic_per_seed() -> None:
    a = simulate_sensor_readings(5_000, seed=3, **SPAN)
    pd.testing.assert_frame_equal(a, simulate_sensor_readings(5_000, seed=3, **SPAN))
    assert not a.equals(simulate_sensor_readings(5_000, seed=4, **SPAN))


def test_simulator_shape_and_domain() -> None:
    frame = simulate_sensor_readings(20_000, seed=1, **SPAN, n_extra_features=5)
    assert frame.shape == (20_000, 14 + 5)
    assert frame.columns[-1] == "machine_failure"
    assert [c for c in frame.columns if c.startswith("aux_sensor_")] == [f"aux_sensor_{i:02d}" for i in range(1, 6)]
    assert frame["reading_id"].is_unique and frame["event_date"].is_monotonic_increasing
    assert frame["event_date"].dt.normalize().nunique() == 91
    assert frame.isna().sum().sum() == 0
    assert 0.1 <= (frame["machine_failure"] == "failure").mean() <= 0.2
    assert (frame["process_temperature_k"] > frame["air_temperature_k"]).all()
    # Odd aux sensors mix the real sensors; even ones are noise.
    core = frame[["air_temperature_k", "rotational_speed_rpm", "torque_nm", "tool_wear_min"]]
    assert core.corrwith(frame["aux_sensor_01"]).abs().max() > 0.2
    assert core.corrwith(frame["aux_sensor_02"]).abs().max() < 0.05


def test_simulator_rejects_too_few_rows() -> None:
    with pytest.raises(ValueError, match="cannot cover 91 days"):
        simulate_sensor_readings(90, seed=1, **SPAN)
    with pytest.raises(ValueError, match="n_extra_features"):
        simulate_sensor_readings(100, seed=1, **SPAN, n_extra_features=-1)


def test_spread_over_days_covers_every_day_and_follows_weights() -> None:
    weights = np.r_[np.zeros(5), np.ones(5)]
    dates = spread_over_days(
        1_000, start=date(2024, 1, 1), end=date(2024, 1, 10), rng=np.random.default_rng(0), weights=weights
    )
    counts = pd.Series(dates).value_counts().sort_index()
    assert len(dates) == 1_000 and (np.diff(dates.astype("int64")) >= 0).all()
    assert (counts.iloc[:5] == 1).all() and counts.iloc[5:].sum() == 995
    with pytest.raises(ValueError, match="before start"):
        spread_over_days(10, start=date(2024, 1, 2), end=date(2024, 1, 1), rng=np.random.default_rng(0))


def test_school_rows_change_by_school_year() -> None:
    schools = build_dimension_frames("education")["schools"]
    assert not schools.duplicated(["school_id", "valid_from"]).any()
    # One row per school and school year from August 2023: every demo day has a valid row.
    assert schools["valid_from"].min() == pd.Timestamp("2023-08-01")
    assert schools.groupby("school_id")["school_type"].nunique().max() == 1
    assert (schools.groupby("school_id")["school_enrolment"].nunique() > 1).mean() > 0.5
    again = build_dimension_frames("education")["schools"]
    pd.testing.assert_frame_equal(schools, again)


def test_seed_if_empty_never_overwrites_a_warehouse(tmp_path, capsys) -> None:
    """`pipelines seed --if-empty` (make stack, the compose init job): a restart keeps what is there."""
    from pipelines.cli import main

    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("create table finance_loans (loan_id integer, status text)"))
        conn.execute(sa.text("insert into finance_loans values (1, 'planted')"))

    assert main(["seed", "--if-empty", "--url", url]) == 0

    assert "not seeded" in capsys.readouterr().out
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("select status from finance_loans")).all() == [("planted",)]
        assert sa.inspect(conn).get_table_names() == ["finance_loans"]
