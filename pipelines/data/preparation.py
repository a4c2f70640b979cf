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
from pipelines.data.integration import fetch_tables, integrate_batches
from pipelines.data.labels import apply_labels

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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
    [prepared] = prepare_frames([frame], spec, tables)
    return prepared


def prepare_frames(
    frames: Sequence[pd.DataFrame], spec: VerticalSpec, tables: Mapping[str, pd.DataFrame | IndexedTable]
) -> list[tuple[pd.DataFrame, dict[str, Any]]]:
    """`prepare_frame` of each frame (a backfill's days, one each), equal to it frame by frame.

    Cleaning stays per frame (a median imputed, a duplicate dropped, a dtype
    decided: all are the day's own).  What depends on each row alone runs once
    over every frame's rows: each join's lookup (`integrate_batches`) and the
    label rule (`apply_labels`).  A backfill of a year is then a few dozen
    pandas calls per day instead of a few hundred.
    """
    joined = {c for j in spec.joins for c in j.columns}
    cleaned = [clean_frame(frame, spec, columns=set(spec.cleaning.columns) - joined) for frame in frames]
    integrated = integrate_batches([frame for frame, _ in cleaned], spec, tables)
    later = [clean_frame(frame, spec, columns=joined, dedupe=False) for frame, _ in integrated]
    labelled = apply_labels([frame for frame, _ in later], spec)
    return [
        (frame, {"rows": len(frame), "cleaning": {**counts, **after}, "joins": coverage, "label": label})
        for (_, counts), (_, coverage), (_, after), (frame, label) in zip(
            cleaned, integrated, later, labelled, strict=True
        )
    ]


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
