"""GX validation: a reviewed suite passes good data, reports each failure precisely."""

from __future__ import annotations

import gc
import json
import os
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import VerticalSpec
from pipelines.data.profiles import Profile, compare_profiles, profile_frame, stored_profile
from pipelines.data.quality import (
    check_columns,
    check_distribution,
    distribution_reach,
    failing_rows,
    validate_frame,
)
from pipelines.data.sources import write_partition
from pipelines.layout import Layout

SUITE = {
    "name": "demo",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "x", "min_value": 0, "max_value": 10},
            "meta": {"notes": "x is a 0-10 score"},
        },
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "y", "value_set": [0, 1]}},
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": {"$PARAMETER": "min_rows"}, "max_value": {"$PARAMETER": "max_rows"}},
        },
    ],
}


@pytest.fixture
def spec() -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "demo",
            "description": "test vertical",
            "owner": "tests",
            "source": {"kind": "sql", "table": "t"},
            "key": "id",
            "label": {"column": "y", "positive": 1},
            "features": {"numeric": ["x"]},
            "pii": ["name"],
            "window": {"train_days": 10, "holdout_days": 3},
            "quality": {"min_rows_per_day": 2, "max_rows_per_day": 10},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["owner@example.com"]},
        }
    )


@pytest.fixture
def suite_settings(settings, tmp_path):
    folder = tmp_path / "expectations"
    folder.mkdir()
    (folder / "demo.json").write_text(json.dumps(SUITE))
    return replace(settings, expectations_dir=folder)


def frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": range(n), "x": [float(i) for i in range(n)], "y": [i % 2 for i in range(n)], "name": ["Ann"] * n}
    )


def test_clean_frame_passes_and_builds_data_docs(spec, suite_settings):
    report = validate_frame(frame(), spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings)
    assert report.success and report.failed == []
    assert report.evaluated == 5 + 3  # the suite, then the columns, types and leak checks
    assert report.distribution is not None and "skipped" in report.distribution  # no reference yet
    assert report.data_docs and report.data_docs.endswith("index.html")


def test_each_failure_is_reported_with_observed_and_expected(spec, suite_settings):
    bad = frame()
    bad.loc[2, "x"] = 99.0
    bad.loc[3, "id"] = 1  # duplicate key
    report = validate_frame(bad, spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings)
    assert not report.success
    failed = {f.expectation: f for f in report.failed}
    assert set(failed) == {"expect_column_values_to_be_between", "expect_column_values_to_be_unique"}
    between = failed["expect_column_values_to_be_between"]
    assert between.column == "x" and between.expected == {"min_value": 0.0, "max_value": 10.0}
    assert between.unexpected_count == 1 and between.sample_values == [99.0]
    assert between.notes == "x is a 0-10 score"
    sample = failing_rows(bad, report, spec)
    assert 2 in set(sample["id"]) and set(sample["name"]) == {"***"}


def test_an_edited_suite_applies_to_the_next_validation_in_the_same_process(spec, suite_settings):
    """The GX project is opened once per process; a reviewed change to the suite still takes effect."""
    assert validate_frame(frame(), spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings).success
    stricter = json.loads(json.dumps(SUITE))
    stricter["expectations"][2]["kwargs"]["max_value"] = 3
    (suite_settings.expectations_dir / "demo.json").write_text(json.dumps(stricter))
    report = validate_frame(frame(), spec, ds="2026-11-28", days=["2026-11-28"], settings=suite_settings)
    [between] = report.failed
    assert between.expected == {"min_value": 0, "max_value": 3} and between.sample_values == [4.0, 5.0]
    assert [row["id"] for row in between.sample_keys] == [4, 5]  # the failing rows' keys, for the email


def _alive_views_of(values: np.ndarray) -> list[str]:
    """Every live pandas object that still holds (a view of) ``values``' buffer."""
    gc.collect()
    found = []
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance also reads ``__class__``, which some deprecation
        # proxies among the live objects (torch's) answer with a warning.
        kind = type(obj)
        if issubclass(kind, pd.DataFrame) and "x" in obj.columns:
            arrays = [obj["x"].to_numpy()]
        elif issubclass(kind, pd.Series) and obj.dtype.kind == "f":
            arrays = [obj.to_numpy()]
        else:
            continue
        if any(np.shares_memory(a, values) for a in arrays):
            found.append("DataFrame" if issubclass(kind, pd.DataFrame) else f"Series {obj.name!r}")
    return found


