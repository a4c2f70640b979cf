"""Preprocessing fitted on the train split only: JSON-serialisable and deterministic.

Numeric columns are median-imputed and standardised; categorical columns are
one-hot encoded over the most frequent train categories plus an ``__other__``
column (unseen or rare values) and a ``__missing__`` column.  The fitted state
is plain numbers and strings, so it ships next to the weights as JSON and the
serving side needs no pickles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Features, Label
from pipelines.errors import TrainingError

FORMAT_VERSION = 1
MAX_CATEGORIES = 50
OTHER = "__other__"
MISSING = "__missing__"
# Below this the column is constant in train; dividing by it would blow values up.
_MIN_STD = 1e-12


class MissingFeatureError(TrainingError):
    """The frame lacks feature columns the preprocessor was fitted on."""

    def __init__(self, missing: list[str], available: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"frame is missing required feature column(s) {missing}; "
            f"it has {sorted(available)[:30]}. Check the source schema against the spec's features."
        )


@dataclass(frozen=True)
class NumericStats:
    name: str
    median: float
    mean: float
    std: float


@dataclass(frozen=True)
class CategoryVocab:
    name: str
    #: Sorted; every other non-missing value maps to ``__other__``.
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Preprocessor:
    """Fitted column transforms; build with `Preprocessor.fit`, never by hand."""

    numeric: tuple[NumericStats, ...]
    categorical: tuple[CategoryVocab, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: Features, *, max_categories: int = MAX_CATEGORIES) -> Preprocessor:
        """Learn imputation, scaling and vocabularies from ``frame`` (the train split)."""
        _require_columns(frame, features.all)
        numeric = tuple(_fit_numeric(name, frame[name]) for name in features.numeric)
        categorical = tuple(_fit_vocab(name, frame[name], max_categories) for name in features.categorical)
        return cls(numeric=numeric, categorical=categorical)

    @property
    def feature_names(self) -> list[str]:
        """Input columns, in the order the spec lists them (numeric first)."""
        return [s.name for s in self.numeric] + [v.name for v in self.categorical]

    @property
    def output_names(self) -> list[str]:
        """One name per output column of `transform`."""
        names = [s.name for s in self.numeric]
        for vocab in self.categorical:
            names += [f"{vocab.name}={c}" for c in (*vocab.categories, OTHER, MISSING)]
        return names

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode ``frame`` as a float32 matrix of shape (rows, len(output_names))."""
        _require_columns(frame, self.feature_names)
        blocks = [_transform_numeric(s, frame[s.name]) for s in self.numeric]
        blocks += [_transform_vocab(v, frame[v.name]) for v in self.categorical]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; `from_dict` restores an identical transform."""
        return {
            "format_version": FORMAT_VERSION,
            "numeric": [{"name": s.name, "median": s.median, "mean": s.mean, "std": s.std} for s in self.numeric],
            "categorical": [{"name": v.name, "categories": list(v.categories)} for v in self.categorical],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        """Rebuild a preprocessor written by `to_dict`."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise TrainingError(
                f"preprocessing state has format_version {version!r}; this code reads {FORMAT_VERSION}. "
                "Retrain the model with the current code."
            )
        numeric = tuple(
            NumericStats(str(d["name"]), float(d["median"]), float(d["mean"]), float(d["std"])) for d in data["numeric"]
        )
        categorical = tuple(
            CategoryVocab(str(d["name"]), tuple(str(c) for c in d["categories"])) for d in data["categorical"]
        )
        return cls(numeric=numeric, categorical=categorical)


def label_vector(frame: pd.DataFrame, label: Label) -> np.ndarray:
    """0/1 float32 targets: 1 where the label column equals ``label.positive``.

    Values are compared as normalised tokens so ``True``, ``1``, ``"true"`` and
    ``"1"`` match each other and ``"bad"`` matches ``"Bad"``: sources disagree on
    how they spell booleans, and the spec should not have to care.
    """
    if label.column not in frame.columns:
        raise TrainingError(f"frame has no label column {label.column!r}; columns are {sorted(frame.columns)[:30]}")
    column = frame[label.column]
    missing = int(column.isna().sum())
    if missing:
        raise TrainingError(
            f"label column {label.column!r} has {missing} missing value(s); "
            "the quality suite should reject such partitions — check its not-null expectation"
        )
    positive = _label_token(label.positive)
    return np.fromiter(
        (_label_token(v) == positive for v in column.to_numpy(dtype=object)), dtype=np.float32, count=len(column)
    )


# -- helpers -----------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, names: list[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise MissingFeatureError(missing, [str(c) for c in frame.columns])


def _as_float(series: pd.Series) -> np.ndarray:
    """Numeric values as float64 with NaN for missing and non-finite entries."""
    try:
        values = pd.to_numeric(series, errors="raise")
    except (ValueError, TypeError) as exc:
        # Coercing text to NaN would silently impute garbage: say which column is wrong.
        raise TrainingError(f"numeric feature {series.name!r} holds non-numeric values: {exc}") from exc
    array = values.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    array[~np.isfinite(array)] = np.nan
    return array


def _fit_numeric(name: str, series: pd.Series) -> NumericStats:
    values = _as_float(series)
    present = values[~np.isnan(values)]
    # An all-missing train column carries no signal; 0 keeps it inert instead of NaN.
    median = float(np.median(present)) if present.size else 0.0
    imputed = np.where(np.isnan(values), median, values)
    mean = float(imputed.mean()) if imputed.size else 0.0
    std = float(imputed.std()) if imputed.size else 1.0
    return NumericStats(name=name, median=median, mean=mean, std=std if std > _MIN_STD else 1.0)


def _transform_numeric(stats: NumericStats, series: pd.Series) -> np.ndarray:
    values = _as_float(series)
    imputed = np.where(np.isnan(values), stats.median, values)
    return ((imputed - stats.mean) / stats.std).reshape(-1, 1)


def _category_token(value: Any) -> str | None:
    """Canonical string for a category; None when missing.

    Integral floats read as ints, so a column that gained a NaN (int → float)
    still matches its train vocabulary.
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _tokens(series: pd.Series) -> list[str | None]:
    # Element-wise over plain objects: Series.map on a categorical dtype maps the
    # categories, not the rows, and would hand back NaN instead of None.
    return [_category_token(v) for v in series.to_numpy(dtype=object)]


def _fit_vocab(name: str, series: pd.Series, max_categories: int) -> CategoryVocab:
    counts: dict[str, int] = {}
    for token in _tokens(series):
        if token is not None:
            counts[token] = counts.get(token, 0) + 1
    # Most frequent first, ties broken by the value, so the vocabulary never depends on row order.
    kept = sorted(counts, key=lambda t: (-counts[t], t))[:max_categories]
    return CategoryVocab(name=name, categories=tuple(sorted(kept)))


def _transform_vocab(vocab: CategoryVocab, series: pd.Series) -> np.ndarray:
    width = len(vocab.categories) + 2
    position = {c: i for i, c in enumerate(vocab.categories)}
    other, missing = width - 2, width - 1
    idx = np.fromiter(
        (missing if t is None else position.get(t, other) for t in _tokens(series)),
        dtype=np.int64,
        count=len(series),
    )
    out = np.zeros((len(series), width), dtype=np.float64)
    out[np.arange(len(series)), idx] = 1.0
    return out


def _label_token(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    token = _category_token(value) or ""
    lowered = token.strip().lower()
    return {"true": "1", "false": "0"}.get(lowered, lowered)
