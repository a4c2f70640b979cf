"""Vertical specs and GX suites: they load, match the demo data, and reject what they should."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from pydantic import BaseModel

from pipelines.config import PROJECT_ROOT, VerticalSpec, load_spec_file
from pipelines.demo.seed import DEMO_START, build_demo_frames
from pipelines.errors import SpecError

SPECS_DIR = PROJECT_ROOT / "verticals"
SUITES_DIR = PROJECT_ROOT / "expectations"
VERTICALS = ["education", "finance", "healthcare", "manufacturing"]
#: Columns that would leak the outcome (or are not known at prediction time).
LEAKY = {
    "education": {"math_score", "reading_score"},
    "healthcare": {"ct_result", "rec_ver_tat", "pan_day"},
    "finance": set(),
    "manufacturing": set(),
}


def _spec(vertical: str) -> VerticalSpec:
    return load_spec_file(SPECS_DIR / f"{vertical}.yaml")


def _suite(vertical: str) -> dict[str, Any]:
    return json.loads((SUITES_DIR / f"{vertical}.json").read_text())


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return build_demo_frames()


# -- specs -------------------------------------------------------------------


def test_one_spec_and_one_suite_per_vertical() -> None:
    assert sorted(p.stem for p in SPECS_DIR.glob("*.yaml")) == VERTICALS
    assert sorted(p.stem for p in SUITES_DIR.glob("*.json")) == VERTICALS
    specs = [_spec(v) for v in VERTICALS]
    assert [s.name for s in specs] == VERTICALS
    tables = [s.source.table for s in specs]  # type: ignore[union-attr]
    assert len(set(tables)) == len(tables), "two verticals share a source table"
    assert len({s.schedule for s in specs}) == len(specs), "schedules are staggered"


@pytest.mark.parametrize("vertical", VERTICALS)
def test_spec_columns_exist_and_do_not_leak(frames: dict[str, pd.DataFrame], vertical: str) -> None:
    spec = _spec(vertical)
    frame = frames[vertical]
    needed = [spec.key, spec.source.event_time, spec.label.column, *spec.features.all, *spec.pii]
    assert not set(needed) - set(frame.columns), f"missing in the demo table: {set(needed) - set(frame.columns)}"
    assert spec.label.positive in set(frame[spec.label.column])
    forbidden = {spec.key, spec.source.event_time, *spec.pii, *LEAKY[vertical]}
    assert not forbidden & set(spec.features.all)
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in spec.features.numeric)


@pytest.mark.parametrize("vertical", VERTICALS)
def test_demo_volume_fits_the_spec(frames: dict[str, pd.DataFrame], vertical: str) -> None:
    spec = _spec(vertical)
    per_day = frames[vertical].groupby("event_date").size()
    assert per_day.min() >= spec.quality.min_rows_per_day
    assert per_day.max() <= spec.quality.max_rows_per_day
    # Every night with a full training window has a holdout big enough to decide on.
    holdout = per_day.rolling(spec.window.holdout_days).sum()
    first_full_night = pd.Timestamp(DEMO_START) + pd.Timedelta(days=spec.window.train_days - 1)
    assert holdout[holdout.index >= first_full_night].min() >= spec.gate.min_holdout_rows


def _fields(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                names |= _fields(arg)
    return names


def test_readme_documents_every_spec_field() -> None:
    readme = (SPECS_DIR / "README.md").read_text()
    missing = sorted(f for f in _fields(VerticalSpec) if f"`{f}`" not in readme)
    assert not missing, f"verticals/README.md does not document: {missing}"


# -- spec errors ---------------------------------------------------------------


def _finance() -> dict[str, Any]:
    return yaml.safe_load((SPECS_DIR / "finance.yaml").read_text())


def _write(tmp_path: Path, data: dict[str, Any] | str, stem: str = "finance") -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_a_copy_of_a_spec_loads(tmp_path: Path) -> None:
    assert load_spec_file(_write(tmp_path, _finance())) == _spec("finance")


def _mutated(change: str) -> dict[str, Any]:
    data = _finance()
    if change == "unknown key":
        data["model"]["hiden"] = [8]
    elif change == "missing gate metric":
        del data["gate"]["thresholds"]["recall"]
    elif change == "label as feature":
        data["features"]["categorical"].append("status")
    elif change == "pii as feature":
        data["pii"] = ["age"]
    elif change == "bad name":
        data["name"] = "Finance-EU"
    elif change == "bad threshold":
        data["gate"]["thresholds"]["f1"] = 1.5
    elif change == "unquoted start date":
        data["source"]["start"] = date(2024, 1, 1)  # what YAML makes of `start: 2024-01-01`
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unknown key", r"model\.hiden: Extra inputs are not permitted"),
        ("missing gate metric", r"gate\.thresholds must set accuracy, recall and f1; missing \['recall'\]"),
        ("label as feature", r"label column 'status' is also listed as a feature"),
        ("pii as feature", r"PII columns must not be model features: \['age'\]"),
        ("bad name", r"name must be lower-case letters"),
        ("bad threshold", r"gate\.thresholds\.f1: Input should be less than or equal to 1"),
        ("unquoted start date", r"source\.sql\.start: Value error, write the date in quotes \(\"2024-01-01\"\)"),
    ],
)
def test_spec_errors_name_the_field(tmp_path: Path, change: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as raised:
        load_spec_file(_write(tmp_path, _mutated(change)))
    assert "verticals/README.md" in str(raised.value)


def test_file_name_must_match_the_spec_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"declares name 'finance'; the file must be named finance\.yaml"):
        load_spec_file(_write(tmp_path, _finance(), stem="credit"))


def test_broken_yaml_and_non_mapping_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec_file(_write(tmp_path, "name: [finance"))
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec_file(_write(tmp_path, "- finance"))


# -- suites ------------------------------------------------------------------


@pytest.mark.parametrize("vertical", VERTICALS)
def test_suite_file_shape(vertical: str) -> None:
    spec, suite = _spec(vertical), _suite(vertical)
    assert suite["name"] == vertical and suite["meta"]["vertical"] == vertical
    for expectation in suite["expectations"]:
        assert set(expectation) == {"type", "kwargs", "meta"}
        assert re.fullmatch(r"expect_[a-z_]+", expectation["type"])
        assert expectation["meta"]["notes"], f"{expectation['type']} has no note saying why"
    by_type = {e["type"]: e["kwargs"] for e in suite["expectations"]}
    required = set(by_type["expect_table_columns_to_match_set"]["column_set"])
    assert {spec.key, spec.source.event_time, spec.label.column, *spec.features.all} <= required
    assert not required & set(spec.pii), "the suite must not require PII columns"
    assert by_type["expect_table_row_count_to_be_between"] == {
        "min_value": {"$PARAMETER": "min_rows"},
        "max_value": {"$PARAMETER": "max_rows"},
    }
    checked = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert {
        ("expect_column_values_to_not_be_null", spec.key),
        ("expect_column_values_to_be_unique", spec.key),
        ("expect_column_values_to_not_be_null", spec.label.column),
        ("expect_column_values_to_be_in_set", spec.label.column),
    } <= checked


class _Validator:
    """One ephemeral GX context for the module (the import alone takes seconds)."""

    def __init__(self) -> None:
        import great_expectations as gx

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        asset = self.context.data_sources.add_pandas("demo").add_dataframe_asset("frame")
        self.batch = asset.add_batch_definition_whole_dataframe("whole")
        self.definitions: dict[str, Any] = {}

    def run(self, vertical: str, frame: pd.DataFrame, *, days: int) -> Any:
        if vertical not in self.definitions:
            suite = self.context.suites.add(self.gx.ExpectationSuite(**_suite(vertical)))
            self.definitions[vertical] = self.context.validation_definitions.add(
                self.gx.ValidationDefinition(name=vertical, data=self.batch, suite=suite)
            )
        quality = _spec(vertical).quality
        # As extract stores them: event dates are ISO strings, and the suite checks each row's is a validated day.
        frame = frame.assign(event_date=pd.to_datetime(frame["event_date"]).dt.strftime("%Y-%m-%d"))
        return self.definitions[vertical].run(
            batch_parameters={"dataframe": frame},
            expectation_parameters={
                "min_rows": days * quality.min_rows_per_day,
                "max_rows": days * quality.max_rows_per_day,
                "days": sorted(frame["event_date"].dropna().unique().tolist()),
            },
        )


@pytest.fixture(scope="module")
def gx_validator() -> _Validator:
    return _Validator()


def _failures(result: Any) -> set[tuple[str, str | None]]:
    return {
        (r.expectation_config.type, r.expectation_config.kwargs.get("column")) for r in result.results if not r.success
    }


@pytest.mark.parametrize("vertical", VERTICALS)
def test_every_demo_row_passes_its_suite(
    gx_validator: _Validator, frames: dict[str, pd.DataFrame], vertical: str
) -> None:
    frame = frames[vertical]
    result = gx_validator.run(vertical, frame, days=frame["event_date"].nunique())
    assert result.success, _failures(result)


@pytest.mark.parametrize("vertical", VERTICALS)
def test_days_read_back_from_sql_pass_their_suite(
    gx_validator: _Validator, frames: dict[str, pd.DataFrame], vertical: str
) -> None:
    # Nightly partitions are single days as SQL returns them: dates as strings,
    # columns that are all NULL that day as object dtype.  They must pass too.
    frame = frames[vertical]
    engine = sa.create_engine("sqlite://")
    days = frame["event_date"].drop_duplicates().iloc[[0, 1, 400, 900, -1]]
    for day in days:
        part = frame[frame["event_date"] == day].assign(event_date=lambda f: f["event_date"].dt.date)
        part.to_sql("part", engine, if_exists="replace", index=False)
        back = pd.read_sql("SELECT * FROM part", engine)
        result = gx_validator.run(vertical, back, days=1)
        assert result.success, (str(day), _failures(result))


def _corrupt(vertical: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, set[tuple[str, str | None]]]:
    """Break a few rows the way real sources break; return the expectations that must fail."""
    spec, suite = _spec(vertical), _suite(vertical)
    bad = frame.head(50).copy().reset_index(drop=True)
    kwargs = [(e["type"], e["kwargs"]) for e in suite["expectations"]]
    ranged = next(k for t, k in kwargs if t == "expect_column_values_to_be_between" and k["column"] != spec.key)
    category = next(
        k
        for t, k in kwargs
        if t == "expect_column_values_to_be_in_set"
        and k["column"] != spec.label.column
        and bad[k["column"]].dtype == "str"
    )
    key = spec.key
    bad[key] = bad[key].astype("float64")
    bad.loc[0, key] = None  # null key
    bad.loc[2, key] = bad.loc[1, key]  # duplicate key
    bad[ranged["column"]] = bad[ranged["column"]].astype("float64")
    too_big = ranged.get("max_value")
    bad.loc[3, ranged["column"]] = too_big + 1 if too_big is not None else ranged["min_value"] - 1
    bad.loc[4, category["column"]] = "__unknown__"
    bad.loc[5, spec.label.column] = "maybe"
    expected = {
        ("expect_column_values_to_not_be_null", key),
        ("expect_column_values_to_be_unique", key),
        ("expect_column_values_to_be_between", ranged["column"]),
        ("expect_column_values_to_be_in_set", category["column"]),
        ("expect_column_values_to_be_in_set", spec.label.column),
    }
    return bad, expected


@pytest.mark.parametrize("vertical", VERTICALS)
def test_corrupted_rows_fail_the_expected_expectations(
    gx_validator: _Validator, frames: dict[str, pd.DataFrame], vertical: str
) -> None:
    clean = frames[vertical].head(50)
    assert gx_validator.run(vertical, clean, days=clean["event_date"].nunique()).success
    bad, expected = _corrupt(vertical, frames[vertical])
    failures = _failures(gx_validator.run(vertical, bad, days=bad["event_date"].nunique()))
    assert expected <= failures, f"expected failures not raised: {expected - failures}"
    # Only what was broken fails: the suite does not cry wolf.
    assert not {f for f in failures if f[0] != "expect_column_pair_values_a_to_be_greater_than_b"} - expected


def test_row_count_and_column_checks(gx_validator: _Validator, frames: dict[str, pd.DataFrame]) -> None:
    frame = frames["manufacturing"]
    one_day = frame[frame["event_date"] == frame["event_date"].iloc[0]]
    assert gx_validator.run("manufacturing", one_day, days=1).success
    # Bounds for many days but one day's rows: an incomplete extract.
    days = len(one_day) // _spec("manufacturing").quality.min_rows_per_day + 1
    assert _failures(gx_validator.run("manufacturing", one_day, days=days)) == {
        ("expect_table_row_count_to_be_between", None)
    }
    failures = _failures(gx_validator.run("manufacturing", one_day.drop(columns=["torque_nm"]), days=1))
    assert ("expect_table_columns_to_match_set", None) in failures
    swapped = one_day.rename(
        columns={"air_temperature_k": "process_temperature_k", "process_temperature_k": "air_temperature_k"}
    )
    assert ("expect_column_pair_values_a_to_be_greater_than_b", None) in _failures(
        gx_validator.run("manufacturing", swapped, days=1)
    )