@pytest.mark.parametrize("bad", [False, True], ids=["passing", "failing"])
def test_the_validated_batch_is_not_kept_after_the_validation(spec, suite_settings, bad):
    """GX's engine (kept for the process) must not hold the batch: a backfill would stay resident under train."""
    batch = frame()
    if bad:
        batch.loc[2, "x"] = 99.0  # a failure, so the failing rows' keys are looked up too
    values = batch["x"].to_numpy()  # a view of the frame's buffer, which must be the only one left
    report = validate_frame(batch, spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings)
    assert report.success is not bad
    del batch
    assert _alive_views_of(values) == []


def test_row_count_bounds_scale_with_the_number_of_days(spec, suite_settings):
    # 6 rows: within one day's bounds (2..10) but too few for five days (at least 2 x 5 = 10).
    one_day = validate_frame(frame(), spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings)
    assert one_day.success
    days = [f"2026-11-{d:02d}" for d in range(23, 28)]
    five_days = validate_frame(frame(), spec, ds="2026-11-27", days=days, settings=suite_settings)
    assert not five_days.success
    (failure,) = five_days.failed
    assert failure.expectation == "expect_table_row_count_to_be_between"
    assert failure.observed == 6 and failure.expected["min_value"] == 10


def test_missing_column_fails_with_an_explanation(spec, suite_settings):
    report = validate_frame(
        frame().drop(columns=["x"]), spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings
    )
    assert not report.success
    (failure,) = [f for f in report.failed if f.column == "x"]
    assert str(failure.observed).startswith("error:") and "x" in str(failure.observed)


# -- checks beyond the suite: columns, types, leaks ------------------------------------


def test_an_undeclared_column_blocks_and_a_copy_of_the_label_is_named_a_leak(spec, suite_settings):
    extra = frame().assign(promo_code="X", outcome=lambda f: f["y"])
    report = validate_frame(extra, spec, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings)
    failed = {(f.expectation, f.column): f for f in report.failed}
    assert not report.success
    declared = failed[("expect_table_columns_to_be_declared", "promo_code, outcome")]
    assert declared.observed["unexpected"] == ["promo_code", "outcome"]
    assert ("expect_column_to_not_determine_the_label", "outcome") in failed
    assert ("expect_column_to_not_determine_the_label", "promo_code") not in failed  # constant: no leak


def test_ignored_columns_pass_and_allow_switches_the_column_check_off(spec, suite_settings):
    extra = frame().assign(note="n/a")
    ignored = spec.model_copy(update={"quality": spec.quality.model_copy(update={"ignored_columns": ["note"]})})
    assert check_columns(extra, ignored) == []
    allowed = spec.model_copy(update={"quality": spec.quality.model_copy(update={"unexpected_columns": "allow"})})
    assert check_columns(extra, allowed) == []


def test_a_renamed_feature_is_reported_as_a_possible_rename(spec):
    (failure,) = check_columns(frame().rename(columns={"x": "x_score"}), spec)
    assert failure.observed == {"unexpected": ["x_score"], "missing_features": ["x"]}
    assert "rename" in (failure.notes or "")


def test_a_numeric_feature_delivered_as_text_is_a_type_failure(spec):
    bad = frame().assign(x=lambda f: f["x"].astype(str).where(f.index != 2, "three"))
    (failure,) = check_columns(bad, spec)
    assert failure.expectation == "expect_column_values_to_be_numeric" and failure.column == "x"
    assert failure.sample_values == ["three"]


def test_a_feature_equal_to_the_label_is_a_leak_only_on_a_large_enough_batch(spec):
    small = frame(6).assign(x=lambda f: f["y"].astype(float))
    assert check_columns(small, spec) == []  # 6 rows < leak_min_rows: chance, not evidence
    large = frame(40).assign(x=lambda f: f["y"] * 10.0)
    (failure,) = check_columns(large, spec)
    assert (failure.expectation, failure.column) == ("expect_column_to_not_determine_the_label", "x")


