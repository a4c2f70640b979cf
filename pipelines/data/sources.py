"""Pull one data interval from a vertical's source and keep it as daily partitions.

Sources are reached by connection id, resolved the way Airflow resolves them
(``AIRFLOW_CONN_<ID>`` as a URI or JSON), so the CLI and the DAGs share one
configuration.  Queries bind the interval as parameters; nothing is formatted
into SQL text.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.config import FileSource, Settings, SqlSource, VerticalSpec, parse_ds
from pipelines.errors import SourceError
from pipelines.layout import Layout, write_bytes_atomic

if TYPE_CHECKING:
    from pipelines.data.integration import IndexedTable

log = logging.getLogger(__name__)

# Airflow conn_type -> SQLAlchemy driver, for connections given in Airflow's forms.
_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "sqlite": "sqlite",
    "mssql": "mssql+pyodbc",
}


def window_days(spec: VerticalSpec, ds: str) -> list[str]:
    """Every day of the training window ending at ``ds`` (inclusive), oldest first.

    The window never reaches back before ``source.start``: those days have no
    data by declaration, so they are neither pulled nor reported missing.
    """
    end = parse_ds(ds, vertical=spec.name)
    days = [end - timedelta(days=n) for n in range(spec.window.train_days - 1, -1, -1)]
    start = spec.source.start
    return [day.isoformat() for day in days if start is None or day >= start]


def resolve_connection_url(conn_id: str, settings: Settings) -> str:
    """SQLAlchemy URL for an Airflow connection id (`pipelines.connections`: env vars or Airflow's lookup).

    A defined connection wins (URI or JSON form, same meaning); ``warehouse_default``
    falls back to the embedded demo warehouse so a fresh checkout needs no setup.
    """
    from sqlalchemy.engine import URL

    from pipelines import connections

    try:
        conn = connections.get(conn_id)
    except connections.ConnectionConfigError as exc:
        raise SourceError(str(exc)) from exc
    if conn is None:
        if conn_id == "warehouse_default":
            return settings.warehouse_url
        raise SourceError(
            f"connection {conn_id!r} is not configured: set {connections.env_var(conn_id)} "
            "(e.g. postgresql://user@host:5432/db) or add it as an Airflow connection"
        )
    # A URI may name the driver itself (postgresql+psycopg://...); else map Airflow's conn_type.
    driver = conn.conn_type if "+" in conn.conn_type else _DRIVERS.get(conn.conn_type)
    if driver is None:
        raise SourceError(f"connection {conn_id!r} has unsupported conn_type {conn.conn_type!r}")
    if driver == "sqlite":
        return f"sqlite:///{conn.schema or conn.host or ''}"
    # Scalar extras are driver options (sslmode, ...), as in the URI form's query string.
    query = {k: str(v) for k, v in conn.extra.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}
    url = URL.create(
        driver,
        username=conn.login,
        password=conn.password,
        host=conn.host or "localhost",
        port=conn.port,
        database=conn.schema or None,
        query=query,
    )
    return url.render_as_string(hide_password=False)


#: Rows fetched from a SQL source per round trip: with one day's rows, what an extract holds at once.
CHUNK_ROWS = 20_000


def stream_sql_days(
    spec: VerticalSpec, source: SqlSource, days: list[str], settings: Settings, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each of ``days`` (oldest first) with its rows, from one range query read ``chunk_rows`` at a time.

    Memory is one chunk plus one day, whatever the range: the query runs with
    ``stream_results`` (a server-side cursor on PostgreSQL; SQLite's cursor is
    lazy anyway) and, over several days, ``ORDER BY`` the event-time column, so
    a day is complete, and handed on, once a row of a later day arrives.  A
    single day needs no order: it is the query a nightly run always sent.

    A day's frame is built from its raw rows as ``pandas.read_sql`` builds a
    result (`_result_frame`), never by gluing chunk frames whose dtypes were
    guessed apart (a column null throughout one chunk would come back
    ``object``), so a day reads the same whether it came alone or in a year.
    A requested day without rows comes back as an empty frame.  Rows of days
    in the range but not in ``days`` are left out (a label-delay refresh skips
    the days in between).  Rows whose event time is no ISO date (only a text
    column can hold one; NULL never matches the range) belong to no day and
    are left out as well, as they always were, but now with a warning that
    counts them.
    """
    import sqlalchemy as sa

    first, last = parse_ds(days[0]), parse_ds(days[-1])
    url = resolve_connection_url(source.conn_id, settings)
    schema, _, name = source.table.rpartition(".")
    event: sa.ColumnClause[Any] = sa.column(source.event_time)
    query = (
        sa.select(sa.text("*"))
        .select_from(sa.table(name, schema=schema or None))
        .where(event >= sa.bindparam("start"), event < sa.bindparam("end"))
    )
    if first != last:
        query = query.order_by(event)
    position = {ds: i for i, ds in enumerate(days)}
    done = 0  # days[:done] are handed on
    held: list[Sequence[Any]] = []  # rows of days[done]
    undated = 0
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(
                query, {"start": first, "end": last + timedelta(days=1)}
            )
            columns = list(result.keys())
            _require_event_time(columns, source.event_time, spec)
            at = columns.index(source.event_time)
            for chunk in result.partitions(chunk_rows):
                dates = _event_dates(_result_frame([(r[at],) for r in chunk], [source.event_time])[source.event_time])
                day_of_row = dates.map(position)  # null: undated, or a day not asked for
                undated += int(dates.isna().sum())
                rows = np.flatnonzero(day_of_row.notna().to_numpy())
                for index, segment in _runs(day_of_row.to_numpy()[rows], rows):
                    if index < done:
                        raise SourceError(
                            f"rows of {days[index]} came after those of {days[done]} although the query orders "
                            f"{source.event_time!r}: its values do not sort by their date (mixed formats or time "
                            "zones?). Store the event time as a DATE or TIMESTAMP column",
                            vertical=spec.name,
                            ds=days[index],
                        )
                    while done < index:
                        yield days[done], _day_frame(held, columns, source.event_time, spec)
                        held, done = [], done + 1
                    # Plain tuples: pandas builds frames from them directly (a Row goes the slow way).
                    held.extend(tuple(chunk[i]) for i in segment)
    except sa.exc.SQLAlchemyError as exc:
        raise _query_error(exc, spec, source, last.isoformat()) from exc
    finally:
        engine.dispose()
    if undated:
        log.warning(
            "%s: %d row(s) from %s to %s have an event time that is no ISO date; they belong to no day and were "
            "not extracted",
            spec.name,
            undated,
            days[0],
            days[-1],
        )
    for ds in days[done:]:
        yield ds, _day_frame(held, columns, source.event_time, spec)
        held = []


def _runs(day_of_row: np.ndarray, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Consecutive rows of one day: (day index, their row positions), in order."""
    if not len(rows):
        return
    starts = np.flatnonzero(np.diff(day_of_row)) + 1
    for segment, indices in zip(np.split(rows, starts), np.split(day_of_row, starts), strict=True):
        yield int(indices[0]), segment


def _result_frame(rows: Sequence[Sequence[Any]], columns: list[str]) -> pd.DataFrame:
    """The frame ``pandas.read_sql`` returns for these rows: dtypes inferred over them all, zoned times in UTC."""
    frame = pd.DataFrame.from_records(rows, columns=columns, coerce_float=True)
    for i, dtype in enumerate(frame.dtypes):
        if isinstance(dtype, pd.DatetimeTZDtype):
            frame.isetitem(i, pd.to_datetime(frame.iloc[:, i], utc=True))
    return frame


def _day_frame(rows: list[Sequence[Any]], columns: list[str], event_time: str, spec: VerticalSpec) -> pd.DataFrame:
    return _normalise(_result_frame(rows, columns), event_time, spec)


def _query_error(exc: Exception, spec: VerticalSpec, source: SqlSource, ds: str) -> SourceError:
    import sqlalchemy as sa

    if isinstance(exc, sa.exc.OperationalError):
        return SourceError(
            f"source {source.conn_id!r} is unreachable or the table {source.table!r} is missing: "
            f"{exc.orig}. Check AIRFLOW_CONN_{source.conn_id.upper()} and source.table in the spec, "
            "or run `python -m pipelines seed` for the demo warehouse",
            vertical=spec.name,
            ds=ds,
        )
    return SourceError(f"query on {source.table!r} failed: {exc}", vertical=spec.name, ds=ds)


@dataclass(frozen=True)
class UnreadableFile:
    """A day's file that exists but cannot be decoded: its bytes are kept for quarantine."""

    url: str
    data: bytes
    cause: str


def fetch_file_days(
    spec: VerticalSpec, source: FileSource, days: list[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, UnreadableFile]]:
    """Each day's file as a frame (a missing file is an empty frame), and the files that cannot be decoded.

    Rows stay with the file they came from, whatever their event date says:
    a day's file holding rows of another day is a delivery error the suite's
    event-date check must see, not rows to move silently into another
    partition (or drop, when that day is not being extracted).
    """
    import fsspec

    parts: dict[str, pd.DataFrame] = {}
    unreadable: dict[str, UnreadableFile] = {}
    for ds in days:
        url = source.url.format(ds=ds)
        try:
            with fsspec.open(url, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            # A missing day is "no rows"; the suite's row-count check decides if that's bad.
            log.warning("%s: no file for %s at %s", spec.name, ds, url)
            parts[ds] = pd.DataFrame(columns=[source.event_time])
            continue
        except OSError as exc:
            raise SourceError(f"cannot read {url}: {exc}", vertical=spec.name, ds=ds) from exc
        try:
            frame = _decode(data, source.format)
        except (ValueError, UnicodeDecodeError) as exc:
            # ValueError covers pandas' ParserError/EmptyDataError and pyarrow's ArrowInvalid.
            unreadable[ds] = UnreadableFile(url=url, data=data, cause=f"{url} is not valid {source.format}: {exc}")
            continue
        if source.event_time not in frame.columns:
            cause = f"{url} has no event-time column {source.event_time!r}; its columns are {sorted(frame.columns)}"
            unreadable[ds] = UnreadableFile(url=url, data=data, cause=cause)
            continue
        parts[ds] = _normalise(frame, source.event_time, spec)
    return parts, unreadable


def _decode(data: bytes, file_format: str) -> pd.DataFrame:
    """Parse one day's file; a CSV must end with a line break (else it was cut mid-row)."""
    if file_format == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    if data and not data.endswith((b"\n", b"\r")):
        raise ValueError("the file does not end with a line break: truncated mid-row")
    return pd.read_csv(io.BytesIO(data), encoding="utf-8", encoding_errors="strict")


def _normalise(frame: pd.DataFrame, event_time: str, spec: VerticalSpec) -> pd.DataFrame:
    """ISO-date strings for the event column, whatever the driver returned (str, date, datetime).

    Text must be ISO 8601 (``2026-11-28``, optionally with a time): ``01/02/2026``
    is ambiguous, so it is not guessed.  A value that is no such date becomes
    null, so the suite's not-null check names it, instead of a parse error
    stopping the extract with a traceback.
    """
    _require_event_time(list(frame.columns), event_time, spec)
    frame[event_time] = _event_dates(frame[event_time])
    return frame


def _event_dates(values: pd.Series) -> pd.Series:
    """ISO dates (``YYYY-MM-DD``) of the values; null where a value is no ISO 8601 date or time."""
    return pd.to_datetime(values, errors="coerce", format="ISO8601").dt.strftime("%Y-%m-%d")


def _require_event_time(columns: list[str], event_time: str, spec: VerticalSpec) -> None:
    if event_time not in columns:
        raise SourceError(
            f"source has no event-time column {event_time!r}; columns are {sorted(columns)}", vertical=spec.name
        )


def extract_days(
    spec: VerticalSpec,
    days: list[str],
    settings: Settings,
    *,
    prepared: dict[str, Any] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, int]:
    """Pull ``days`` (oldest first) and store one raw Parquet partition per day.

    SQL sources are read with one range query, streamed (`stream_sql_days`):
    days are prepared and written as soon as a group of them holds
    ``chunk_rows`` rows, so memory is about twice ``chunk_rows`` rows plus one
    day, whatever the backfill.  File sources are
    one file per day.  Returns rows per day.  A day with no rows still gets an
    (empty) partition, so validation sees it and the row-count check can flag
    a silent source.  A file that cannot be decoded stops the extract as bad
    data (`quality.reject_unreadable_files`: bytes quarantined, one alert).

    The spec's cleaning rules, joins and label rule are applied to each day as
    if it came alone (`pipelines.data.preparation.prepare_frames`), so a
    backfilled day's partition is the one its nightly run writes, byte for byte
    (a median imputed over a year would differ from the day's own); only what
    depends on each row alone (a join's lookup, the label rule) runs once per
    group of days.  What they changed is summed into ``prepared`` when given.
    Then the spec's PII columns are pseudonymised (`pipelines.data.pii`), so
    no partition holds them in clear.  Each
    partition is written atomically; an error on a later day of a SQL
    backfill leaves the earlier days' partitions whole, and unused: only the
    stage's record, written after this returns, hands them to validation.
    """
    from pipelines.data.pii import pseudonymise, resolve_pii_key
    from pipelines.data.preparation import add_up

    if not days:
        return {}
    # A missing secret stops the extract before the source is even read.
    key = resolve_pii_key(spec, settings) if spec.pii else None
    layout = Layout(settings, spec.name)
    summaries: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    with closing(_prepared_days(spec, days, settings, chunk_rows=chunk_rows)) as prepared_days:
        for ds, rows, summary in prepared_days:
            # Before anything is written: no partition, report or email ever holds PII in clear.
            part = rows if key is None else pseudonymise(rows, spec.pii, key)
            try:
                write_partition(part, layout.raw(ds), spec.key)
            except OSError as exc:
                # Disk full, read-only volume, quota: the atomic write left nothing behind.
                raise SourceError(
                    f"could not store the raw partition {layout.raw(ds)} ({exc.strerror or exc}); nothing "
                    f"half-written was kept. Free space under {settings.home} (PIPELINES_HOME) and rerun extract",
                    vertical=spec.name,
                    ds=ds,
                ) from exc
            summaries.append(summary)
            counts[ds] = len(part)
    if prepared is not None:
        prepared.update(add_up(summaries))
    return counts


def _prepared_days(
    spec: VerticalSpec, days: list[str], settings: Settings, *, chunk_rows: int
) -> Generator[tuple[str, pd.DataFrame, dict[str, Any]]]:
    """Each day's rows, cleaned, joined and labelled, with what preparation changed."""
    from pipelines.data.integration import fetch_tables, index_tables
    from pipelines.data.preparation import needs_preparation, prepare_frames, prepare_rows

    if isinstance(spec.source, FileSource):
        by_day, unreadable = fetch_file_days(spec, spec.source, days)
        if unreadable:
            from pipelines.data.quality import reject_unreadable_files

            raise reject_unreadable_files(spec, days[-1], unreadable, settings)
        # Every day is prepared before any is written: the files are in memory already. A file may
        # hold rows dated after its day (a delivery error the suite flags), hence the day's own cutoff.
        days_prepared = {
            ds: prepare_rows(part, spec, before=_next(ds), settings=settings) for ds, part in by_day.items()
        }
        for ds, (rows, summary) in days_prepared.items():
            yield ds, rows, summary
        return
    if not needs_preparation(spec):
        for ds, part in stream_sql_days(spec, spec.source, days, settings, chunk_rows=chunk_rows):
            yield ds, part, {}
        return
    tables: dict[str, IndexedTable] | None = None
    stream = stream_sql_days(spec, spec.source, days, settings, chunk_rows=chunk_rows)
    for group in _groups_of_rows(stream, chunk_rows):
        if tables is None:
            # Read once, after the source answered (its errors come first, as they always did), and
            # even when no day has rows.  Rows valid from before the last day's end: a day's events
            # still take the row valid at their own date (merge_asof, backward), as on their night.
            # Keys tokenised and validity parsed once, not once per day.
            tables = index_tables(spec, fetch_tables(spec, before=_next(days[-1]), settings=settings))
        # Join lookups and the label rule run once per group; each day still comes out as it would alone.
        prepared = prepare_frames([rows for _, rows in group], spec, tables)
        for (ds, _), (rows, summary) in zip(group, prepared, strict=True):
            yield ds, rows, summary


def _groups_of_rows(days: Iterable[tuple[str, pd.DataFrame]], rows: int) -> Iterator[list[tuple[str, pd.DataFrame]]]:
    """Consecutive ``days`` in groups of at least ``rows`` rows (the last one fewer): memory stays flat."""
    group: list[tuple[str, pd.DataFrame]] = []
    held = 0
    for day in days:
        group.append(day)
        held += len(day[1])
        if held >= rows:
            yield group
            group, held = [], 0
    if group:
        yield group


def _next(ds: str) -> date:
    """The day after ``ds``: the exclusive end of its interval."""
    return parse_ds(ds) + timedelta(days=1)


def write_partition(frame: pd.DataFrame, path: Path, key: str) -> None:
    """Parquet with a canonical row order, so identical rows give identical bytes.

    Written to a temp file beside ``path`` and renamed over it: a reader sees
    the previous partition or the new one, whole, never a torn file, even when
    the disk fills up or the process dies mid-write.
    """
    ordered = frame.sort_values(key, kind="stable") if key in frame.columns else frame
    buf = io.BytesIO()
    ordered.reset_index(drop=True).to_parquet(buf, index=False)
    write_bytes_atomic(path, buf.getvalue())


def read_partitions(paths: list[Path]) -> pd.DataFrame:
    """Concatenate stored partitions (oldest first); empty frame if none.

    The frame ``pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)``
    gives (partitions without columns left out), for about half the CPU on a year of
    small days: consecutive partitions with identical Arrow schemas (pandas metadata
    included) are joined as Arrow tables and converted to pandas once, not once per
    day.  A day whose schema differs (a column all null that day is stored as Arrow's
    ``null`` type) starts a new run, and the runs are joined by ``pd.concat`` as the
    days were, so its dtype resolution (float with all-None -> object) is unchanged.
    Dictionary (categorical) columns keep a run of their own per day: Arrow would
    unify their categories where ``pd.concat`` falls back to object.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs: list[list[pa.Table]] = []
    for path in paths:
        table = pq.read_table(path, use_pandas_metadata=True)
        if not table.num_columns:
            continue
        categorical = any(pa.types.is_dictionary(field.type) for field in table.schema)
        previous = runs[-1][-1] if runs else None
        if previous is not None and not categorical and previous.schema.equals(table.schema, check_metadata=True):
            runs[-1].append(table)
        else:
            runs.append([table])
    frames = [_to_pandas(pa.concat_tables(run)) for run in runs]
    if not frames:
        return pd.DataFrame()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _to_pandas(table: Any) -> pd.DataFrame:
    """``table`` converted as ``pd.read_parquet`` converts what it read (string dtype, time zones)."""
    # pandas' own conversion function (not public API): the lock pins pandas, and
    # tests/unit/test_sources.py compares `read_partitions` with pd.read_parquet on every dtype.
    from pandas.io._util import arrow_table_to_pandas

    return arrow_table_to_pandas(table)


def assemble_window(spec: VerticalSpec, ds: str, settings: Settings) -> tuple[pd.DataFrame, list[str]]:
    """The training window from validated partitions; returns (frame, missing days).

    Quarantined or never-extracted days are absent from the window (and
    reported), never silently filled.
    """
    layout = Layout(settings, spec.name)
    present: list[Path] = []
    missing: list[str] = []
    for day in window_days(spec, ds):
        path = layout.validated(day)
        if path.exists():
            present.append(path)
        else:
            missing.append(day)
    frame = read_partitions(present)
    if len(frame):
        frame = frame.sort_values([spec.source.event_time, spec.key], kind="stable").reset_index(drop=True)
    return frame, missing
