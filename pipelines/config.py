"""Typed vertical specs and process settings.

A vertical is declared by ``verticals/<name>.yaml`` (validated here), a suite
``expectations/<name>.json`` and a source; no Python per vertical.  Settings
come from environment variables only, so the embedded defaults and production
differ by configuration, never by code.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.errors import InvalidArgumentError, PipelineError, SpecError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VERTICAL_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
#: Longest piece of a rejected name echoed back in an error (a hostile one may be huge).
_ECHO_CHARS = 40
#: A run's stages in order, each a function of `pipelines.stages` and a task of the DAG (a command
#: line lists them without importing what the stages import).
STAGES = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")
GATE_METRICS = ("accuracy", "recall", "f1", "precision", "auroc")
GateMetric = Literal["accuracy", "recall", "f1", "precision", "auroc"]
ReportOutcome = Literal["promoted", "rejected"]
Profile = Literal["production", "experiment"]
PROFILES: tuple[Profile, ...] = ("production", "experiment")


class _Strict(BaseModel):
    # Unknown keys are typos in a reviewed file: reject them loudly.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quoted_date(value: object, info: ValidationInfo) -> object:
    # YAML reads an unquoted 2024-01-01 as a date, which DVC (the specs are its params) cannot store.
    # Only the spec file is held to that: specs rebuilt in code (e.g. a tuned copy) carry dates.
    if isinstance(value, date) and (info.context or {}).get(SPEC_FILE_CONTEXT):
        raise ValueError(f'write the date in quotes ("{value.isoformat()}"): DVC reads the specs as params')
    return value


#: Validation context key set by `load_spec_file` (rules that only a spec file must follow).
SPEC_FILE_CONTEXT = "spec_file"
#: ``source.start``: a quoted ``"YYYY-MM-DD"`` in the spec file.
SourceStart = Annotated[date | None, BeforeValidator(_quoted_date)]


class SqlSource(_Strict):
    """Rows come from a table (or view) reached through SQLAlchemy."""

    kind: Literal["sql"] = "sql"
    #: Connection id, resolved like Airflow does: ``AIRFLOW_CONN_<ID>`` (URI or
    #: JSON) or, when unset, the embedded demo warehouse.
    conn_id: str = "warehouse_default"
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
    event_time: str = "event_date"
    #: First day the source has data: earlier logical dates are refused and the
    #: training window never reaches back before it.  Unset: `EARLIEST_DS`.
    start: SourceStart = None


class FileSource(_Strict):
    """Rows come from one file per day in a bucket (any fsspec URL)."""

    kind: Literal["files"] = "files"
    #: fsspec URL template; ``{ds}`` is the logical date (YYYY-MM-DD).
    url: str
    format: Literal["csv", "parquet"] = "parquet"
    event_time: str = "event_date"
    #: First day the source has data (see `SqlSource.start`).
    start: SourceStart = None

    @model_validator(mode="after")
    def _has_ds(self) -> FileSource:
        if "{ds}" not in self.url:
            raise ValueError("source.url must contain '{ds}' so each day maps to one file")
        return self


#: The node types a label expression may hold (see `expression_inputs`).
_LABEL_GRAMMAR = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
)


@cache
def expression_inputs(expression: str) -> list[str]:
    """The column names a label ``expression`` reads, sorted; `ValueError` naming what is not allowed.

    Only the grammar is checked, with Python's parser: nothing is ever run by it.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"label.expression {expression!r} does not parse: {exc.msg} (column {exc.offset})") from exc
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _LABEL_GRAMMAR):
            raise ValueError(
                f"label.expression {expression!r}: {type(node).__name__} is not allowed; use column names, "
                "literals, comparisons, and/or/not and arithmetic"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, str | int | float | bool):
            raise ValueError(f"label.expression {expression!r}: literal {node.value!r} is not allowed")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise ValueError(f"label.expression {expression!r}: name {node.id!r} is not allowed")
            if node.id not in ("True", "False"):
                names.add(node.id)
    if not names:
        raise ValueError(f"label.expression {expression!r} reads no column")
    return sorted(names)


LabelValue = str | int | bool


class Label(_Strict):
    """What is predicted: a source column, or a rule over (joined) columns, and when it is known."""

    #: The label column: read from the source, or written by ``expression``.
    column: str
    positive: LabelValue
    #: A condition over (joined) source columns, e.g. ``math_score < 454 and grade == 'K'``:
    #: rows where it holds get ``positive``, the others ``negative`` (null where an input is
    #: null).  A restricted grammar (`pipelines.data.labels`), evaluated by ``DataFrame.eval``.
    expression: str | None = None
    #: The label value where ``expression`` is false (defaults to ``not positive`` for a boolean).
    negative: LabelValue | None = None
    #: Days after the event until the outcome is known: the latest ``delay_days`` days of the
    #: window are left out of training and holdout until their outcome is in.
    delay_days: Annotated[int, Field(ge=0, le=365)] = 0

    @model_validator(mode="after")
    def _rule(self) -> Label:
        if self.expression is None:
            if self.negative is not None:
                raise ValueError("label.negative is only used with label.expression")
            return self
        inputs = expression_inputs(self.expression)  # raises ValueError naming what does not parse
        if self.column in inputs:
            raise ValueError(f"label.expression reads the label column {self.column!r} it writes")
        if self.negative is None and not isinstance(self.positive, bool):
            raise ValueError("label.negative: name the value rows get where label.expression is false")
        if self.negative is not None and str(self.negative) == str(self.positive):
            raise ValueError("label.negative must differ from label.positive")
        return self

    @property
    def inputs(self) -> list[str]:
        """The source columns ``expression`` reads (empty for a plain label column)."""
        return expression_inputs(self.expression) if self.expression else []

    @property
    def negative_value(self) -> LabelValue:
        if self.negative is not None:
            return self.negative
        return not self.positive if isinstance(self.positive, bool) else f"not_{self.positive}"