# -- profiles and the distribution checks ------------------------------------------------


def _spec_with(spec: VerticalSpec, **distribution) -> VerticalSpec:
    checks = spec.quality.distribution.model_copy(update=distribution)
    return spec.model_copy(update={"quality": spec.quality.model_copy(update={"distribution": checks})})


def day_frame(day: str, n: int, *, seed: int, positive_share: float = 0.3, x_mean: float = 5.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"{day}-{i}" for i in range(n)],
            "event_date": day,
            "x": rng.normal(x_mean, 1.0, n).clip(0, 10),
            "y": (rng.random(n) < positive_share).astype(int),
            "name": "Ann",
        }
    )


def _profiled_spec(positive: object, numeric: list[str], categorical: list[str]) -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "demo",
            "description": "d",
            "owner": "o",
            "source": {"kind": "sql", "table": "t"},
            "key": "id",
            "label": {"column": "y", "positive": positive},
            "features": {"numeric": numeric, "categorical": categorical},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["o@example.com"]},
        }
    )


def test_profiles_merge_exactly():
    spec_ = _profiled_spec(1, ["x"], ["c"])
    a = pd.DataFrame({"x": [1.0, 2.0, None], "y": [1, 0, 1], "c": ["u", "v", None]})
    b = pd.DataFrame({"x": [10.0, 4.0], "y": [0, 0], "c": ["u", "u"]})
    merged = profile_frame(a, spec_).merge(profile_frame(b, spec_))
    whole = profile_frame(pd.concat([a, b]), spec_)
    assert merged.rows == whole.rows == 5 and merged.positives == whole.positives == 2
    assert merged.numeric["x"].mean == pytest.approx(whole.numeric["x"].mean)
    assert merged.numeric["x"].sd == pytest.approx(pd.Series([1.0, 2.0, 10.0, 4.0]).std())
    assert merged.numeric["x"].nulls == 1
    assert merged.categorical["c"] == {"u": 3, "v": 1, "(null)": 1}
    assert Profile.from_dict(merged.to_dict()) == merged


@pytest.fixture
def history(spec, suite_settings):
    """28 validated days of 20 rows before 2026-11-27 (positive share 0.3, x ~ N(5, 1))."""
    layout = Layout(suite_settings, "demo")
    start = date(2026, 10, 30)
    for n in range(28):
        day = (start + timedelta(days=n)).isoformat()
        write_partition(day_frame(day, 20, seed=n), layout.validated(day), "id")
    return layout


def _check(spec, settings, batch):
    return check_distribution(batch, spec, days=["2026-11-27"], settings=settings)


def test_a_normal_day_passes_against_the_rolling_reference(spec, suite_settings, history):
    result = _check(spec, suite_settings, day_frame("2026-11-27", 20, seed=99))
    assert result["findings"] and not [f for f in result["findings"] if f["blocking"]]
    # A small batch is pooled with the latest validated days up to min_batch_rows (30 by default),
    # and the reference is the 28 calendar days before those (the first lies before the history).
    assert result["pooled_days"] == ["2026-11-26"] and result["batch_rows"] == 40
    assert result["reference_days"][0] == "2026-10-30" and result["reference_days"][-1] == "2026-11-25"
    assert result["reference_rows"] == 27 * 20
    # Each validated day's profile is stored once, then read back.
    assert (history.home / "data" / "demo" / "profiles" / "2026-11-26.json").exists()


def test_a_flipped_label_mix_blocks_with_a_named_failure(spec, suite_settings, history):
    flipped = day_frame("2026-11-27", 20, seed=99).assign(y=1)
    roomy = spec.model_copy(update={"quality": spec.quality.model_copy(update={"max_rows_per_day": 100})})
    report = validate_frame(flipped, roomy, ds="2026-11-27", days=["2026-11-27"], settings=suite_settings)
    assert not report.success
    (failure,) = report.failed
    assert failure.expectation == "expect_label_share_to_match_reference" and failure.column == "y"
    assert failure.observed["batch"] == pytest.approx(0.5 + 0.5 * 0.3, abs=0.15)  # pooled with one normal day
    assert failure.expected["reference"] == pytest.approx(0.3, abs=0.05)
    assert failure.observed["p_value"] < failure.expected["alpha"]


