"""Per-day profiles of the label and features, and their statistical comparison.

A `Profile` holds summable statistics of one or more days: the positive-label
count, per numeric feature (count, mean, M2 for the variance, nulls) and per
categorical feature the value counts.  Profiles of validated days are stored
as small JSON files, so comparing a new batch with a rolling reference costs
one day of data plus those files, never the whole history.

`compare_profiles` tests a batch profile against a reference profile and
returns one `Finding` per test.  A finding blocks only when the change is both
*material* (beyond an effect size the spec sets) and *significant* (p below the
night's alpha split over every test run).  Drift against the champion's
training data can reuse both: profile that data version once, compare the
window's profile with it under its own thresholds.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Distribution, VerticalSpec
from pipelines.layout import write_json_atomic
from pipelines.model.features import _label_token

#: Bump when the stored profile format changes: older files are recomputed.
PROFILE_FORMAT = 1
#: A category seen fewer times than this in the reference is pooled into "(other)",
#: so the chi-square test is not driven by rare levels.
_MIN_CATEGORY_ROWS = 5


@dataclass
class NumericStats:
    """Count, mean and sum of squared deviations (Chan et al.), mergeable exactly."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    nulls: int = 0

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def merge(self, other: NumericStats) -> NumericStats:
        n = self.count + other.count
        if n == 0:
            return NumericStats(nulls=self.nulls + other.nulls)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return NumericStats(count=n, mean=mean, m2=m2, nulls=self.nulls + other.nulls)


