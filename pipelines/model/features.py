"""Preprocessing fitted on the train split only: JSON-serialisable and deterministic.

Numeric columns are median-imputed and standardised; categorical columns are
one-hot encoded over the most frequent train categories plus an ``__other__``
column (unseen or rare values) and a ``__missing__`` column.  The fitted state
is plain numbers and strings, so it ships next to the weights as JSON and the
serving side needs no pickles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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

    retryable = False  # the source schema and the spec disagree until one of them changes

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
        # One float32 matrix filled column by column: at millions of rows a float64 block per
        # column, concatenated and then cast, held the matrix three times over.
        out = np.zeros((len(frame), len(self.output_names)), dtype=np.float32)
        for i, stats in enumerate(self.numeric):
            out[:, i] = _transform_numeric(stats, frame[stats.name])
        column = len(self.numeric)
        for vocab in self.categorical:
            out[np.arange(len(frame)), column + _vocab_index(vocab, frame[vocab.name])] = 1.0
            column += len(vocab.categories) + 2
        return out

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
    return _per_distinct_value(column, lambda v: _label_token(v) == positive).astype(np.float32)


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
    """Imputed and standardised in float64 (the caller stores it as float32)."""
    values = _as_float(series)
    np.copyto(values, stats.median, where=np.isnan(values))
    values -= stats.mean
    values /= stats.std
    return values


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


def _per_distinct_value(series: pd.Series, fn: Callable[[Any], Any]) -> np.ndarray:
    """``fn`` of every row's value, calling ``fn`` once per distinct value (an object array).

    A column has a handful of distinct categories over millions of rows.  ``pd.factorize``
    finds them in C; but it treats values that compare equal as one (``True == 1 == 1.0``)
    although their tokens differ ("True" vs "1"), so a column of mixed Python objects is
    mapped row by row instead, as is a missing value (``fn(None)``).
    """
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) not in ("string", "empty"):
        return np.array([fn(v) for v in series.to_numpy(dtype=object)], dtype=object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = np.array([fn(v) for v in uniques.to_numpy(dtype=object)] + [fn(None)], dtype=object)
    return mapped[codes]  # code -1 (missing) picks the last entry


def _tokens(series: pd.Series) -> np.ndarray:
    """Each row's category token (None: missing), an object array."""
    return _per_distinct_value(series, _category_token)


def _fit_vocab(name: str, series: pd.Series, max_categories: int) -> CategoryVocab:
    # value_counts drops the missing (None) tokens.
    counts = {str(t): int(n) for t, n in pd.Series(_tokens(series), dtype=object).value_counts().items()}
    # Most frequent first, ties broken by the value, so the vocabulary never depends on row order.
    kept = sorted(counts, key=lambda t: (-counts[t], t))[:max_categories]
    return CategoryVocab(name=name, categories=tuple(sorted(kept)))


def _vocab_index(vocab: CategoryVocab, series: pd.Series) -> np.ndarray:
    """Each row's one-hot column within the vocabulary's block: a category, ``__other__`` or ``__missing__``."""
    width = len(vocab.categories) + 2
    position = {c: i for i, c in enumerate(vocab.categories)}
    other, missing = width - 2, width - 1

    def index(value: Any) -> int:
        token = _category_token(value)
        return missing if token is None else position.get(token, other)

    return _per_distinct_value(series, index).astype(np.int64)


def _label_token(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    token = _category_token(value) or ""
    lowered = token.strip().lower()
    return {"true": "1", "false": "0"}.get(lowered, lowered)