def test_a_mean_shift_blocks_but_a_small_one_is_not_material(spec, suite_settings, history):
    shifted = _check(spec, suite_settings, day_frame("2026-11-27", 40, seed=7, x_mean=8.0))
    blocking = [(f["check"], f["column"]) for f in shifted["findings"] if f["blocking"]]
    assert blocking == [("mean", "x")]
    # Significant on 2000 rows, but 0.35 sd is below the material 0.5 sd: recorded, not blocking.
    nudged = _check(spec, suite_settings, day_frame("2026-11-27", 2000, seed=8, x_mean=5.35))
    (mean,) = [f for f in nudged["findings"] if f["check"] == "mean"]
    assert mean["p_value"] < mean["alpha"] and not mean["blocking"]


def test_too_little_reference_skips_the_comparison(spec, suite_settings, history):
    strict = _spec_with(spec, min_reference_rows=10_000)
    result = _check(strict, suite_settings, day_frame("2026-11-27", 20, seed=99).assign(y=1))
    assert result["findings"] == [] and "min_reference_rows" in result["skipped"]
    assert _check(_spec_with(spec, enabled=False), suite_settings, day_frame("2026-11-27", 5, seed=1)) is None


def test_a_rewritten_partition_is_profiled_again(spec, suite_settings, history):
    path = history.validated("2026-11-26")
    profile_path = history.home / "data" / "demo" / "profiles" / "2026-11-26.json"
    first = stored_profile(path, profile_path, spec, "2026-11-26")
    write_partition(day_frame("2026-11-26", 20, seed=1).assign(y=1), path, "id")
    second = stored_profile(path, profile_path, spec, "2026-11-26")
    assert first is not None and second is not None
    assert first.positives < 20 and second.positives == 20


def test_a_downloaded_copy_of_the_same_partition_reuses_its_stored_profile(spec, suite_settings, history, monkeypatch):
    """A fresh worker pulls the same bytes with a new mtime: the stored profile is used, the day is not read."""
    path = history.validated("2026-11-26")
    profile_path = history.home / "data" / "demo" / "profiles" / "2026-11-26.json"
    first = stored_profile(path, profile_path, spec, "2026-11-26")
    stored = profile_path.read_bytes()
    path.write_bytes(path.read_bytes())  # same content, a new file time (what a download gives)
    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))

    def no_read(*args, **kwargs):
        raise AssertionError("the partition was read again")

    monkeypatch.setattr(pd, "read_parquet", no_read)
    assert stored_profile(path, profile_path, spec, "2026-11-26") == first
    assert profile_path.read_bytes() == stored


def test_the_checks_read_only_the_days_within_their_reach(spec, suite_settings, history):
    """Pool and reference lie in `distribution_reach`, the days a worker pulls for them (not the whole history)."""
    short = _spec_with(spec, reference_days=7, max_pool_days=2, min_reference_rows=10)
    reach = distribution_reach(short, ["2026-11-27"])
    assert reach == [(date(2026, 11, 26) - timedelta(days=n)).isoformat() for n in range(9)]
    result = check_distribution(
        day_frame("2026-11-27", 20, seed=99), short, days=["2026-11-27"], settings=suite_settings
    )
    assert result is not None
    assert result["pooled_days"] == ["2026-11-26"]  # 20 rows, then 40 >= min_batch_rows
    assert result["reference_days"] == reach[1:8][::-1]  # the 7 days before the pool
    profiles = {p.stem for p in (history.home / "data" / "demo" / "profiles").glob("*.json")}
    assert profiles == set(reach[:8])  # nothing outside the reach was read or profiled
    assert distribution_reach(_spec_with(spec, enabled=False), ["2026-11-27"]) == []


