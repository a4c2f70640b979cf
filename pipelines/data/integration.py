"""Multi-table integration: extra tables joined to the event rows, point-in-time correct.

A join (``joins:`` in the spec) names a table, the key column(s) shared with
the event rows, the columns it adds and, for a table whose rows change over
time, the column from which each row is valid.  An event takes the latest row
valid at its event time (``pandas.merge_asof``, backward), never a later one,
so nothing leaks from the future.  Each join writes a boolean marker column
(``joined_<name>``) so that validation can check the coverage of every day
like any other expectation (`check_join_coverage`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.errors import SourceError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipelines.config import Join, Settings, VerticalSpec
    from pipelines.data.quality import FailedExpectation


def _key_token(value: Any) -> str | None:
    """Keys compared as text, integral floats as ints: ``7``, ``7.0`` and ``"7"`` are one key."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _tokens(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    parts = [frame[c].map(_key_token).astype(object) for c in columns]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.where(joined.isna() | part.isna(), joined.astype(str) + "\x1f" + part.astype(str))
        joined = joined.where(part.notna(), None)
    return joined


def _instants(values: pd.Series) -> pd.Series:
    """Dates or ISO strings as ``datetime64[us]``; what does not parse is NaT (no partner)."""
    if not pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(
            values.astype(object).map(lambda v: None if pd.isna(v) else str(v)), errors="coerce", format="ISO8601"
        )
    return values.astype("datetime64[us]")


@dataclass(frozen=True)
class IndexedTable:
    """A join's table made ready once for any number of event batches (a backfill joins day by day).

    ``rows`` holds the key token ``_key``, the validity start ``_from`` (with
    ``valid_from``, sorted by it; rows without a usable key or start dropped),
    ``valid_to`` when declared, and the joined columns.
    """

    join: Join
    rows: pd.DataFrame


def index_table(table: pd.DataFrame, join: Join) -> IndexedTable:
    """Tokenise the keys and parse the validity of ``table`` once; a timeless table must have unique keys."""
    right = table.assign(_key=_tokens(table, join.keys)).dropna(subset=["_key"])
    right = right.loc[
        :,
        [
            "_key",
            *([join.valid_from] if join.valid_from else []),
            *([join.valid_to] if join.valid_to else []),
            *join.columns,
        ],
    ]
    if join.valid_from is None:
        repeated = right["_key"][right["_key"].duplicated()].unique()[:5]
        if len(repeated):
            raise SourceError(
                f"join {join.name!r}: {join.table} has several rows for key(s) {list(repeated)} and no valid_from "
                "to tell them apart; declare valid_from or make the key unique"
            )
        return IndexedTable(join, right.assign(_hit=True))
    # One resolution on both sides: merge_asof refuses keys of different datetime units.
    right = right.assign(_from=_instants(right[join.valid_from]))
    right = right.dropna(subset=["_from"]).sort_values("_from", kind="stable")
    return IndexedTable(join, right.drop(columns=[join.valid_from]).assign(_hit=True))


def join_point_in_time(
    events: pd.DataFrame, table: pd.DataFrame | IndexedTable, join: Join, *, event_time: str
) -> pd.DataFrame:
    """``events`` with ``join.columns`` from ``table`` and the marker ``joined_<name>``; rows keep their order.

    Pure: the tested core of `integrate`.  A key with no valid row leaves the
    joined columns null and the marker false.  ``table`` may come indexed
    (`index_table`), as a backfill passes it for each of its days.
    """
    clash = sorted(set(join.columns) & set(events.columns))
    if clash:
        raise SourceError(f"join {join.name!r}: column(s) {clash} already exist in the event rows; rename one")
    missing = [c for c in join.keys if c not in events.columns]
    if missing:
        raise SourceError(f"join {join.name!r}: the event rows have no key column(s) {missing}")
    right = (table if isinstance(table, IndexedTable) else index_table(table, join)).rows
    left = events.reset_index(drop=True).assign(_row=np.arange(len(events)), _key=_tokens(events, join.keys))
    if join.valid_from is None:
        merged = left.merge(right, on="_key", how="left", sort=False)
    else:
        left["_at"] = _instants(left[event_time])
        usable = left["_key"].notna() & left["_at"].notna()
        found = pd.merge_asof(
            left[usable].sort_values("_at", kind="stable"),
            right,
            left_on="_at",
            right_on="_from",
            by="_key",
            direction="backward",
        )
        if join.valid_to:
            ended = _instants(found[join.valid_to])
            expired = ended.notna() & (found["_at"] >= ended)
            found["_hit"] = found["_hit"].astype(object)
            found.loc[expired, [*join.columns, "_hit"]] = None
            found = found.drop(columns=[join.valid_to])
        merged = pd.concat([found, left[~usable]], ignore_index=True).drop(columns=["_at", "_from"])
    merged = merged.sort_values("_row", kind="stable").reset_index(drop=True)
    merged[join.marker] = merged["_hit"].fillna(False).astype(bool)
    return merged.drop(columns=["_row", "_key", "_hit"])