_COLUMN = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Join(_Strict):
    """An extra table joined to the event rows by key, point-in-time correct (`pipelines.data.integration`)."""

    #: Names the join in reports and its marker column ``joined_<name>``.
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    #: Connection id of the table (``AIRFLOW_CONN_<ID>``); unset: the SQL source's own.
    conn_id: str | None = None
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
    #: Key column(s), named the same in the event rows and the table.
    keys: Annotated[list[_COLUMN], Field(min_length=1)]
    #: Column of the table from which a row is valid (a date); an event takes the latest row
    #: valid at its event time, never a later one.  Unset: one timeless row per key.
    valid_from: _COLUMN | None = None
    #: Column of the table until which (exclusive) a row is valid; null: still valid.
    valid_to: _COLUMN | None = None
    #: Columns the join adds to every event row.
    columns: Annotated[list[_COLUMN], Field(min_length=1)]
    #: Smallest share of a batch's rows that must find a partner, else the day is blocked.
    min_coverage: Annotated[float, Field(ge=0, le=1)] = 0.95

    @property
    def marker(self) -> str:
        """The boolean column saying whether a row found its partner (the coverage check reads it)."""
        return f"joined_{self.name}"

    @model_validator(mode="after")
    def _distinct(self) -> Join:
        clash = sorted(set(self.keys) & set(self.columns))
        if clash:
            raise ValueError(f"join {self.name!r}: key column(s) {clash} are also listed in columns")
        if self.valid_to and not self.valid_from:
            raise ValueError(f"join {self.name!r}: valid_to needs valid_from")
        return self


class Impute(_Strict):
    #: ``median`` of the day's present values (extract prepares one day at a time), a ``constant``,
    #: or ``indicator``: a 0/1 column ``<column>_missing`` beside the column (the model's
    #: preprocessing imputes the value).
    strategy: Literal["median", "constant", "indicator"]
    value: str | float | int | bool | None = None

    @model_validator(mode="after")
    def _value(self) -> Impute:
        if (self.strategy == "constant") != (self.value is not None):
            raise ValueError("impute.value is required with strategy constant and only there")
        return self


class ValueRange(_Strict):
    min: float | None = None
    max: float | None = None
    #: ``clip`` to the bound, or ``null`` the value out (an impossible reading).
    action: Literal["clip", "null"] = "null"


class UnitConversion(_Strict):
    """``value * factor + offset``, on every row or only where ``when_column`` equals ``when_value``."""

    factor: float
    offset: float = 0.0
    when_column: _COLUMN | None = None
    when_value: str | int | float | None = None

    @model_validator(mode="after")
    def _when(self) -> UnitConversion:
        if (self.when_column is None) != (self.when_value is None):
            raise ValueError("convert: set both when_column and when_value, or neither")
        return self


class ColumnCleaning(_Strict):
    """Rules for one column, applied in this order; each counts the values it changed."""

    trim: bool = False
    case: Literal["lower", "upper", "title"] | None = None
    #: Known variants -> canonical value (matched after trim and case).
    map: dict[str, str | int | float | bool] = Field(default_factory=dict)
    #: Coerce to this type; a value that does not convert becomes null (counted).
    type: Literal["float", "int", "str", "bool"] | None = None
    convert: UnitConversion | None = None
    range: ValueRange | None = None
    impute: Impute | None = None


class Deduplicate(_Strict):
    """Keep one row per key: the latest by ``latest_by``."""

    #: Key column(s); unset: the spec's ``key``.
    key: list[_COLUMN] | None = None
    #: Column ordering the duplicates (the last wins); unset: the source's event time.
    latest_by: _COLUMN | None = None


class Cleaning(_Strict):
    """Cleaning at extract time (`pipelines.data.cleaning`), before the suite sees the rows."""

    deduplicate: Deduplicate | None = None
    columns: dict[str, ColumnCleaning] = Field(default_factory=dict)

    @property
    def indicator_columns(self) -> list[str]:
        return [
            f"{column}_missing"
            for column, rule in self.columns.items()
            if rule.impute is not None and rule.impute.strategy == "indicator"
        ]


