"""Cleaning rules declared per column in the spec (``cleaning:``), applied at extract time.

Every rule counts the values it changed, so the counts can go to the run
report and the lineage record: a rule that suddenly touches 40 % of the rows
is visible.  Rules run in a fixed order per column (trim, case, map, type,
convert, range, impute); ``deduplicate`` runs first, on the whole batch.  A
batch is one day's rows (`pipelines.data.sources.extract_days` prepares day by
day), so a backfilled day is cleaned exactly as the nightly run of that day.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.errors import SourceError

if TYPE_CHECKING:
    from pipelines.config import ColumnCleaning, VerticalSpec

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _changed(before: pd.Series, after: pd.Series) -> int:
    """Values that differ (a value that became or stopped being null counts)."""
    was, now = before.isna().to_numpy(), after.isna().to_numpy()
    left, right = before.to_numpy(dtype=object), after.to_numpy(dtype=object)
    both = np.flatnonzero(~was & ~now)
    return int((was != now).sum()) + sum(1 for i in both if left[i] != right[i])


def _strings(series: pd.Series, how: str) -> pd.Series:
    """Apply a ``str`` method to the string values only (numbers and nulls pass through)."""
    if pd.api.types.is_string_dtype(series) and not pd.api.types.is_object_dtype(series):
        return getattr(series.str, how)()
    return series.map(lambda v: getattr(v, how)() if isinstance(v, str) else v)


def _coerce(series: pd.Series, kind: str) -> pd.Series:
    if kind == "float":
        return pd.to_numeric(series, errors="coerce").astype("float64")
    if kind == "int":
        numbers = pd.to_numeric(series, errors="coerce")
        whole = numbers.where(numbers.isna() | (numbers % 1 == 0))
        return whole.astype("Int64")
    if kind == "str":
        return series.map(lambda v: v if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)).astype("str")
    tokens = series.map(lambda v: str(v).strip().lower() if not pd.isna(v) else None)
    return tokens.map(lambda t: True if t in _TRUE else (False if t in _FALSE else None)).astype("boolean")


def _coerced_away(before: pd.Series, after: pd.Series) -> int:
    """Values present before and null after: those that did not convert."""
    return int((before.notna().to_numpy() & after.isna().to_numpy()).sum())


def clean_column(frame: pd.DataFrame, column: str, rule: ColumnCleaning) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply one column's rules; returns the frame and ``{"<column>.<rule>": values changed}``."""
    out = frame.copy(deep=False)
    return out, _clean_column_in_place(out, column, rule)


def _clean_column_in_place(out: pd.DataFrame, column: str, rule: ColumnCleaning) -> dict[str, int]:
    """`clean_column` writing into ``out`` (a copy its caller owns): one copy per frame, not one per column."""
    series = out[column]
    counts: dict[str, int] = {}

    def step(name: str, new: pd.Series, count: int | None = None) -> None:
        nonlocal series
        counts[f"{column}.{name}"] = _changed(series, new) if count is None else count
        series = new

    if rule.trim:
        step("trim", _strings(series, "strip"))
    if rule.case:
        step("case", _strings(series, rule.case))
    if rule.map:
        hits = series.isin(list(rule.map))
        step("map", series.where(~hits, series.map(lambda v: rule.map.get(v, v) if isinstance(v, str) else v)))
    if rule.type:
        new = _coerce(series, rule.type)
        step("type", new, _coerced_away(series, new))
    if rule.convert:
        numbers = pd.to_numeric(series, errors="coerce")
        mask = numbers.notna()
        if rule.convert.when_column:
            mask &= out[rule.convert.when_column].astype(str) == str(rule.convert.when_value)
        converted = numbers.where(~mask, numbers * rule.convert.factor + rule.convert.offset)
        step("convert", converted, int(mask.sum()))
    if rule.range:
        numbers = pd.to_numeric(series, errors="coerce")
        low = -np.inf if rule.range.min is None else rule.range.min
        high = np.inf if rule.range.max is None else rule.range.max
        outside = (numbers < low) | (numbers > high)
        new = numbers.clip(low, high) if rule.range.action == "clip" else numbers.mask(outside)
        step("range", new, int(outside.sum()))
    out[column] = series
    if rule.impute:
        missing = series.isna()
        strategy = rule.impute.strategy
        if strategy == "indicator":
            out[f"{column}_missing"] = missing.astype("int8").to_numpy()
        elif strategy == "constant":
            out[column] = series.where(~missing, rule.impute.value)
        else:  # median of this batch's (the day's) present values; all missing: nothing to impute from
            present = pd.to_numeric(series, errors="coerce").dropna()
            if len(present):
                out[column] = series.where(~missing, float(present.median()))
            missing = missing & bool(len(present))
        counts[f"{column}.impute_{strategy}"] = int(missing.sum())
    return counts


def deduplicate(frame: pd.DataFrame, spec: VerticalSpec) -> tuple[pd.DataFrame, int]:
    """Keep the latest row per key (``cleaning.deduplicate``); returns the frame and rows dropped."""
    rule = spec.cleaning.deduplicate
    if rule is None or frame.empty:
        return frame, 0
    key = rule.key or [spec.key]
    order = rule.latest_by or spec.source.event_time
    # Stable sort: rows tied on ``latest_by`` keep the source's order and the last one wins.
    ordered = frame.sort_values(order, kind="stable")
    kept = ordered.drop_duplicates(subset=key, keep="last").sort_index()
    return kept.reset_index(drop=True), len(frame) - len(kept)


def clean_frame(
    frame: pd.DataFrame, spec: VerticalSpec, *, columns: set[str] | None = None, dedupe: bool = True
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the spec's rules for ``columns`` (all when None); counts per rule, zeros included.

    A rule for a column the rows lack is a `SourceError` naming it: the
    source changed shape, and cleaning nothing would hide that.
    """
    counts: dict[str, int] = {}
    if dedupe and spec.cleaning.deduplicate is not None:
        frame, dropped = deduplicate(frame, spec)
        counts["deduplicate"] = dropped
    rules = {c: r for c, r in spec.cleaning.columns.items() if columns is None or c in columns}
    if frame.empty:
        return frame, counts
    absent = sorted(c for c in rules if c not in frame.columns)
    if absent:
        raise SourceError(
            f"cleaning rules name column(s) {absent} that the rows lack; "
            f"they have {sorted(map(str, frame.columns))[:30]}",
            vertical=spec.name,
        )
    frame = frame.copy(deep=False)
    for column, rule in rules.items():
        counts.update(_clean_column_in_place(frame, column, rule))
    return frame, counts
