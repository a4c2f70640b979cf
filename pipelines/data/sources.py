"""Pull one data interval from a vertical's source and keep it as daily partitions.

Sources are reached by connection id, resolved the way Airflow resolves them
(``AIRFLOW_CONN_<ID>`` as a URI or JSON), so the CLI and the DAGs share one
configuration.  Queries bind the interval as parameters; nothing is formatted
into SQL text.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import FileSource, Settings, SqlSource, VerticalSpec
from pipelines.errors import InvalidArgumentError, SourceError
from pipelines.layout import Layout, write_bytes_atomic

log = logging.getLogger(__name__)

# Airflow conn_type -> SQLAlchemy driver, for connections given in Airflow's forms.
_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "sqlite": "sqlite",
    "mssql": "mssql+pyodbc",
}


def parse_ds(ds: str, *, vertical: str | None = None) -> date:
    """Parse a logical date ``YYYY-MM-DD`` or raise an `InvalidArgumentError` saying the format."""
    from pipelines.config import echo

    # Exactly YYYY-MM-DD: fromisoformat alone also takes 20261127 and 2026-W48-5.
    if not isinstance(ds, str) or len(ds) != 10 or ds[4] != "-" or ds[7] != "-":
        raise InvalidArgumentError(f"bad date {echo(ds)}: use YYYY-MM-DD, e.g. 2026-11-27", vertical=vertical)
    try:
        return date.fromisoformat(ds)
    except ValueError as exc:
        raise InvalidArgumentError(f"bad date {echo(ds)}: use YYYY-MM-DD, e.g. 2026-11-27", vertical=vertical) from exc


#: Lower bound of a logical date when the spec declares no ``source.start``.
EARLIEST_DS = date(1970, 1, 1)


def check_ds(ds: str, spec: VerticalSpec, *, today: date | None = None) -> date:
    """Parse ``ds`` and check it lies between the source's first day and today (UTC).

    The one place a run's logical date is judged, for the CLI, the Airflow tasks
    and every stage: a date before the data (``1900-01-01``) would backfill
    hundreds of empty days, one after today (``9999-12-31``) has no data yet and
    overflows the date arithmetic.  Raises `InvalidArgumentError` (exit code 2).
    """
    day = parse_ds(ds, vertical=spec.name)
    first = spec.source.start or EARLIEST_DS
    last = today or datetime.now(UTC).date()
    if day < first:
        where = "the first day of its source (source.start)" if spec.source.start else "the earliest date accepted"
        raise InvalidArgumentError(
            f"date {ds} is before {first.isoformat()}, {where}: pick a date from {first.isoformat()} to "
            f"{last.isoformat()}",
            vertical=spec.name,
        )
    if day > last:
        raise InvalidArgumentError(
            f"date {ds} is after today ({last.isoformat()} UTC), so its data cannot exist yet: pick a date from "
            f"{first.isoformat()} to {last.isoformat()}",
            vertical=spec.name,
        )
    return day


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


def fetch_rows(spec: VerticalSpec, start: date, end: date, settings: Settings) -> pd.DataFrame:
    """Rows with ``start <= event_time < end`` from the vertical's source."""
    if isinstance(spec.source, SqlSource):
        return _fetch_sql(spec, spec.source, start, end, settings)
    return _fetch_files(spec, spec.source, start, end)


def _fetch_sql(spec: VerticalSpec, source: SqlSource, start: date, end: date, settings: Settings) -> pd.DataFrame:
    import sqlalchemy as sa

    url = resolve_connection_url(source.conn_id, settings)
    schema, _, name = source.table.rpartition(".")
    table = sa.table(name, schema=schema or None)
    event: sa.ColumnClause[Any] = sa.column(source.event_time)
    query = (
        sa.select(sa.text("*")).select_from(table).where(event >= sa.bindparam("start"), event < sa.bindparam("end"))
    )
    last_day = (end - timedelta(days=1)).isoformat()  # the run's logical date
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn, params={"start": start, "end": end})
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        # pandas 3 wraps the driver's error in its own DatabaseError; judge by the cause.
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) else exc
        if isinstance(cause, sa.exc.OperationalError):
            raise SourceError(
                f"source {source.conn_id!r} is unreachable or the table {source.table!r} is missing: "
                f"{cause.orig}. Check AIRFLOW_CONN_{source.conn_id.upper()} and source.table in the spec, "
                "or run `python -m pipelines seed` for the demo warehouse",
                vertical=spec.name,
                ds=last_day,
            ) from exc
        raise SourceError(f"query on {source.table!r} failed: {cause}", vertical=spec.name, ds=last_day) from exc
    finally:
        engine.dispose()
    return _normalise(frame, source.event_time, spec)


def _fetch_files(spec: VerticalSpec, source: FileSource, start: date, end: date) -> pd.DataFrame:
    days = []
    day = start
    while day < end:
        days.append(day.isoformat())
        day += timedelta(days=1)
    parts, unreadable = fetch_file_days(spec, source, days)
    if unreadable:
        first = next(iter(unreadable.values()))
        raise SourceError(f"unreadable file(s): {first.cause}", vertical=spec.name, ds=next(iter(unreadable)))
    frames = [p for p in parts.values() if len(p.columns)]
    if not frames:
        return pd.DataFrame(columns=[source.event_time])
    return pd.concat(frames, ignore_index=True)


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
    if event_time not in frame.columns:
        raise SourceError(
            f"source has no event-time column {event_time!r}; columns are {sorted(frame.columns)}",
            vertical=spec.name,
        )
    frame[event_time] = pd.to_datetime(frame[event_time], errors="coerce", format="ISO8601").dt.strftime("%Y-%m-%d")
    return frame


def extract_days(spec: VerticalSpec, days: list[str], settings: Settings) -> dict[str, int]:
    """Pull ``days`` and store one raw Parquet partition per day.

    SQL sources are read with one range query; file sources one file per
    day.  Returns rows per day.  A day with no rows still gets an (empty)
    partition, so validation sees it and the row-count check can flag a
    silent source.  A file that cannot be decoded stops the extract as bad
    data (`quality.reject_unreadable_files`: bytes quarantined, one alert).
    """
    if not days:
        return {}
    layout = Layout(settings, spec.name)
    if isinstance(spec.source, FileSource):
        by_day, unreadable = fetch_file_days(spec, spec.source, days)
        if unreadable:
            from pipelines.data.quality import reject_unreadable_files

            raise reject_unreadable_files(spec, days[-1], unreadable, settings)
    else:
        first, last = parse_ds(days[0]), parse_ds(days[-1])
        frame = fetch_rows(spec, first, last + timedelta(days=1), settings)
        groups = dict(iter(frame.groupby(spec.source.event_time, sort=False)))
        by_day = {ds: groups.get(ds, frame.iloc[0:0]) for ds in days}
    counts: dict[str, int] = {}
    for ds in days:
        part = by_day[ds]
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
        counts[ds] = len(part)
    return counts


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
    """Concatenate stored partitions (oldest first); empty frame if none."""
    frames = [pd.read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


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