class Features(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _non_empty(self) -> Features:
        if not self.numeric and not self.categorical:
            raise ValueError("features: list at least one numeric or categorical column")
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise ValueError(f"features listed as both numeric and categorical: {sorted(overlap)}")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class Window(_Strict):
    """Training window assembled from stored daily partitions."""

    train_days: Annotated[int, Field(ge=7, le=3650)] = 365
    #: The most recent days of the window, held out for evaluation (time split).
    holdout_days: Annotated[int, Field(ge=1)] = 60
    #: The days just before the holdout, kept out of fitting for early stopping,
    #: tuning and choosing the decision threshold; 0: no validation split.
    validation_days: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _holdout_inside(self) -> Window:
        if self.holdout_days >= self.train_days:
            raise ValueError("window.holdout_days must be smaller than window.train_days")
        if self.validation_days and self.holdout_days + self.validation_days >= self.train_days:
            raise ValueError("window.holdout_days + window.validation_days must be smaller than window.train_days")
        return self


class Distribution(_Strict):
    """Label-mix and per-feature distribution checks of a batch against a rolling reference.

    The reference is the stored per-day profiles of the validated days before
    the batch, so a night costs one day of data plus small JSON files.  A
    finding blocks only when it is both *material* (beyond the effect size
    below) and *significant* (p below ``alpha`` split over every test run).
    """

    enabled: bool = True
    #: Calendar days before the batch whose validated partitions form the reference.
    reference_days: Annotated[int, Field(ge=7, le=365)] = 28
    #: Fewer reference rows than this (e.g. the first run) and nothing is compared.
    min_reference_rows: Annotated[int, Field(ge=10)] = 200
    #: A batch smaller than this is pooled with the latest validated days (at most
    #: ``max_pool_days``) so a 3-row day is judged together with its recent past.
    min_batch_rows: Annotated[int, Field(ge=1)] = 30
    max_pool_days: Annotated[int, Field(ge=0, le=60)] = 7
    #: Family-wise significance level of one night's tests (Bonferroni-split).
    alpha: Annotated[float, Field(gt=0, le=0.2)] = 0.001
    #: Absolute change of the positive-label share that is material.
    label_share_change: Annotated[float, Field(gt=0, le=1)] = 0.25
    #: Absolute change of a feature's null share that is material.
    null_share_change: Annotated[float, Field(gt=0, le=1)] = 0.2
    #: Mean shift of a numeric feature, in reference standard deviations, that is material.
    mean_shift_sd: Annotated[float, Field(gt=0)] = 0.5
    #: Total variation distance between category shares that is material.
    category_shift: Annotated[float, Field(gt=0, le=1)] = 0.35
    #: Features exempt from the distribution tests (e.g. a column that trends by design).
    exempt: list[str] = Field(default_factory=list)


class DriftThresholds(_Strict):
    """PSI levels of one feature: at ``warn`` the run is told, at ``block`` it stops before training."""

    warn: Annotated[float, Field(gt=0)] = 0.1
    block: Annotated[float, Field(gt=0)] = 0.25

    @model_validator(mode="after")
    def _ordered(self) -> DriftThresholds:
        if self.warn > self.block:
            raise ValueError("warn must not be above block")
        return self


class Drift(DriftThresholds):
    """Per-feature PSI of the newest days of the window against the champion's training data.

    Checked by the snapshot stage (`pipelines.data.drift`); the reference is the
    DVC data version the current champion was trained on (its registry lineage).
    No champion yet (a first run) and there is nothing to compare: said so.
    """

    enabled: bool = True
    #: The newest days of tonight's window compared with the champion's data; None: the whole
    #: window (which overlaps the champion's almost entirely, so it moves slowly).
    recent_days: Annotated[int, Field(ge=1, le=3650)] | None = 30
    #: Fewer rows than this in those days (or in the champion's data) and nothing is compared.
    min_rows: Annotated[int, Field(ge=10)] = 200
    #: Quantile bins of a numeric feature, cut on the champion's data; the most frequent
    #: categories kept per categorical (the rest pooled); missing values are one more bin.
    bins: Annotated[int, Field(ge=2, le=50)] = 10
    #: Per-feature levels instead of ``warn``/``block`` (e.g. a feature that moves by design).
    features: dict[str, DriftThresholds] = Field(default_factory=dict)
    #: Features not checked at all.
    exempt: list[str] = Field(default_factory=list)

    def thresholds(self, feature: str) -> tuple[float, float]:
        """(warn, block) for ``feature``."""
        own = self.features.get(feature)
        return (own.warn, own.block) if own else (self.warn, self.block)


class Quality(_Strict):
    #: Suite file name under ``expectations/`` (defaults to the vertical name); a plain name, never a path.
    suite: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")] | None = None
    #: Row-count bounds per day; the suite's row-count check scales them by the
    #: number of days validated at once (one at night, more on a first backfill).
    min_rows_per_day: Annotated[int, Field(ge=0)] = 1
    max_rows_per_day: Annotated[int, Field(ge=1)] = 100_000
    #: Columns the source carries that the pipeline ignores (neither key, event
    #: time, label, feature nor PII).  Any other undeclared column blocks the day.
    ignored_columns: list[str] = Field(default_factory=list)
    #: What a column the spec does not declare does: ``block`` the day (it may be
    #: a leaked outcome or a renamed feature) or ``allow`` it (ignored).
    unexpected_columns: Literal["block", "allow"] = "block"
    #: A feature (or undeclared column) that maps one-to-one onto the label in a
    #: batch of at least this many rows, with both classes present, is a leak.
    leak_min_rows: Annotated[int, Field(ge=2)] = 20
    distribution: Distribution = Distribution()
    #: Drift against the champion's training data (PSI per feature), warn and block levels.
    drift: Drift = Drift()


class ThresholdChoice(_Strict):
    """How the decision threshold is chosen on the validation split (``window.validation_days``)."""

    #: ``fixed``: ``model.decision_threshold`` as written; ``max_f1``; ``max_recall``
    #: subject to precision >= ``min_precision``; ``max_precision`` subject to recall
    #: >= ``min_recall``; ``min_cost``: fewest ``cost_fp`` * FP + ``cost_fn`` * FN.
    objective: Literal["fixed", "max_f1", "max_recall", "max_precision", "min_cost"] = "fixed"
    min_precision: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_recall: Annotated[float, Field(ge=0, le=1)] = 0.0
    cost_fp: Annotated[float, Field(ge=0)] = 1.0
    cost_fn: Annotated[float, Field(ge=0)] = 1.0
    #: Map scores to probabilities on validation first: ``platt`` (a logistic fit
    #: of the logit) or ``temperature`` (one scale); both keep the ranking (AUROC).
    calibration: Literal["none", "platt", "temperature"] = "none"


class EarlyStopping(_Strict):
    """Stop when the validation loss has not improved for ``patience`` epochs; keep the best epoch."""

    patience: Annotated[int, Field(ge=1, le=100)] = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class WarmStart(_Strict):
    """Start from the champion's weights when its preprocessing and architecture fit this spec."""

    enabled: bool = False
    #: Fine-tuning epochs (instead of ``model.epochs``) when warm.
    epochs: Annotated[int, Field(ge=1, le=1000)] = 5
    #: Fine-tuning learning rate as a fraction of ``model.learning_rate``.
    learning_rate_scale: Annotated[float, Field(gt=0, le=1)] = 0.3


class SearchSpace(_Strict):
    """What a tuning sweep may vary (each list: the choices; each pair: [low, high])."""

    width: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [16, 32, 64, 128])
    depth: list[Annotated[int, Field(ge=1, le=6)]] = Field(default_factory=lambda: [1, 2, 3])
    dropout: tuple[float, float] = (0.0, 0.4)
    learning_rate: tuple[float, float] = (3e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    batch_size: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 128, 256, 512])
    epochs: tuple[int, int] = (5, 40)
    wide: list[bool] = Field(default_factory=lambda: [False, True])
    batch_norm: list[bool] = Field(default_factory=lambda: [False, True])
    embedding_dim: list[Annotated[int, Field(ge=0, le=64)]] = Field(default_factory=lambda: [0, 4, 8])


