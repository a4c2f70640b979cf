"""Drift of the new training window against the data the champion was trained on.

Per feature, the Population Stability Index between the champion's data
version (the reference: the DVC snapshot its registry lineage names) and the
newest ``quality.drift.recent_days`` of tonight's window:

    PSI = sum over bins of (current share - reference share) * ln(current share / reference share)

Numeric features are cut into quantile bins of the *reference* (so every bin
holds about the same share of the champion's rows); categorical features use
the reference's most frequent categories plus one ``__other__`` bin; missing
values are a bin of their own on both, so a column that starts arriving empty
drifts too.  0.1 / 0.25 are the customary "look" / "act" levels; the spec sets
its own.  A few dozen lines of numpy: Evidently would compute the same number
behind a heavy dependency and its own report format.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.config import Drift, Settings, VerticalSpec

Level = Literal["ok", "warn", "block"]
#: Share given to a bin one side never fills, so ln() stays finite (a new category still scores high).
EMPTY_SHARE = 1e-4
MISSING = "__missing__"
OTHER = "__other__"
#: Bins named in a report per feature: the ones that moved most.
TOP_BINS = 3


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: Literal["numeric", "categorical"]
    psi: float
    warn: float
    block: float
    level: Level
    #: The bins that moved most: (bin, reference share, current share).
    moved: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class DriftReport:
    """Tonight's window against the champion's training data; ``skipped`` says why nothing was compared."""

    vertical: str
    ds: str
    champion_version: str | None
    reference_data_version: str | None
    reference_rows: int = 0
    current_rows: int = 0
    #: First and last day of the compared slice of tonight's window.
    current_days: tuple[str, str] | None = None
    features: list[FeatureDrift] = field(default_factory=list)
    skipped: str | None = None

    @property
    def blocking(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.level == "block"]

    @property
    def warnings(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.level == "warn"]

    @property
    def max_psi(self) -> float | None:
        return max((f.psi for f in self.features), default=None)

    def summary(self) -> str:
        if self.skipped:
            return f"drift not checked: {self.skipped}"
        worst = sorted(self.features, key=lambda f: f.psi, reverse=True)
        top = ", ".join(f"{f.feature} {f.psi:.3f}" for f in worst[:3])
        verdict = (
            f"{len(self.blocking)} feature(s) beyond the block threshold"
            if self.blocking
            else f"{len(self.warnings)} warning(s)"
            if self.warnings
            else "within thresholds"
        )
        return (
            f"drift vs champion {self.champion_version} (data {self.reference_data_version}): {verdict}; "
            f"highest PSI {top}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary(), "max_psi": self.max_psi}


def population_stability_index(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two count (or share) vectors over the same bins."""
    ref = np.maximum(reference / max(reference.sum(), 1), EMPTY_SHARE)
    cur = np.maximum(current / max(current.sum(), 1), EMPTY_SHARE)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _numeric_bins(reference: pd.Series, current: pd.Series, bins: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float)
    cur = pd.to_numeric(current, errors="coerce").to_numpy(dtype=float)
    present = ref[~np.isnan(ref)]
    # Inner quantile edges of the reference; ties (a column with few values) merge bins.
    inner = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])) if len(present) else np.array([])
    labels = [f"<{inner[0]:.4g}"] if len(inner) else ["all"]
    labels += [f"[{lo:.4g}, {hi:.4g})" for lo, hi in itertools.pairwise(inner)]
    labels += [f">={inner[-1]:.4g}"] if len(inner) else []

    def counts(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        binned = np.bincount(np.searchsorted(inner, values[~missing], side="right"), minlength=len(inner) + 1)
        return np.append(binned, missing.sum())

    return [*labels, MISSING], counts(ref), counts(cur)


def _categorical_bins(reference: pd.Series, current: pd.Series, bins: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    ref, cur = reference.astype("object"), current.astype("object")
    kept = [str(v) for v in ref.dropna().astype(str).value_counts().index[:bins]]

    def counts(values: pd.Series) -> np.ndarray:
        text = values.dropna().astype(str)
        shares = text.where(text.isin(kept), OTHER).value_counts()
        return np.array([shares.get(k, 0) for k in [*kept, OTHER]] + [values.isna().sum()], dtype=float)

    return [*kept, OTHER, MISSING], counts(ref), counts(cur)


def feature_drift(
    reference: pd.Series, current: pd.Series, *, kind: Literal["numeric", "categorical"], bins: int
) -> tuple[float, list[tuple[str, float, float]]]:
    """PSI of one feature and the bins that moved most."""
    binner = _numeric_bins if kind == "numeric" else _categorical_bins
    labels, ref_counts, cur_counts = binner(reference, current, bins)
    psi = population_stability_index(ref_counts, cur_counts)
    ref_share = ref_counts / max(ref_counts.sum(), 1)
    cur_share = cur_counts / max(cur_counts.sum(), 1)
    order = np.argsort(-np.abs(cur_share - ref_share))[:TOP_BINS]
    moved = [(labels[i], round(float(ref_share[i]), 4), round(float(cur_share[i]), 4)) for i in order]
    return psi, moved


def _level(psi: float, warn: float, block: float) -> Level:
    return "block" if psi >= block else "warn" if psi >= warn else "ok"


def recent_slice(frame: pd.DataFrame, spec: VerticalSpec, ds: str) -> pd.DataFrame:
    """The newest ``recent_days`` of the window ending at ``ds`` (the whole window when unset)."""
    days = spec.quality.drift.recent_days
    if days is None or spec.source.event_time not in frame.columns:
        return frame
    first = (pd.Timestamp(ds) - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    return frame[frame[spec.source.event_time].astype(str) >= first]


def compare_to_champion(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    spec: VerticalSpec,
    *,
    ds: str,
    champion_version: str,
    reference_data_version: str,
) -> DriftReport:
    """PSI per feature of the recent slice of ``window`` against ``reference`` (the champion's data)."""
    config: Drift = spec.quality.drift
    current = recent_slice(window, spec, ds)
    event = spec.source.event_time
    days = (str(current[event].min()), str(current[event].max())) if len(current) and event in current.columns else None
    base = DriftReport(
        vertical=spec.name,
        ds=ds,
        champion_version=champion_version,
        reference_data_version=reference_data_version,
        reference_rows=len(reference),
        current_rows=len(current),
        current_days=days,
    )
    if min(len(reference), len(current)) < config.min_rows:
        return _skipped(
            base,
            f"{len(current)} rows in the compared days and {len(reference)} in the champion's data; "
            f"quality.drift.min_rows is {config.min_rows}",
        )
    features: list[FeatureDrift] = []
    for column, kind in _compared(spec):
        if column not in reference.columns or column not in current.columns:
            continue  # new since the champion (nothing to compare it with)
        psi, moved = feature_drift(reference[column], current[column], kind=kind, bins=config.bins)
        warn, block = config.thresholds(column)
        psi = round(psi, 4) if math.isfinite(psi) else psi
        features.append(FeatureDrift(column, kind, psi, warn, block, _level(psi, warn, block), moved))
    return replace(base, features=features)


def compared_features(spec: VerticalSpec) -> list[str]:
    """The features drift compares, in the spec's order: every one not exempt."""
    return [column for column, _ in _compared(spec)]


def _compared(spec: VerticalSpec) -> list[tuple[str, Literal["numeric", "categorical"]]]:
    exempt = set(spec.quality.drift.exempt)
    kinds: list[tuple[str, Literal["numeric", "categorical"]]] = [
        *((c, "numeric") for c in spec.features.numeric),
        *((c, "categorical") for c in spec.features.categorical),
    ]
    return [(column, kind) for column, kind in kinds if column not in exempt]


def _skipped(report: DriftReport, why: str) -> DriftReport:
    return replace(report, skipped=why)


def no_champion(spec: VerticalSpec, ds: str, why: str) -> DriftReport:
    """The report of a night with nothing to compare against (first run, switched off, experiment profile)."""
    return DriftReport(vertical=spec.name, ds=ds, champion_version=None, reference_data_version=None, skipped=why)


def check_drift(
    spec: VerticalSpec,
    ds: str,
    window: pd.DataFrame,
    settings: Settings,
    *,
    champion_version: str | None,
    lineage: dict[str, Any] | None,
) -> DriftReport:
    """Tonight's window against the data version the champion (``champion_version``) was trained on.

    The caller finds the champion (the bucket's production pointer) and its
    registry ``lineage``, which names the data version, DVC tag and commit; the
    snapshot is read back from DVC exactly as its training read it.
    """
    from pipelines.data.versioning import read_snapshot

    if not spec.quality.drift.enabled:
        return no_champion(spec, ds, "switched off (quality.drift.enabled: false)")
    if champion_version is None:
        return no_champion(spec, ds, "no champion yet (first run): nothing to compare with")
    if not (lineage or {}).get("data_tag"):
        return no_champion(spec, ds, f"the champion {champion_version} has no data version in its registry lineage")
    assert lineage is not None
    reference = read_snapshot(
        vertical=spec.name,
        tag=str(lineage["data_tag"]),
        commit=lineage.get("data_commit"),
        md5=lineage.get("data_md5"),  # read by md5 on a worker whose data repo never saw that snapshot
        settings=settings,
        # Only what is compared: the whole window doubled the stage's memory (5 GB at 5M rows).
        columns=compared_features(spec),
    )
    return compare_to_champion(
        reference,
        window,
        spec,
        ds=ds,
        champion_version=champion_version,
        reference_data_version=str(lineage.get("data_version")),
    )
