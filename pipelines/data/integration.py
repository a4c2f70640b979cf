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
    from collections.abc import Mapping, Sequence

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
    [joined] = join_batches([events], table, join, event_time=event_time)
    return joined


def join_batches(
    batches: Sequence[pd.DataFrame], table: pd.DataFrame | IndexedTable, join: Join, *, event_time: str
) -> list[pd.DataFrame]:
    """`join_point_in_time` of each batch (a backfill's days), with one table lookup for all of them.

    Each batch comes back exactly as it would alone: its rows and dtypes, whatever
    the others hold.  The lookup (``pandas.merge_asof`` on key and event time; for
    a timeless table, the key's one row) is row by row, so it runs once over every
    batch's rows; only the assembly of each batch's frame is per batch.  A joined
    column takes its dtype as the batch alone decides it: through a point-in-time
    join it can always hold a null (``int64`` comes back ``float64``, ``bool`` as
    ``object``), as it always did; through a timeless join only when a row of the
    batch found no partner.
    """
    if not batches:
        return []
    indexed = table if isinstance(table, IndexedTable) else index_table(table, join)
    lefts = [_join_input(events, join) for events in batches]
    keys = _tokens(pd.DataFrame({c: _objects([left[c] for left in lefts]) for c in join.keys}), join.keys)
    partners = indexed.rows.reset_index(drop=True)
    if join.valid_from is None:
        found = pd.Index(partners["_key"]).get_indexer(keys)  # keys are unique: the spec's table was checked
    else:
        at = np.concatenate([_instants(left[event_time]).to_numpy() for left in lefts]).astype("datetime64[us]")
        found = _latest_valid(partners, join, keys, at)
    plain = {c: partners[c].array for c in join.columns}
    # A column that must hold a null takes the dtype pandas' own fill gives it (int64 -> float64, bool -> object).
    nullable = partners.loc[:, list(join.columns)].reindex([-1]).dtypes
    filled = {c: partners[c].astype(nullable[c]).array for c in join.columns}
    out: list[pd.DataFrame] = []
    offset = 0
    for left in lefts:
        positions = found[offset : offset + len(left)]
        offset += len(left)
        promote = join.valid_from is not None or bool((positions < 0).any())
        source = filled if promote else plain
        # The dtype named, not inferred: pandas would read an object column of text as ``str``.
        columns = {
            c: pd.Series(source[c].take(positions, allow_fill=promote), index=left.index, dtype=source[c].dtype)
            for c in join.columns
        }
        out.append(left.assign(**columns, **{join.marker: positions >= 0}))
    return out


def _join_input(events: pd.DataFrame, join: Join) -> pd.DataFrame:
    """``events`` ready to join: checked for clashes and keys, with a fresh row index."""
    clash = sorted(set(join.columns) & set(events.columns))
    if clash:
        raise SourceError(f"join {join.name!r}: column(s) {clash} already exist in the event rows; rename one")
    missing = [c for c in join.keys if c not in events.columns]
    if missing:
        raise SourceError(f"join {join.name!r}: the event rows have no key column(s) {missing}")
    return events.reset_index(drop=True)


def _objects(parts: list[pd.Series]) -> pd.Series:
    """One object Series of every part's values, each as its own part holds it (no common dtype forced)."""
    return pd.Series(np.concatenate([part.to_numpy(dtype=object) for part in parts]), dtype=object)


def _latest_valid(rows: pd.DataFrame, join: Join, keys: pd.Series, at: np.ndarray) -> np.ndarray:
    """Per event, the position in ``rows`` (an `IndexedTable`'s) of its key's latest row valid at ``at``; -1 for none.

    ``merge_asof`` backward by key: never a row valid only from later on; a row
    whose ``valid_to`` has come by the event's time is no partner either.
    """
    # Keys stay ``object`` on both sides: merge_asof refuses ``by`` columns of different dtypes.
    probe = pd.DataFrame(
        {"_key": keys.astype(object).reset_index(drop=True), "_at": at, "_event": np.arange(len(keys))}
    )
    probe = probe[probe["_key"].notna() & probe["_at"].notna()].sort_values("_at", kind="stable")
    table = pd.DataFrame({"_key": rows["_key"], "_from": rows["_from"], "_position": np.arange(len(rows))})
    matched = pd.merge_asof(probe, table, left_on="_at", right_on="_from", by="_key", direction="backward")
    matched = matched.dropna(subset=["_position"])
    positions = matched["_position"].to_numpy(dtype=np.int64)
    if join.valid_to:
        ended = _instants(rows[join.valid_to].take(positions)).to_numpy()
        live = np.isnat(ended) | (matched["_at"].to_numpy() < ended)
        matched, positions = matched[live], positions[live]
    found = np.full(len(keys), -1, dtype=np.int64)
    found[matched["_event"].to_numpy(dtype=np.int64)] = positions
    return found


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
    [(joined, coverage)] = integrate_batches([events], spec, tables)
    return joined, coverage


def integrate_batches(
    batches: Sequence[pd.DataFrame], spec: VerticalSpec, tables: Mapping[str, pd.DataFrame | IndexedTable]
) -> list[tuple[pd.DataFrame, dict[str, dict[str, int]]]]:
    """`integrate` of each batch (a backfill's days), each join's lookup shared by all (`join_batches`)."""
    frames = list(batches)
    coverages: list[dict[str, dict[str, int]]] = [{} for _ in frames]
    for join in spec.joins:
        busy = [i for i, frame in enumerate(frames) if not frame.empty]
        for i, frame in enumerate(frames):
            if frame.empty:
                frames[i] = frame.assign(**{c: pd.Series(dtype=object) for c in (*join.columns, join.marker)})
                coverages[i][join.name] = {"rows": 0, "matched": 0}
            elif missing := [c for c in join.keys if c not in frame.columns]:
                raise SourceError(
                    f"join {join.name!r}: the event rows have no key column(s) {missing}", vertical=spec.name
                )
        joined = join_batches([frames[i] for i in busy], tables[join.name], join, event_time=spec.source.event_time)
        for i, frame in zip(busy, joined, strict=True):
            frames[i] = frame
            coverages[i][join.name] = {"rows": len(frame), "matched": int(frame[join.marker].sum())}
    return list(zip(frames, coverages, strict=True))


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
