"""PSI per feature against the champion's data: bins, levels, skips, and what reports and views show."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.config import VerticalSpec
from pipelines.data.drift import (
    compare_to_champion,
    feature_drift,
    no_champion,
    population_stability_index,
)
from pipelines.errors import SpecError

from ..conftest import make_settings


def make_spec(**drift: object) -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "plant",
            "description": "test vertical",
            "owner": "tests",
            "source": {"kind": "sql", "table": "readings"},
            "key": "id",
            "label": {"column": "y", "positive": 1},
            "features": {"numeric": ["speed", "heat"], "categorical": ["line"]},
            "window": {"train_days": 60, "holdout_days": 10},
            "quality": {"drift": {"recent_days": 10, "min_rows": 100, **drift}},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["owner@example.com"]},
        }
    )


def frame(days: list[str], *, seed: int, speed_shift: float = 0.0, line_b: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 40 * len(days)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "event_date": np.repeat(days, 40),
            "speed": rng.normal(100 + speed_shift, 10, n),
            "heat": rng.normal(300, 5, n),
            "line": rng.choice(["a", "b"], n, p=[1 - line_b, line_b]),
            "y": rng.integers(0, 2, n),
        }
    )


DAYS = [f"2026-03-{d:02d}" for d in range(1, 31)]


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    assert population_stability_index(np.array([10, 20, 30]), np.array([1, 2, 3])) == pytest.approx(0)
    small = population_stability_index(np.array([50, 50]), np.array([45, 55]))
    large = population_stability_index(np.array([50, 50]), np.array([10, 90]))
    assert 0 < small < 0.05
    assert large > 0.25


def test_numeric_bins_are_quantiles_of_the_reference_and_missing_values_count():
    reference = pd.Series(np.arange(1000, dtype=float))
    psi, _ = feature_drift(reference, pd.Series(np.arange(0, 1000, 2, dtype=float)), kind="numeric", bins=10)
    assert psi == pytest.approx(0, abs=0.01)  # same spread, half the rows: no drift
    half_missing = pd.Series([*np.arange(0, 1000, 4, dtype=float), *([None] * 250)])
    psi, moved = feature_drift(reference, half_missing, kind="numeric", bins=10)
    assert psi > 0.25 and moved[0][0] == "__missing__" and moved[0][2] == 0.5


def test_a_new_category_drifts_and_rare_ones_are_pooled():
    reference = pd.Series(["a"] * 50 + ["b"] * 50)
    psi, moved = feature_drift(reference, pd.Series(["a"] * 50 + ["c"] * 50), kind="categorical", bins=10)
    assert psi > 0.25 and {m[0] for m in moved} >= {"b", "__other__"}
    many = pd.Series([f"clinic{i % 80}" for i in range(8000)])
    psi, _ = feature_drift(many, many.sample(frac=0.5, random_state=0), kind="categorical", bins=10)
    assert psi < 0.02  # 80 clinics, 10 bins kept: sampling noise stays small


def test_levels_thresholds_exemptions_and_the_reference_window():
    spec = make_spec(features={"speed": {"warn": 0.05, "block": 5.0}}, exempt=["heat"])
    reference = frame(DAYS[:20], seed=1)
    window = pd.concat([frame(DAYS[:20], seed=1), frame(DAYS[20:], seed=2, speed_shift=8.0, line_b=0.7)])
    report = compare_to_champion(
        reference, window, spec, ds=DAYS[-1], champion_version="mv-x", reference_data_version="dv-y"
    )
    by_name = {f.feature: f for f in report.features}
    assert set(by_name) == {"speed", "line"}  # heat is exempt
    assert report.current_rows == 400 and report.current_days == (DAYS[20], DAYS[-1])
    assert by_name["speed"].level == "warn" and by_name["speed"].block == 5.0  # its own thresholds
    assert by_name["line"].level == "block" and report.blocking == [by_name["line"]]
    assert "1 feature(s) beyond the block threshold" in report.summary()
    json.dumps(report.to_dict())  # the record and drift.json are plain JSON


def test_too_few_rows_or_no_champion_compares_nothing_and_says_why():
    spec = make_spec(min_rows=1000)
    report = compare_to_champion(
        frame(DAYS, seed=1), frame(DAYS, seed=2), spec, ds=DAYS[-1], champion_version="mv", reference_data_version="dv"
    )
    assert report.features == [] and "quality.drift.min_rows is 1000" in (report.skipped or "")
    first = no_champion(spec, DAYS[-1], "no champion yet (first run): nothing to compare with")
    assert first.summary() == "drift not checked: no champion yet (first run): nothing to compare with"
    assert not first.blocking and first.max_psi is None


def test_the_spec_rejects_unordered_thresholds_and_unknown_columns():
    with pytest.raises(ValueError, match="warn must not be above block"):
        make_spec(warn=0.5, block=0.2)
    with pytest.raises(ValueError, match="non-feature"):
        make_spec(exempt=["not_a_feature"])


def test_a_misspelt_severity_fails_when_the_suite_loads(tmp_path):
    from pipelines.config import load_suite

    settings = make_settings(tmp_path, expectations_dir=tmp_path)  # type: ignore[arg-type]
    suite = {"expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {}, "severity": "warn"}]}
    (tmp_path / "plant.json").write_text(json.dumps(suite))
    with pytest.raises(SpecError, match="severity 'warn'; use critical"):
        load_suite(make_spec(), settings)


def test_run_summary_and_models_view_show_warnings_and_drift(tmp_path):
    from pipelines.models_view.html import render_template
    from pipelines.models_view.overview import data_checks
    from pipelines.notify.reporting import _data_check_lines

    runs = tmp_path / "runs" / "plant" / "2026-03-30"
    runs.mkdir(parents=True)
    warning = {"expectation": "expect_column_mean_to_be_between", "column": "speed", "severity": "warning",
               "observed": "130.2"}  # fmt: skip
    drift = {"summary": "drift vs champion mv-1 (data dv-1): 1 warning(s); highest PSI speed 0.140",
             "skipped": None, "max_psi": 0.14, "psi": {"speed": 0.14, "line": 0.01},
             "warnings": ["speed"], "blocking": []}  # fmt: skip
    (runs / "validate.json").write_text(json.dumps({"success": True, "warnings": [warning]}))
    (runs / "drift.json").write_text(json.dumps(drift))
    (runs.parent / "2026-03-29").mkdir()  # a night with nothing to show

    lines = "\n".join(_data_check_lines({"quality_warnings": [warning], "drift": drift}))
    assert "Data-quality warnings (1, not blocking):" in lines and "speed (warning): 130.2" in lines
    assert "Drift: drift vs champion mv-1" in lines and "speed                          0.140  WARN" in lines

    from ..conftest import make_settings

    [night] = data_checks(make_settings(tmp_path), "plant")
    assert night.ds == "2026-03-30" and night.drift_max_psi == 0.14 and night.drift_flagged == ["speed"]
    assert night.warnings == ["expect_column_mean_to_be_between on speed (warning): 130.2"]
    from types import SimpleNamespace

    html = render_template("data_checks.html", view=SimpleNamespace(data_checks=[night]))
    assert "Data warnings and drift" in html and "0.140" in html and "speed (warning)" in html