SweepWhen = Literal["weekly", "after_rejection", "always", "first_run"]


class Tuning(_Strict):
    """An Optuna sweep on the validation split, within a budget, on some nights only."""

    enabled: bool = False
    #: Nights that sweep: ``weekly`` (on ``weekday``, 0 = Monday), ``after_rejection``
    #: (the last decision rejected), ``first_run`` (no tuned config yet), ``always``.
    #: Other nights reuse the best configuration found so far.
    when: list[SweepWhen] = Field(default_factory=lambda: list[SweepWhen](["weekly", "first_run"]))
    weekday: Annotated[int, Field(ge=0, le=6)] = 6
    trials: Annotated[int, Field(ge=1, le=1000)] = 20
    #: Wall-clock budget of one sweep; trials still running at the end finish.
    timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] = 600
    seed: int = 0
    #: What a trial is scored on (validation): ``auroc`` or the validation ``loss``.
    metric: Literal["auroc", "loss"] = "auroc"
    #: Rows of the fit and of the validation split a trial trains and is scored on: a sample
    #: seeded by ``seed`` (None: all).  At millions of rows it keeps a trial, and so the sweep,
    #: within ``timeout_seconds`` (a trial still running at the timeout finishes); the model
    #: itself still trains on the whole fit split.
    max_rows: Annotated[int, Field(ge=100)] | None = None
    space: SearchSpace = SearchSpace()


class Model(_Strict):
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [32, 16])
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    epochs: Annotated[int, Field(ge=1, le=1000)] = 20
    batch_size: Annotated[int, Field(ge=1)] = 256
    #: Rows one epoch trains on: a fresh sample of the fit split each epoch, seeded by
    #: (``seed``, epoch) (None: every row, every epoch).  A compute budget for a large
    #: window: an epoch then costs the same whatever the window's size, and over the
    #: epochs every row is still seen.
    samples_per_epoch: Annotated[int, Field(ge=1)] | None = None
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    seed: int = 42
    #: Weight the positive class by the inverse class ratio of the train split.
    balance_classes: bool = True
    #: Probability at or above which a row is predicted positive (``threshold.objective: fixed``).
    decision_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    #: Choose the threshold (and calibrate) on the validation split instead.
    threshold: ThresholdChoice = ThresholdChoice()
    #: Stop on the validation loss; None trains all ``epochs``.
    early_stopping: EarlyStopping | None = None
    #: A linear ("wide") part beside the deep one: the net contains logistic regression.
    wide: bool = False
    #: Batch normalisation after each hidden linear layer.
    batch_norm: bool = False
    #: Embed categoricals with at least ``embedding_min_categories`` values in
    #: ``embedding_dim`` dimensions before the deep part; 0: one-hot straight in.
    embedding_dim: Annotated[int, Field(ge=0, le=64)] = 0
    embedding_min_categories: Annotated[int, Field(ge=2)] = 10
    #: Most frequent categories kept per categorical column (the rest: ``__other__``).
    max_categories: Annotated[int, Field(ge=1, le=10_000)] = 50
    warm_start: WarmStart = WarmStart()
    tuning: Tuning = Tuning()


#: What a baseline comparison may use.  ``balanced_accuracy`` (mean of recall
#: and specificity) is the one a constant predictor cannot game: 0.5 for any
#: majority class, where plain accuracy would be the majority's share.
BaselineMetric = Literal["accuracy", "balanced_accuracy", "recall", "precision", "f1", "auroc"]
_Unit = Annotated[float, Field(ge=0, le=1)]


class Comparison(_Strict):
    """How the challenger is compared with the champion (and the logistic baseline) on the same holdout rows."""

    #: ``bootstrap``: paired bootstrap CI of (challenger - champion) per metric
    #: (DeLong's CI for AUROC); ``mcnemar``: McNemar's mid-p test for accuracy
    #: and recall (the intervals for the others); ``point``: point estimates
    #: only (tolerance alone decides).
    method: Literal["bootstrap", "mcnemar", "point"] = "bootstrap"
    #: The primary metrics compared with the champion; unset: every metric in
    #: ``thresholds`` or ``champion_tolerance``.
    metrics: Annotated[list[GateMetric], Field(min_length=1)] | None = None
    #: Two-sided confidence of the interval; a drop is significant when the
    #: whole interval lies below 0 (one-sided level (1 - confidence) / 2).
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    resamples: Annotated[int, Field(ge=200, le=100_000)] = 1000
    #: Seed of the resampling: the same holdout and seed give the same interval.
    seed: int = 0
    #: Below either size the paired test is not trustworthy; ``too_small`` decides.
    min_rows: Annotated[int, Field(ge=1)] = 200
    min_positives: Annotated[int, Field(ge=0)] = 20
    #: ``keep_champion``: reject the challenger; ``point_estimate``: decide on
    #: the tolerances alone, as ``method: point`` does.
    too_small: Literal["keep_champion", "point_estimate"] = "keep_champion"


class SliceGate(_Strict):
    """Floors the challenger must reach within every large-enough value of one column."""

    #: A column of the data (feature or not); never the label, the key or PII.
    column: Annotated[str, Field(min_length=1)]
    #: Slices with fewer holdout rows (or positives) are reported as skipped.
    min_rows: Annotated[int, Field(ge=1)] = 50
    min_positives: Annotated[int, Field(ge=0)] = 5
    thresholds: Annotated[dict[GateMetric, _Unit], Field(min_length=1)]


