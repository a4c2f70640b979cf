"""Label rules: the label as a condition over (joined) columns, and the label delay.

The expression is a restricted grammar checked with Python's own parser
(`pipelines.config.expression_inputs`, at spec load) before
pandas evaluates it (``DataFrame.eval``, python engine): column names,
literals, comparisons (``==``, ``<``, ``in [...]``), ``and`` / ``or`` / ``not``
and arithmetic.  No calls, attributes, subscripts or ``@`` variables, so a spec
can never run code.  Python's ``eval`` is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.errors import SpecError

if TYPE_CHECKING:
    from pipelines.config import Label, VerticalSpec


class LabelError(SpecError):
    """The spec's label rule cannot label the data (a missing input, a single class)."""

    #: The same rule on the same data fails again: fix the spec, do not retry.
    retryable = False


def evaluate_label(frame: pd.DataFrame, label: Label, *, vertical: str | None = None) -> pd.Series:
    """The label column ``label.expression`` gives on ``frame``: positive, negative or null.

    Null where any input is null: an outcome not (yet) recorded is no negative.
    """
    assert label.expression is not None
    missing = [c for c in label.inputs if c not in frame.columns]
    if missing:
        raise LabelError(
            f"label.expression reads column(s) {missing} that the (joined) rows lack; they have "
            f"{sorted(map(str, frame.columns))[:30]}",
            vertical=vertical,
        )
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=_dtype(label), name=label.column)
    inputs = frame[label.inputs]
    try:
        condition = inputs.eval(label.expression, engine="python", local_dict={}, global_dict={})
    except (ValueError, TypeError, SyntaxError, NameError, KeyError) as exc:
        raise LabelError(f"label.expression {label.expression!r} failed on the data: {exc}", vertical=vertical) from exc
    if not isinstance(condition, pd.Series) or not pd.api.types.is_bool_dtype(condition):
        raise LabelError(
            f"label.expression {label.expression!r} is not a condition (true/false per row)", vertical=vertical
        )
    values = pd.Series(
        [label.positive if hit else label.negative_value for hit in condition.to_numpy(dtype=bool)],
        index=frame.index,
        dtype=_dtype(label),
        name=label.column,
    )
    return values.mask(inputs.isna().any(axis=1))


def _dtype(label: Label) -> Any:
    if isinstance(label.positive, bool):
        return "boolean"
    return "str" if isinstance(label.positive, str) else "Int64"


def apply_label(frame: pd.DataFrame, spec: VerticalSpec) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``frame`` with the label column written by the spec's expression (unchanged without one)."""
    if spec.label.expression is None:
        return frame, {}
    if spec.label.column in frame.columns:
        raise LabelError(
            f"the source already has a column {spec.label.column!r}, which label.expression would overwrite; "
            "rename label.column or drop the expression",
            vertical=spec.name,
        )
    labels = evaluate_label(frame, spec.label, vertical=spec.name)
    out = frame.assign(**{spec.label.column: labels})
    return out, {"positive": int((labels == spec.label.positive).sum()), "unlabelled": int(labels.isna().sum())}


def labelled_until(spec: VerticalSpec, ds: str) -> date:
    """The last event day whose outcome is known on the night of ``ds`` (``label.delay_days`` before it)."""
    return date.fromisoformat(ds) - timedelta(days=spec.label.delay_days)


@dataclass(frozen=True)
class WindowLabels:
    """What labelling the training window did (recorded with the snapshot)."""

    rows: int
    positive: int
    awaiting_outcome: int
    labelled_until: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positive": self.positive,
            "awaiting_outcome": self.awaiting_outcome,
            "labelled_until": self.labelled_until,
        }


def label_window(frame: pd.DataFrame, spec: VerticalSpec, ds: str) -> tuple[pd.DataFrame, WindowLabels]:
    """The window as trained on: labelled by the current rule, without the days still awaiting their outcome.

    The expression is re-applied to the stored rows, so a changed rule labels the whole window
    the same way.  A rule that gives a single class over the window cannot be learned: a
    `LabelError` before anything is versioned.
    """
    until = labelled_until(spec, ds)
    days = pd.to_datetime(frame[spec.source.event_time], format="ISO8601").dt.date
    waiting = days > until
    kept = frame.loc[~waiting].reset_index(drop=True)
    if spec.label.expression is not None:
        kept = kept.assign(**{spec.label.column: evaluate_label(kept, spec.label, vertical=spec.name)})
    labels = kept[spec.label.column] if spec.label.column in kept.columns else pd.Series([], dtype=object)
    classes = labels.dropna().astype(str).unique()
    if spec.label.expression is not None and len(kept) and len(classes) < 2:
        rule = f"label.expression {spec.label.expression!r}" if spec.label.expression else "the label column"
        raise LabelError(
            f"{rule} gives a single class ({', '.join(classes) or 'none'}) on all {len(kept)} labelled rows of "
            f"the window up to {until}: nothing to learn. Check the rule in verticals/{spec.name}.yaml",
            vertical=spec.name,
            ds=ds,
        )
    positive = int((labels.astype(str) == str(spec.label.positive)).sum())
    return kept, WindowLabels(
        rows=len(kept), positive=positive, awaiting_outcome=int(waiting.sum()), labelled_until=until.isoformat()
    )