@dataclass
class Profile:
    """Summable statistics of the label and the features over some rows."""

    rows: int = 0
    positives: int = 0
    numeric: dict[str, NumericStats] = field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)

    def merge(self, other: Profile) -> Profile:
        numeric = {c: self.numeric.get(c, NumericStats()).merge(s) for c, s in other.numeric.items()}
        numeric.update({c: s for c, s in self.numeric.items() if c not in other.numeric})
        categorical = {c: dict(v) for c, v in self.categorical.items()}
        for column, counts in other.categorical.items():
            target = categorical.setdefault(column, {})
            for value, n in counts.items():
                target[value] = target.get(value, 0) + n
        return Profile(
            rows=self.rows + other.rows,
            positives=self.positives + other.positives,
            numeric=numeric,
            categorical=categorical,
            days=sorted({*self.days, *other.days}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Profile:
        return cls(
            rows=int(raw["rows"]),
            positives=int(raw["positives"]),
            numeric={c: NumericStats(**s) for c, s in raw["numeric"].items()},
            categorical={c: {str(k): int(n) for k, n in v.items()} for c, v in raw["categorical"].items()},
            days=list(raw.get("days", [])),
        )


#: The key under which a categorical column's nulls are counted.
NULL = "(null)"


def profile_frame(frame: pd.DataFrame, spec: VerticalSpec, days: list[str] | None = None) -> Profile:
    """Profile ``frame``: label positives and each present feature (a missing one is skipped).

    A numeric feature whose values are not numbers is skipped too: the type
    check reports it, and a mean of strings means nothing.
    """
    label = frame[spec.label.column] if spec.label.column in frame.columns else pd.Series([], dtype=object)
    # The training code's own matching ("bad" == "Bad", True == 1 == "true"), applied
    # to the distinct values only, so a large batch is counted, not cast row by row.
    positive = _label_token(spec.label.positive)
    positives = sum(int(n) for value, n in label.value_counts().items() if _label_token(value) == positive)
    numeric: dict[str, NumericStats] = {}
    for column in spec.features.numeric:
        if column not in frame.columns or not is_numeric(frame[column]):
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        present = values[~np.isnan(values)]
        n = len(present)
        mean = float(present.mean()) if n else 0.0
        m2 = float(np.square(present - mean).sum()) if n else 0.0
        numeric[column] = NumericStats(count=n, mean=mean, m2=m2, nulls=len(values) - n)
    categorical: dict[str, dict[str, int]] = {}
    for column in spec.features.categorical:
        if column in frame.columns:
            counts = frame[column].value_counts(dropna=False)
            categorical[column] = {}
            for value, n in counts.items():
                key = _category_key(value)
                categorical[column][key] = categorical[column].get(key, 0) + int(n)
    return Profile(rows=len(frame), positives=positives, numeric=numeric, categorical=categorical, days=days or [])


def _category_key(value: Any) -> str:
    """One spelling per category across days: 12 and 12.0 (an int column with a null that day) are one."""
    if pd.isna(value):
        return NULL
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_numeric(values: pd.Series) -> bool:
    """Numbers: a numeric or boolean dtype, or values that all read as numbers.

    Drivers return PostgreSQL NUMERIC as Decimal objects and SQLite an all-null
    day as object dtype: both are numbers.  Text such as "age 37" is not.
    """
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return True
    present = values.dropna()
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def stored_profile(partition: Path, profile_path: Path, spec: VerticalSpec, day: str) -> Profile | None:
    """The profile of a validated day: read from ``profile_path``, or computed once and stored.

    The stored file carries the partition's size and SHA-256 (and the spec's
    training hash), so a partition a rerun replaced is profiled again rather than
    compared by stale numbers.  Content, not the file's mtime: a worker that
    downloads the same partition from the state store (a new mtime) reuses the
    stored profile instead of reading and profiling the day again.
    """
    try:
        stamp = _stamp(partition, spec)
    except FileNotFoundError:
        return None
    if profile_path.exists():
        raw = json.loads(profile_path.read_text())
        if raw.get("format") == PROFILE_FORMAT and raw.get("stamp") == stamp:
            return Profile.from_dict(raw)
    frame = pd.read_parquet(partition)
    profile = profile_frame(frame, spec, [day])
    write_json_atomic(profile_path, {**profile.to_dict(), "stamp": stamp})
    return profile


def _stamp(partition: Path, spec: VerticalSpec) -> dict[str, Any]:
    """What a stored profile is valid for: the partition's bytes (size, SHA-256) and the spec's training hash."""
    with partition.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"size": partition.stat().st_size, "sha256": digest, "spec": spec.training_hash()}


def store_partition_profiles(
    frame: pd.DataFrame, partitions: dict[str, Path], spec: VerticalSpec, wanted: list[str], profiles_dir: Path
) -> list[str]:
    """Store the profiles of the ``wanted`` days from ``frame``, the partitions already in memory.

    ``frame`` is `read_partitions` of ``partitions`` (day -> file, oldest first): its rows are
    the files' rows in that order, so a day's rows are a positional slice, whatever their
    timestamps say.  Each profile is the one `stored_profile` would compute from the file
    (same stamp), without reading it back: a night's check then finds its reference days
    already profiled.  Nothing is stored when the files' row counts do not add up to the
    frame (`stored_profile` profiles those days from the files when they are needed).
    Returns the days stored.
    """
    import pyarrow.parquet as pq

    wanted_days = set(wanted)
    counts, columns = [], []
    for path in partitions.values():
        footer = pq.read_metadata(path)
        # A partition without columns contributes no rows to the frame (`read_partitions`).
        counts.append(footer.num_rows if footer.num_columns else 0)
        columns.append(set(footer.schema.to_arrow_schema().names))
    if sum(counts) != len(frame):
        return []
    stored = []
    start = 0
    for (day, path), rows, names in zip(partitions.items(), counts, columns, strict=True):
        if day in wanted_days and rows:
            # Only the file's own columns: one another day has is all null here, and absent in the file.
            day_rows = frame.iloc[start : start + rows]
            profile = profile_frame(day_rows[[c for c in frame.columns if c in names]], spec, [day])
            write_json_atomic(profiles_dir / f"{day}.json", {**profile.to_dict(), "stamp": _stamp(path, spec)})
            stored.append(day)
        start += rows
    return stored


# -- comparison --------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One statistical test of the batch against the reference."""

    check: str  # label_share | null_share | mean | categories
    column: str
    batch: float
    reference: float
    effect: float
    material: float
    p_value: float
    alpha: float
    batch_rows: int
    reference_rows: int

    @property
    def blocking(self) -> bool:
        return self.effect >= self.material and self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "blocking": self.blocking}