class BaselineCheck(_Strict):
    """Metrics on which the challenger must reach one baseline's score."""

    metrics: list[BaselineMetric] = Field(min_length=1)
    #: Required = baseline + margin: positive means "beat it by", negative "trail by at most".
    margin: Annotated[float, Field(ge=-0.5, le=0.5)] = 0.0


class Baselines(_Strict):
    """Naive models scored on the same holdout; ``null`` switches one off."""

    #: Predicts the train split's majority class for every row.
    majority: BaselineCheck | None = BaselineCheck(metrics=["balanced_accuracy"], margin=0.05)
    #: L2 logistic regression on the same preprocessed features and train split.
    logistic: BaselineCheck | None = BaselineCheck(metrics=["auroc"], margin=0.0)
    #: Inverse L2 strength of the logistic baseline (scikit-learn's ``C``).
    logistic_c: Annotated[float, Field(gt=0)] = 1.0


class ExportTolerance(_Strict):
    """How far an export's holdout scores may drift from the PyTorch model's."""

    #: Largest allowed |probability(export) - probability(PyTorch)| over the holdout rows.
    max_abs_diff: Annotated[float, Field(ge=0, le=1)]
    #: Largest allowed |metric(export) - metric(PyTorch)| for each gate metric.
    max_metric_delta: Annotated[float, Field(ge=0, le=1)]


class Exports(_Strict):
    """Tolerances for the ONNX exports the gate re-checks (`pipelines.release.export`)."""

    #: fp32 ONNX computes the same function: only float rounding may differ.
    onnx: ExportTolerance = ExportTolerance(max_abs_diff=1e-4, max_metric_delta=0.005)
    #: Dynamic int8 quantises weights and activations: on the small MLPs here single rows move by
    #: 0.05-0.1 (measured), so the per-row bound is loose and the metric deltas do the guarding.
    onnx_int8: ExportTolerance = ExportTolerance(max_abs_diff=0.15, max_metric_delta=0.02)


class Gate(_Strict):
    #: Absolute floors the challenger must reach on the holdout.
    thresholds: dict[GateMetric, _Unit]
    #: How much worse than the champion (same holdout) a challenger may be.
    champion_tolerance: dict[GateMetric, _Unit] = Field(default_factory=dict)
    #: How comparisons with the champion and the logistic baseline treat holdout noise.
    comparison: Comparison = Comparison()
    #: Per-slice floors (e.g. per clinic); empty means no slice checks.
    slices: list[SliceGate] = Field(default_factory=list)
    #: Naive models the challenger must beat on the same holdout.
    baselines: Baselines = Baselines()
    #: With no champion yet: promote when the thresholds hold, or never
    #: automatically (a forced promotion is then needed).
    first_model: Literal["promote_if_thresholds", "require_manual"] = "promote_if_thresholds"
    #: Fewer holdout rows than this and no decision can be trusted: reject.
    min_holdout_rows: Annotated[int, Field(ge=1)] = 50
    #: Drift allowed for each export before the deploy leaves it out (never rejects the model).
    exports: Exports = Exports()

    @model_validator(mode="after")
    def _has_core_metrics(self) -> Gate:
        missing = {"accuracy", "recall", "f1"} - set(self.thresholds)
        if missing:
            raise ValueError(f"gate.thresholds must set accuracy, recall and f1; missing {sorted(missing)}")
        columns = [s.column for s in self.slices]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"gate.slices lists column(s) {repeated} more than once; merge their thresholds")
        return self

    @property
    def compared_metrics(self) -> list[str]:
        """Metrics compared with the champion: ``comparison.metrics``, else every thresholded or toleranced one."""
        if self.comparison.metrics is not None:
            return sorted(set(self.comparison.metrics))
        return sorted(set(self.thresholds) | set(self.champion_tolerance))

    def tolerance(self, metric: str) -> float:
        """How much worse than the champion ``metric`` may be (0 when unlisted)."""
        return next((v for k, v in self.champion_tolerance.items() if k == metric), 0.0)

    def check_slice_columns(self, *, forbidden: dict[str, str]) -> None:
        """Raise when a slice column is one of ``forbidden`` (column -> why it cannot be sliced on)."""
        for gate_slice in self.slices:
            why = forbidden.get(gate_slice.column)
            if why:
                raise ValueError(f"gate.slices: column {gate_slice.column!r} is {why} and cannot be a slice")


class Alerts(_Strict):
    emails: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)
    #: Send the run summary on these outcomes too (data-quality alerts always go).
    report_on: list[ReportOutcome] = Field(default_factory=lambda: list[ReportOutcome](["rejected"]))


class Card(_Strict):
    """What the model card says beyond the numbers (see verticals/README.md, "card")."""

    #: Who should use the model's scores, for what decision; default: said from description and label.
    intended_use: str | None = None
    #: Known weaknesses (populations, data gaps, failure modes); the card adds the run's own caveats.
    limitations: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    #: The categorical feature the card's per-slice figure splits by; default: the first categorical feature.
    slice_by: str | None = None


