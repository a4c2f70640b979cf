"""Data preparation at extract time: cleaning, joins and the label rule, in that order.

Event columns are cleaned (and duplicates dropped) before the joins, so a key
is trimmed before it is matched; rules for joined columns run after them; the
label expression sees the cleaned, joined rows.  What each step changed is
returned as small counts for the stage record, the run report and lineage.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.data.cleaning import clean_frame
from pipelines.data.integration import fetch_tables, integrate
from pipelines.data.labels import apply_label

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipelines.config import Settings, VerticalSpec
    from pipelines.data.integration import IndexedTable


def prepare_rows(
    frame: pd.DataFrame, spec: VerticalSpec, *, before: date, settings: Settings
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Clean, join and label extracted rows (events before ``before``); returns rows and what changed."""
    if not needs_preparation(spec):
        return frame, {}
    # Tables are read even for an empty day: a missing table is an error every night, not only busy ones.
    tables = fetch_tables(spec, before=before, settings=settings)
    return prepare_frame(frame, spec, tables)


def needs_preparation(spec: VerticalSpec) -> bool:
    """Whether the spec declares any cleaning rule, join or label expression (else rows pass as pulled)."""
    return bool(spec.joins or spec.cleaning.columns or spec.cleaning.deduplicate is not None or spec.label.expression)


def prepare_frame(
    frame: pd.DataFrame, spec: VerticalSpec, tables: Mapping[str, pd.DataFrame | IndexedTable]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pure part of `prepare_rows`: ``tables`` holds each join's table by join name (or `index_tables`)."""
    joined = {c for j in spec.joins for c in j.columns}
    frame, counts = clean_frame(frame, spec, columns=set(spec.cleaning.columns) - joined)
    frame, coverage = integrate(frame, spec, tables)
    frame, later = clean_frame(frame, spec, columns=joined, dedupe=False)
    frame, label = apply_label(frame, spec)
    return frame, {"rows": len(frame), "cleaning": {**counts, **later}, "joins": coverage, "label": label}


def add_up(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-day preparation summaries into one (every count is additive)."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                total[key] = add_up([total.get(key, {}), value])
            else:
                total[key] = total.get(key, 0) + value
    return total