def compare_profiles(batch: Profile, reference: Profile, checks: Distribution, *, label: str) -> list[Finding]:
    """Every label-share, null-share, mean and category-share test that both profiles allow.

    Significance: Fisher's exact test for shares (exact at any batch size),
    a t-test on the reference's spread for means, a chi-square test of
    homogeneity for categories.  The
    family-wise ``alpha`` is split evenly over the tests run (Bonferroni).
    """
    tests: list[dict[str, Any]] = []
    shares = [("label_share", label, (batch.positives, batch.rows), (reference.positives, reference.rows))]
    for column, ref in reference.numeric.items():
        new = batch.numeric.get(column)
        if new is None or column in checks.exempt:
            continue
        shares.append(("null_share", column, (new.nulls, new.count + new.nulls), (ref.nulls, ref.count + ref.nulls)))
        tests += _mean_test(column, new, ref, checks.mean_shift_sd)
    for check, column, hits_b, hits_r in shares:
        material = checks.label_share_change if check == "label_share" else checks.null_share_change
        tests += _share_test(check, column, hits_b, hits_r, material)
    for column, ref_counts in reference.categorical.items():
        new_counts = batch.categorical.get(column)
        if new_counts is not None and column not in checks.exempt:
            tests += _category_test(column, new_counts, ref_counts, checks.category_shift)
    alpha = checks.alpha / max(len(tests), 1)
    return [Finding(**t, alpha=alpha) for t in tests]


def _share_test(
    check: str, column: str, batch: tuple[int, int], reference: tuple[int, int], material: float
) -> list[dict[str, Any]]:
    """Fisher's exact test of (hits, total) in the batch against the reference."""
    from scipy import stats

    (hit_b, n_b), (hit_r, n_r) = batch, reference
    if n_b == 0 or n_r == 0:
        return []
    p = float(stats.fisher_exact([[hit_b, n_b - hit_b], [hit_r, n_r - hit_r]]).pvalue)
    share_b, share_r = hit_b / n_b, hit_r / n_r
    return [
        {"check": check, "column": column, "batch": share_b, "reference": share_r, "effect": abs(share_b - share_r),
         "material": material, "p_value": p, "batch_rows": n_b, "reference_rows": n_r}
    ]  # fmt: skip


def _mean_test(column: str, new: NumericStats, ref: NumericStats, material: float) -> list[dict[str, Any]]:
    """t-test of the batch mean against the reference, scaled by the reference's spread.

    Under "nothing changed" the batch is drawn from the reference's
    distribution, so the reference's standard deviation (n - 1 degrees of
    freedom) is the right scale; the batch's own spread would let a few
    shifted rows inflate the variance and hide the very shift they carry.
    The effect is the shift in reference standard deviations.
    """
    from scipy import stats

    if new.count < 1 or ref.count < 2 or ref.sd == 0:
        return []
    se = ref.sd * math.sqrt(1 / new.count + 1 / ref.count)
    t = (new.mean - ref.mean) / se
    return [
        {"check": "mean", "column": column, "batch": new.mean, "reference": ref.mean,
         "effect": abs(new.mean - ref.mean) / ref.sd, "material": material,
         "p_value": float(2 * stats.t.sf(abs(t), ref.count - 1)), "batch_rows": new.count,
         "reference_rows": ref.count}
    ]  # fmt: skip


def _category_test(column: str, new: dict[str, int], ref: dict[str, int], material: float) -> list[dict[str, Any]]:
    """Chi-square test of homogeneity; the effect is the total variation distance of the shares."""
    from scipy import stats

    n_b, n_r = sum(new.values()), sum(ref.values())
    if n_b == 0 or n_r == 0:
        return []
    # Rare reference levels (and levels only the batch has) pool into one cell.
    common = sorted(k for k, n in ref.items() if n >= _MIN_CATEGORY_ROWS)
    cells_b = [new.get(k, 0) for k in common] + [n_b - sum(new.get(k, 0) for k in common)]
    cells_r = [ref.get(k, 0) for k in common] + [n_r - sum(ref.get(k, 0) for k in common)]
    keep = [i for i in range(len(cells_b)) if cells_b[i] + cells_r[i] > 0]
    cells_b, cells_r = [cells_b[i] for i in keep], [cells_r[i] for i in keep]
    tvd = 0.5 * sum(abs(b / n_b - r / n_r) for b, r in zip(cells_b, cells_r, strict=True))
    p = 1.0 if len(keep) < 2 else float(stats.chi2_contingency([cells_b, cells_r], correction=False).pvalue)
    return [
        {"check": "categories", "column": column, "batch": tvd, "reference": 0.0, "effect": tvd,
         "material": material, "p_value": p, "batch_rows": n_b, "reference_rows": n_r}
    ]  # fmt: skip