class VerticalSpec(_Strict):
    """Everything that makes one vertical, validated on load."""

    name: str
    description: str
    owner: str
    schedule: str = "0 2 * * *"
    tags: list[str] = Field(default_factory=list)
    source: Annotated[SqlSource | FileSource, Field(discriminator="kind")]
    key: str
    label: Label
    features: Features
    pii: list[str] = Field(default_factory=list)
    #: Airflow-style connection whose password is the secret that pseudonymises the ``pii``
    #: columns at extract (`pipelines.data.pii`); ``PIPELINES_PII_KEY`` when it is not set.
    pii_key_conn: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")] = "pii_default"
    #: Extra tables joined to the event rows at extract time.
    joins: list[Join] = Field(default_factory=list)
    cleaning: Cleaning = Cleaning()
    window: Window = Window()
    quality: Quality = Quality()
    model: Model = Model()
    gate: Gate
    alerts: Alerts
    card: Card = Card()

    @model_validator(mode="after")
    def _consistent(self) -> VerticalSpec:
        if not VERTICAL_NAME.fullmatch(self.name):
            raise ValueError("name must be lower-case letters, digits and '_' (2-32 chars)")
        used = set(self.features.all)
        if self.label.column in used:
            raise ValueError(f"label column {self.label.column!r} is also listed as a feature")
        leaked = used & set(self.pii)
        if leaked:
            raise ValueError(f"PII columns must not be model features: {sorted(leaked)}")
        declared = {self.key, self.source.event_time, self.label.column, *used, *self.pii}
        overlap = sorted(declared & set(self.quality.ignored_columns))
        if overlap:
            raise ValueError(f"quality.ignored_columns lists columns the spec uses: {overlap}")
        unknown = sorted(set(self.quality.distribution.exempt) - used)
        if unknown:
            raise ValueError(f"quality.distribution.exempt names non-feature column(s): {unknown}")
        if self.card.slice_by is not None and self.card.slice_by not in self.features.categorical:
            raise ValueError(
                f"card.slice_by {self.card.slice_by!r} is not a categorical feature; "
                f"choose one of {self.features.categorical or '(none: list one under features.categorical)'}"
            )
        # Slice values are stored with the holdout scores and named in reports: never PII.
        self.gate.check_slice_columns(
            forbidden={
                **dict.fromkeys(self.pii, "PII"),
                self.key: "the key",
                self.label.column: "the label",
            }
        )
        return self

    @model_validator(mode="after")
    def _drift_columns(self) -> VerticalSpec:
        drift = self.quality.drift
        unknown = sorted((set(drift.exempt) | set(drift.features)) - set(self.features.all))
        if unknown:
            raise ValueError(f"quality.drift names non-feature column(s): {unknown}")
        return self

    @model_validator(mode="after")
    def _preparation(self) -> VerticalSpec:
        names = [j.name for j in self.joins]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"joins: name(s) {repeated} used more than once")
        if self.joins and not isinstance(self.source, SqlSource):
            unset = [j.name for j in self.joins if j.conn_id is None]
            if unset:
                raise ValueError(f"joins {unset}: set conn_id (a file source has no connection to share)")
        event = {self.key, self.source.event_time}
        joined = [c for j in self.joins for c in j.columns]
        twice = sorted({c for c in joined if joined.count(c) > 1} | (set(joined) & event))
        if twice:
            raise ValueError(f"joins: column(s) {twice} would come from more than one place")
        known = self.source_columns | set(joined)
        rules = self.cleaning.columns
        for column, rule in rules.items():
            if column not in known:
                raise ValueError(
                    f"cleaning rule for unknown column {column!r}: declare it (key, features, pii, label, "
                    "joins or quality.ignored_columns) or fix the name"
                )
            when = rule.convert.when_column if rule.convert else None
            if when and when not in known:
                raise ValueError(f"cleaning.columns.{column}.convert.when_column {when!r} is an unknown column")
        dedup = self.cleaning.deduplicate
        if dedup is not None:
            unknown = sorted({*(dedup.key or []), *([dedup.latest_by] if dedup.latest_by else [])} - known)
            if unknown:
                raise ValueError(f"cleaning.deduplicate names unknown column(s) {unknown}")
        return self

    @property
    def source_columns(self) -> set[str]:
        """Every column the spec declares the event rows carry (before joins add theirs)."""
        return (
            {
                self.key,
                self.source.event_time,
                *([] if self.label.expression else [self.label.column]),
                *self.label.inputs,
                *self.features.all,
                *self.pii,
                *self.quality.ignored_columns,
                *(c for j in self.joins for c in j.keys),
            }
            - set(self.cleaning.indicator_columns)
            - {c for j in self.joins for c in j.columns}
        )

    @property
    def prepared_columns(self) -> set[str]:
        """Columns data preparation declares: label inputs, join keys, joined columns and markers, indicators."""
        return {
            *self.label.inputs,
            *(c for j in self.joins for c in (*j.keys, *j.columns, j.marker)),
            *self.cleaning.indicator_columns,
        }

    @model_validator(mode="after")
    def _validation_for_tuning(self) -> VerticalSpec:
        needs = []
        if self.model.threshold.objective != "fixed" or self.model.threshold.calibration != "none":
            needs.append("model.threshold")
        if self.model.early_stopping is not None:
            needs.append("model.early_stopping")
        if self.model.tuning.enabled:
            needs.append("model.tuning")
        if needs and not self.window.validation_days:
            raise ValueError(f"{', '.join(needs)} need(s) a validation split: set window.validation_days")
        return self

    @property
    def card_slice_column(self) -> str | None:
        """The feature the model card's per-slice figure splits by (None: no categorical feature)."""
        return self.card.slice_by or next(iter(self.features.categorical), None)

    @property
    def suite_name(self) -> str:
        return self.quality.suite or self.name

    def config_hash(self) -> str:
        """Content hash of the whole spec (recorded in lineage)."""
        return _hash(self.model_dump(mode="json"))

    def training_hash(self) -> str:
        """Hash of what shapes the weights; gate or alert edits don't retrain."""
        return _hash(self.model_dump(mode="json", include={"key", "label", "features", "window", "model"}))


def _hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


#: `make airflow` serves the UI here; Airflow's own fallback for ``[api] base_url`` too.
DEFAULT_PUBLIC_URL = "http://localhost:8080"


class _ProductionEnv(BaseSettings):
    """The ``PIPELINES_*`` variables; an empty one counts as unset (its default applies).

    URLs left None default under ``home`` in `Settings.from_env` (they depend on it).  Every
    value is a string or a path, so none can be malformed here; the profile is checked there.
    """

    model_config = SettingsConfigDict(env_prefix="PIPELINES_", env_ignore_empty=True, extra="ignore")

    home: Path = PROJECT_ROOT / ".state"
    specs_dir: Path = PROJECT_ROOT / "verticals"
    expectations_dir: Path = PROJECT_ROOT / "expectations"
    bucket_url: str | None = None
    registry_url: str | None = None
    dvc_remote: str | None = None
    state_url: str = ""
    # The Airflow API server's own base URL unless the links must name another (a proxy).
    public_url: str = Field(
        default=DEFAULT_PUBLIC_URL, validation_alias=AliasChoices("PIPELINES_PUBLIC_URL", "AIRFLOW__API__BASE_URL")
    )
    profile: str = "production"


