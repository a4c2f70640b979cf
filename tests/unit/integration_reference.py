"""The point-in-time join as it was before backfills looked partners up once for all days (the reference).

A copy of `pipelines.data.integration.join_point_in_time` as it joined one
frame at a time (``merge_asof`` per frame, then a concat with the rows that had
no usable key or time); only its input checks are the package's own.
`test_join_batches.py` checks that the batched join gives every frame exactly
what this gave it: rows, values and dtypes.  Test-only code: nothing in
`pipelines` imports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Unchanged by the rewrite: the old code and the new share them.
from pipelines.config import Join
from pipelines.data.integration import IndexedTable, _instants, _join_input, _tokens, index_table


def join_point_in_time(
    events: pd.DataFrame, table: pd.DataFrame | IndexedTable, join: Join, *, event_time: str
) -> pd.DataFrame:
    _join_input(events, join)  # the same clash and key checks, shared with the new join
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
