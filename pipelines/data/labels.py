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
    from collections.abc import Sequence

    from pipelines.config import Label, VerticalSpec


class LabelError(SpecError):
    """The spec's label rule cannot label the data (a missing input, a single class)."""

    #: The same rule on the same data fails again: fix the spec, do not retry.
    retryable = False


def evaluate_label(frame: pd.DataFrame, label: Label, *, vertical: str | None = None) -> pd.Series:
    """The label column ``label.expression`` gives on ``frame``: positive, negative or null.

    Null where any input is null: an outcome not (yet) recorded is no negative.
    """
    [labels] = evaluate_labels([frame], label, vertical=vertical)
    return labels


def evaluate_labels(frames: Sequence[pd.DataFrame], label: Label, *, vertical: str | None = None) -> list[pd.Series]:
    """`evaluate_label` of each frame (a backfill's days), with one evaluation per set of input dtypes.

    The rule is row by row, so frames whose inputs have the same dtypes are
    evaluated together (``DataFrame.eval`` parses the expression each call),
    and each frame gets exactly the labels it would get alone.
    """
    assert label.expression is not None
    labels: list[pd.Series | None] = [None] * len(frames)
    alike: dict[tuple[Any, ...], list[int]] = {}
    for i, frame in enumerate(frames):
        missing = [c for c in label.inputs if c not in frame.columns]
        if missing:
            raise LabelError(
                f"label.expression reads column(s) {missing} that the (joined) rows lack; they have "
                f"{sorted(map(str, frame.columns))[:30]}",
                vertical=vertical,
            )
        if frame.empty:
            labels[i] = pd.Series([], index=frame.index, dtype=_dtype(label), name=label.column)
        else:
            alike.setdefault(tuple(frame[c].dtype for c in label.inputs), []).append(i)
    for members in alike.values():
        inputs = pd.concat([frames[i][label.inputs] for i in members], ignore_index=True)
        values = _label_values(inputs, label, vertical=vertical).array
        start = 0
        for i in members:
            end = start + len(frames[i])
            labels[i] = pd.Series(values[start:end], index=frames[i].index, dtype=values.dtype, name=label.column)
            start = end
    return [series for series in labels if series is not None]


def _label_values(inputs: pd.DataFrame, label: Label, *, vertical: str | None) -> pd.Series:
    assert label.expression is not None
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
        index=inputs.index,
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
    [labelled] = apply_labels([frame], spec)
    return labelled


def apply_labels(frames: Sequence[pd.DataFrame], spec: VerticalSpec) -> list[tuple[pd.DataFrame, dict[str, Any]]]:
    """`apply_label` of each frame (a backfill's days), the rule evaluated once for all (`evaluate_labels`)."""
    if spec.label.expression is None:
        return [(frame, {}) for frame in frames]
    for frame in frames:
        if spec.label.column in frame.columns:
            raise LabelError(
                f"the source already has a column {spec.label.column!r}, which label.expression would overwrite; "
                "rename label.column or drop the expression",
                vertical=spec.name,
            )
    labelled = []
    for frame, labels in zip(frames, evaluate_labels(frames, spec.label, vertical=spec.name), strict=True):
        counts = {"positive": int((labels == spec.label.positive).sum()), "unlabelled": int(labels.isna().sum())}
        labelled.append((frame.assign(**{spec.label.column: labels}), counts))
    return labelled


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