class _ExperimentEnv(BaseSettings):
    """The ``PIPELINES_EXPERIMENT_*`` variables (see `experiment_settings`); never production's."""

    model_config = SettingsConfigDict(env_prefix="PIPELINES_EXPERIMENT_", env_ignore_empty=True, extra="ignore")

    home: Path | None = None
    bucket_url: str | None = None
    registry_url: str | None = None
    dvc_remote: str | None = None
    state_url: str = ""


@dataclass(frozen=True)
class Settings:
    """Where state lives and which external systems to use (env-driven)."""

    home: Path
    specs_dir: Path
    expectations_dir: Path
    bucket_url: str
    registry_url: str
    dvc_remote: str
    #: ``production`` (the default), or ``experiment``: what ``dvc repro`` / ``dvc exp run``
    #: use (`experiment_settings`): their own data root, registry, bucket, DVC remote and
    #: outbox, the production warehouse read-only, and no email ever sent.
    profile: Profile = "production"
    #: The embedded demo warehouse (SQLite file); None: ``<home>/warehouse.db``.
    warehouse_file: Path | None = None
    #: Where people reach this deployment's Airflow UI and the Models view (links in emails).
    public_url: str = DEFAULT_PUBLIC_URL
    #: Where everything one task hands to the next lives (``PIPELINES_STATE_URL``: any fsspec
    #: URL, e.g. ``s3://bucket/state``); empty: ``home`` itself, so the embedded run keeps one
    #: folder.  With a remote URL ``home`` is only this worker's scratch and cache (`pipelines.state`).
    state_url: str = ""

    @classmethod
    def from_env(cls, profile: str | None = None) -> Settings:
        """Settings from ``PIPELINES_*`` variables; ``profile`` (else ``PIPELINES_PROFILE``) picks the profile."""
        env = _ProductionEnv()
        home = env.home.resolve()
        production = cls(
            home=home,
            specs_dir=env.specs_dir,
            expectations_dir=env.expectations_dir,
            bucket_url=env.bucket_url or (home / "bucket").as_uri(),
            registry_url=env.registry_url or f"sqlite:///{home / 'registry.db'}",
            dvc_remote=env.dvc_remote or str(home / "dvc-remote"),
            public_url=env.public_url,
            state_url=env.state_url.strip(),
        )
        chosen = profile or env.profile
        if chosen == "production":
            return production
        if chosen == "experiment":
            return experiment_settings(production)
        raise SpecError(f"unknown PIPELINES_PROFILE {chosen!r}; use one of {', '.join(PROFILES)}")

    @property
    def warehouse_url(self) -> str:
        """The embedded demo warehouse that ``seed`` fills (opened read-only in the experiment profile)."""
        path = self.warehouse_file or self.home / "warehouse.db"
        if self.profile == "experiment":
            # SQLite enforces it: an experiment can read the warehouse but never change it.
            return f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true"
        return f"sqlite:///{path}"

    @property
    def sends_email(self) -> bool:
        """Whether alerts may go out through SMTP; the experiment profile only writes its outbox."""
        return self.profile == "production"


def experiment_settings(production: Settings) -> Settings:
    """The experiment profile derived from the production settings: nothing it writes is production's.

    Data root ``PIPELINES_EXPERIMENT_HOME`` (default ``<production home>/experiments``) holding
    its own partitions, DVC repos, models, reports and outbox; its own registry, bucket and DVC
    remote (``PIPELINES_EXPERIMENT_REGISTRY_URL`` / ``_BUCKET_URL`` / ``_DVC_REMOTE``, defaults
    under that root).  The production variables are never used for them, so a production
    environment cannot leak into an experiment.  It reads the same specs, suites and sources;
    the embedded warehouse is production's file, opened read-only.
    """
    env = _ExperimentEnv()
    home = (env.home or production.home / "experiments").resolve()
    experiment = replace(
        production,
        home=home,
        bucket_url=env.bucket_url or (home / "bucket").as_uri(),
        registry_url=env.registry_url or f"sqlite:///{home / 'registry.db'}",
        dvc_remote=env.dvc_remote or str(home / "dvc-remote"),
        profile="experiment",
        warehouse_file=production.warehouse_file or production.home / "warehouse.db",
        state_url=env.state_url.strip(),
    )
    shared = [
        (name, variable)
        for name, variable, mine, theirs in (
            ("data root", "PIPELINES_EXPERIMENT_HOME", experiment.home, production.home),
            ("registry", "PIPELINES_EXPERIMENT_REGISTRY_URL", experiment.registry_url, production.registry_url),
            ("bucket", "PIPELINES_EXPERIMENT_BUCKET_URL", experiment.bucket_url, production.bucket_url),
            ("DVC remote", "PIPELINES_EXPERIMENT_DVC_REMOTE", experiment.dvc_remote, production.dvc_remote),
            ("state URL", "PIPELINES_EXPERIMENT_STATE_URL", experiment.state_url, production.state_url),
        )
        if mine == theirs and mine  # an empty state URL means "under the (separate) data root"
    ]
    if shared:
        raise SpecError(
            "the experiment profile must not share production's "
            + ", ".join(f"{name} (set {variable} to a separate one)" for name, variable in shared)
        )
    return experiment


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"invalid vertical spec {path}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {where}: {err['msg']}")
    lines.append("Fix the file and rerun; see verticals/README.md for every field.")
    return "\n".join(lines)