def _mixed_days(layout: Layout) -> dict[str, Path]:
    """Days whose dtypes differ, so the joined frame's columns are not each file's (read_partitions' runs)."""
    days = {
        "2026-11-01": pd.DataFrame(  # ints, strings, booleans, a missing value of each
            {"id": [1, 2, 3], "x": [1.5, None, 2.5], "n": [3, 4, 5], "c": ["u", None, "v"], "flag": [True, False, True]}
        ),
        "2026-11-02": pd.DataFrame(  # a column all null that day (Arrow's null type: a run of its own)
            {"id": [4, 5], "x": [None, None], "n": [7, 8], "c": ["u", "u"], "flag": [False, False]}
        ),
        "2026-11-03": pd.DataFrame(  # an int column with a null that day (floats), and a row dated the day before
            {"id": [6, 7, 8], "x": [0.1, 0.2, 0.3], "n": [1.0, None, 12.0], "c": ["v", "w", "w"], "flag": [True] * 3}
        ),
        "2026-11-04": pd.DataFrame(  # a feature missing from the file: null in the joined frame, absent in the file
            {"id": [9, 10], "x": [0.5, 0.6], "n": [2, 3], "flag": [False, True]}
        ),
    }
    partitions = {}
    for n, (day, rows) in enumerate(days.items()):
        rows["y"] = ["bad", "good", "Bad"][: len(rows)]
        rows["event_date"] = day if n != 2 else ["2026-11-02", day, day]
        write_partition(rows, layout.raw(day), "id")
        partitions[day] = layout.raw(day)
    return partitions


def test_profiles_stored_from_the_validated_frame_are_those_read_back_from_the_files(suite_settings):
    """A validation stores its days' profiles from memory; each is what `stored_profile` computes from the file."""
    from pipelines.data.profiles import store_partition_profiles
    from pipelines.data.sources import read_partitions

    mixed = _profiled_spec("bad", ["x", "n"], ["c", "flag"])
    layout = Layout(suite_settings, "demo")
    partitions = _mixed_days(layout)
    profiles = layout.home / "profiles"
    joined = read_partitions(list(partitions.values()))

    wanted = ["2026-11-02", "2026-11-03", "2026-11-04"]
    stored = store_partition_profiles(joined, partitions, mixed, wanted, profiles)

    assert stored == wanted and not (profiles / "2026-11-01.json").exists()
    kept = {}
    for day in stored:
        kept[day] = json.loads((profiles / f"{day}.json").read_text())
        (profiles / f"{day}.json").unlink()  # what the next night would compute reading the file
        again = stored_profile(partitions[day], profiles / f"{day}.json", mixed, day)
        assert again is not None and kept[day] == json.loads((profiles / f"{day}.json").read_text()), day
    # The row dated the day before is in its file's profile (positions, not timestamps, split the frame).
    third = Profile.from_dict(kept["2026-11-03"])
    assert third.rows == 3 and third.numeric["n"].nulls == 1
    assert "c" not in Profile.from_dict(kept["2026-11-04"]).categorical


def test_no_profile_is_stored_when_the_frame_is_not_the_files_rows(suite_settings):
    from pipelines.data.profiles import store_partition_profiles
    from pipelines.data.sources import read_partitions

    mixed = _profiled_spec("bad", ["x", "n"], ["c", "flag"])
    layout = Layout(suite_settings, "demo")
    partitions = _mixed_days(layout)
    joined = read_partitions(list(partitions.values())).iloc[1:]
    assert store_partition_profiles(joined, partitions, mixed, list(partitions), layout.home / "profiles") == []
    assert not (layout.home / "profiles").exists()


def test_compare_profiles_splits_alpha_over_the_tests(spec):
    checks = spec.quality.distribution
    ref = profile_frame(day_frame("2026-11-01", 500, seed=1), spec)
    findings = compare_profiles(profile_frame(day_frame("2026-11-02", 50, seed=2), spec), ref, checks, label="y")
    assert {f.check for f in findings} == {"label_share", "null_share", "mean"}
    assert all(f.alpha == pytest.approx(checks.alpha / len(findings)) for f in findings)
