"""GX validation: a reviewed suite passes good data, reports each failure precisely."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from pipelines.config import VerticalSpec
from pipelines.quality import failing_rows, validate_frame

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
    assert report.evaluated == 5
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