def load_spec_file(path: Path) -> VerticalSpec:
    """Parse and validate one spec file; raise `SpecError` naming each bad field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path} must hold a mapping, got {type(raw).__name__}")
    try:
        spec = VerticalSpec.model_validate(raw, context={SPEC_FILE_CONTEXT: True})
    except ValidationError as exc:
        raise SpecError(_format_validation_error(path, exc)) from exc
    if spec.name != path.stem:
        raise SpecError(f"spec file {path} declares name {spec.name!r}; the file must be named {spec.name}.yaml")
    return spec


def spec_paths(settings: Settings | None = None) -> list[Path]:
    settings = settings or Settings.from_env()
    return sorted(settings.specs_dir.glob("*.yaml"))


def vertical_names(settings: Settings | None = None) -> list[str]:
    return [p.stem for p in spec_paths(settings)]


def echo(value: object) -> str:
    """``value`` quoted for an error message: one line, and at most a few dozen characters of it."""
    text = str(value)
    if len(text) <= _ECHO_CHARS:
        return repr(text)
    return f"{text[:_ECHO_CHARS]!r}… ({len(text)} characters)"


def parse_ds(ds: object, *, vertical: str | None = None, error: type[PipelineError] = InvalidArgumentError) -> date:
    """Parse a logical date ``YYYY-MM-DD``, the one parser for it; else raise ``error`` saying the format.

    ``error`` lets a stage keep its own error class (a bad date reaching training is
    a `TrainingError` there); every caller gets the same rule and the same message.
    """
    # Exactly YYYY-MM-DD: fromisoformat alone also takes 20261127 and 2026-W48-5.
    if not isinstance(ds, str) or len(ds) != 10 or ds[4] != "-" or ds[7] != "-":
        raise error(f"bad date {echo(ds)}: use YYYY-MM-DD, e.g. 2026-11-27", vertical=vertical)
    try:
        return date.fromisoformat(ds)
    except ValueError as exc:
        raise error(f"bad date {echo(ds)}: use YYYY-MM-DD, e.g. 2026-11-27", vertical=vertical) from exc


#: Lower bound of a logical date when the spec declares no ``source.start``.
EARLIEST_DS = date(1970, 1, 1)


def check_ds(ds: str, spec: VerticalSpec, *, today: date | None = None) -> date:
    """Parse ``ds`` and check it lies between the source's first day and today (UTC).

    The one place a run's logical date is judged, for the CLI, the Airflow tasks
    and every stage: a date before the data (``1900-01-01``) would backfill
    hundreds of empty days, one after today (``9999-12-31``) has no data yet and
    overflows the date arithmetic.  Raises `InvalidArgumentError` (exit code 2).
    Here rather than with the sources so that a command line can refuse a date
    without importing pandas or SQLAlchemy.
    """
    day = parse_ds(ds, vertical=spec.name)
    first = spec.source.start or EARLIEST_DS
    last = today or datetime.now(UTC).date()
    if day < first:
        where = "the first day of its source (source.start)" if spec.source.start else "the earliest date accepted"
        raise InvalidArgumentError(
            f"date {ds} is before {first.isoformat()}, {where}: pick a date from {first.isoformat()} to "
            f"{last.isoformat()}",
            vertical=spec.name,
        )
    if day > last:
        raise InvalidArgumentError(
            f"date {ds} is after today ({last.isoformat()} UTC), so its data cannot exist yet: pick a date from "
            f"{first.isoformat()} to {last.isoformat()}",
            vertical=spec.name,
        )
    return day


def check_vertical_name(vertical: object) -> str:
    """``vertical`` if it is a well-formed vertical name, else raise `SpecError`.

    Checked before the name goes into any path, so ``../x`` or a 10,000-character
    name never reaches the file system.
    """
    if not isinstance(vertical, str) or not VERTICAL_NAME.fullmatch(vertical):
        raise SpecError(
            f"invalid vertical name {echo(vertical)}: use 2-32 lower-case letters, digits and '_', "
            "starting with a letter (e.g. finance); `python -m pipelines verticals` lists them"
        )
    return vertical


def load_spec(vertical: str, settings: Settings | None = None) -> VerticalSpec:
    """Load the spec for ``vertical`` or raise `SpecError` listing the known ones."""
    check_vertical_name(vertical)
    settings = settings or Settings.from_env()
    path = settings.specs_dir / f"{vertical}.yaml"
    if not path.exists():
        known = ", ".join(vertical_names(settings)) or "none"
        raise SpecError(f"unknown vertical {vertical!r}; known verticals: {known}")
    return _load_cached(path, path.stat().st_mtime_ns)


@cache
def _load_cached(path: Path, _mtime: int) -> VerticalSpec:
    return load_spec_file(path)


def load_suite(spec: VerticalSpec, settings: Settings | None = None) -> dict:
    """Read the vertical's reviewed GX suite JSON."""
    settings = settings or Settings.from_env()
    path = settings.expectations_dir / f"{spec.suite_name}.json"
    try:
        suite = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"no expectation suite at {path}; add one for this vertical", vertical=spec.name) from exc
    except json.JSONDecodeError as exc:
        raise SpecError(f"suite {path} is not valid JSON: {exc}", vertical=spec.name) from exc
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise SpecError(f"suite {path} must be an object with an 'expectations' list", vertical=spec.name)
    _check_severities(suite["expectations"], path, spec.name)
    return suite


#: GX's ``severity`` per expectation: ``critical`` (the default) blocks the run; the others only warn.
SUITE_SEVERITIES = ("critical", "warning", "info")


def _check_severities(expectations: list, path: Path, vertical: str) -> None:
    """A misspelt severity ("warn") must be a clear spec error, not GX's exception mid-run."""
    for number, expectation in enumerate(expectations, start=1):
        severity = expectation.get("severity") if isinstance(expectation, dict) else None
        if severity is not None and severity not in SUITE_SEVERITIES:
            raise SpecError(
                f"suite {path}: expectation {number} ({expectation.get('type')}) has severity {echo(severity)}; "
                "use critical (blocks the run, the default), warning or info (recorded, the run continues)",
                vertical=vertical,
            )