def fetch_table(spec: VerticalSpec, join: Join, *, before: date, settings: Settings) -> pd.DataFrame:
    """The join's table: with ``valid_from``, only rows valid from before ``before`` (none from the future)."""
    import sqlalchemy as sa

    from pipelines.data.sources import resolve_connection_url

    # Unset: the SQL source's own connection (a file source's joins must name one; the spec checks).
    conn_id: str = join.conn_id or str(getattr(spec.source, "conn_id", "warehouse_default"))
    url = resolve_connection_url(conn_id, settings)
    schema, _, name = join.table.rpartition(".")
    query = sa.select(sa.text("*")).select_from(sa.table(name, schema=schema or None))
    params: dict[str, Any] = {}
    if join.valid_from:
        query = query.where(sa.column(join.valid_from) < sa.bindparam("before"))
        params["before"] = before
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            table = pd.read_sql(query, conn, params=params)
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) else exc
        raise SourceError(
            f"join {join.name!r}: cannot read table {join.table!r} on connection {conn_id!r} "
            f"({getattr(cause, 'orig', cause)}); check joins[].table in verticals/{spec.name}.yaml and "
            f"AIRFLOW_CONN_{conn_id.upper()} (or run `python -m pipelines seed` for the demo warehouse). "
            "Nothing was extracted",
            vertical=spec.name,
        ) from exc
    finally:
        engine.dispose()
    needed = [
        *join.keys,
        *([join.valid_from] if join.valid_from else []),
        *([join.valid_to] if join.valid_to else []),
        *join.columns,
    ]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise SourceError(
            f"join {join.name!r}: table {join.table!r} has no column(s) {absent}; it has {sorted(table.columns)}",
            vertical=spec.name,
        )
    return table


def fetch_tables(spec: VerticalSpec, *, before: date, settings: Settings) -> dict[str, pd.DataFrame]:
    """Every join's table, by join name (`fetch_table`)."""
    return {join.name: fetch_table(spec, join, before=before, settings=settings) for join in spec.joins}


def index_tables(spec: VerticalSpec, tables: dict[str, pd.DataFrame]) -> dict[str, IndexedTable]:
    """`index_table` for every join of the spec: what a backfill of many days joins each day against."""
    return {join.name: index_table(tables[join.name], join) for join in spec.joins}


def integrate(
    events: pd.DataFrame, spec: VerticalSpec, tables: Mapping[str, pd.DataFrame | IndexedTable]
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Every join of the spec applied to ``events``; returns the rows and each join's coverage counts."""
    coverage: dict[str, dict[str, int]] = {}
    for join in spec.joins:
        if events.empty:
            events = events.assign(**{c: pd.Series(dtype=object) for c in (*join.columns, join.marker)})
            coverage[join.name] = {"rows": 0, "matched": 0}
            continue
        missing = [c for c in join.keys if c not in events.columns]
        if missing:
            raise SourceError(f"join {join.name!r}: the event rows have no key column(s) {missing}", vertical=spec.name)
        events = join_point_in_time(events, tables[join.name], join, event_time=spec.source.event_time)
        coverage[join.name] = {"rows": len(events), "matched": int(events[join.marker].sum())}
    return events, coverage


def check_join_coverage(frame: pd.DataFrame, spec: VerticalSpec) -> list[FailedExpectation]:
    """One failure per join whose share of rows with a partner is below ``min_coverage``."""
    from pipelines.data.quality import FailedExpectation

    failed = []
    for join in spec.joins:
        if frame.empty or join.marker not in frame.columns:
            continue
        matched = frame[join.marker].fillna(False).astype(bool)
        share = float(matched.mean())
        if share >= join.min_coverage:
            continue
        keys = frame.loc[~matched, join.keys].drop_duplicates().head(5)
        failed.append(
            FailedExpectation(
                expectation="expect_join_coverage_to_be_at_least",
                column=join.marker,
                expected={"min_coverage": join.min_coverage, "table": join.table, "on": list(join.keys)},
                observed=round(share, 4),
                unexpected_count=int((~matched).sum()),
                unexpected_percent=round(100 * (1 - share), 2),
                sample_values=[_key_token(v) for v in keys.iloc[:, 0]],
                sample_keys=[],
                notes=(
                    f"{int((~matched).sum())} of {len(frame)} rows found no row of {join.table} valid at their "
                    f"event time (join {join.name!r}): a key changed format, or the table is stale or incomplete"
                ),
                element_count=len(frame),
            )
        )
    return failed
