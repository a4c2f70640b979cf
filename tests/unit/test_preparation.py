"""Data preparation declared in the spec: cleaning rules, point-in-time joins, label rules and delay."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.config import VerticalSpec
from pipelines.data.cleaning import clean_frame
from pipelines.data.integration import check_join_coverage, join_point_in_time
from pipelines.data.labels import LabelError, apply_label, label_window
from pipelines.data.sources import extract_days
from pipelines.errors import SourceError, SpecError
from pipelines.layout import Layout
from pipelines.model.training import split_window

JOIN = {"name": "shops", "table": "shops", "keys": ["shop"], "valid_from": "valid_from", "columns": ["region"]}


def make_spec(**extra: Any) -> VerticalSpec:
    data: dict[str, Any] = {
        "name": "demo",
        "description": "test vertical",
        "owner": "tests",
        "source": {"kind": "sql", "conn_id": "src", "table": "events"},
        "key": "id",
        "label": {"column": "y", "positive": 1},
        "features": {"numeric": ["x"], "categorical": ["region"]},
        "window": {"train_days": 10, "holdout_days": 3},
        "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
        "alerts": {"emails": ["owner@example.com"]},
    }
    data.update(extra)
    return VerticalSpec.model_validate(data)


# -- cleaning ------------------------------------------------------------------


def test_every_cleaning_rule_counts_what_it_changed() -> None:
    spec = make_spec(
        features={"numeric": ["x", "weight", "age"], "categorical": ["city"]},
        cleaning={
            "deduplicate": {},
            "columns": {
                "city": {"trim": True, "case": "lower", "map": {"nyc": "new york"}},
                "x": {"type": "float", "impute": {"strategy": "indicator"}},
                "weight": {"convert": {"factor": 0.5, "when_column": "unit", "when_value": "lb"}},
                "age": {"range": {"min": 0, "max": 120, "action": "null"}, "impute": {"strategy": "median"}},
            },
        },
        quality={"ignored_columns": ["unit"]},
    )
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3, 3],
            "event_date": ["2026-01-01", "2026-01-01", "2026-01-01", "2026-01-02"],
            "city": [" NYC", "Boston ", "boston", "NYC"],
            "x": ["1", "oops", None, "4"],
            "weight": [10.0, 20.0, 30.0, 40.0],
            "unit": ["lb", "kg", "lb", "kg"],
            "age": [30.0, 138.0, 50.0, 40.0],
            "y": [0, 1, 0, 1],
        }
    )
    cleaned, counts = clean_frame(frame, spec)
    # Id 3 twice: the later row (2026-01-02) is kept.
    assert counts["deduplicate"] == 1 and list(cleaned["id"]) == [1, 2, 3]
    assert cleaned.loc[cleaned["id"] == 3, "event_date"].item() == "2026-01-02"
    assert list(cleaned["city"]) == ["new york", "boston", "new york"]
    assert (counts["city.trim"], counts["city.case"], counts["city.map"]) == (2, 3, 2)
    assert counts["x.type"] == 1 and list(cleaned["x_missing"]) == [0, 1, 0]
    assert counts["x.impute_indicator"] == 1
    assert list(cleaned["weight"]) == [5.0, 20.0, 40.0] and counts["weight.convert"] == 1
    assert counts["age.range"] == 1 and counts["age.impute_median"] == 1
    assert list(cleaned["age"]) == [30.0, 35.0, 40.0]


def test_a_cleaning_rule_on_an_unknown_column_is_rejected_at_spec_load(tmp_path) -> None:
    import yaml

    from pipelines.config import PROJECT_ROOT, load_spec_file

    data = yaml.safe_load((PROJECT_ROOT / "verticals" / "finance.yaml").read_text())
    data["cleaning"] = {"columns": {"incme": {"range": {"min": 0}}}}
    path = tmp_path / "finance.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"cleaning rule for unknown column 'incme'"):
        load_spec_file(path)


# -- joins ---------------------------------------------------------------------


def _shops() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "shop": [1, 1, 2],
            "valid_from": [date(2026, 1, 1), date(2026, 1, 10), date(2026, 1, 1)],
            "region": ["north", "south", "east"],
        }
    )


def test_join_is_point_in_time_and_never_uses_a_later_row() -> None:
    spec = make_spec(joins=[JOIN])
    events = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "event_date": ["2026-01-09", "2026-01-10", "2025-12-31", "2026-01-05", "2026-01-05"],
            "shop": [1, 1, 1, 2.0, 9],
        }
    )
    joined = join_point_in_time(events, _shops(), spec.joins[0], event_time="event_date")
    assert list(joined["id"]) == [1, 2, 3, 4, 5], "rows keep their order"
    # Before the move: north; from its valid_from on: south; before any row: no partner.
    assert joined["region"].tolist()[:2] == ["north", "south"]
    assert pd.isna(joined["region"][2]) and joined["region"][3] == "east" and pd.isna(joined["region"][4])
    assert joined["joined_shops"].tolist() == [True, True, False, True, False]


def test_valid_to_ends_a_row_and_a_timeless_table_needs_unique_keys() -> None:
    spec = make_spec(joins=[{**JOIN, "valid_to": "valid_to"}])
    table = _shops().assign(valid_to=[date(2026, 1, 10), None, date(2026, 1, 3)])
    events = pd.DataFrame({"id": [1, 2], "event_date": ["2026-01-05", "2026-01-05"], "shop": [1, 2]})
    joined = join_point_in_time(events, table, spec.joins[0], event_time="event_date")
    assert joined["region"][0] == "north" and pd.isna(joined["region"][1])
    timeless = make_spec(joins=[{k: v for k, v in JOIN.items() if k != "valid_from"}])
    with pytest.raises(SourceError, match=r"several rows for key\(s\) \['1'\]"):
        join_point_in_time(events, _shops(), timeless.joins[0], event_time="event_date")


def _warehouse(settings, monkeypatch, events: pd.DataFrame, shops: pd.DataFrame | None) -> None:
    url = f"sqlite:///{settings.home / 'src.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        events.to_sql("events", conn, index=False, dtype={"event_date": sa.Date()})
        if shops is not None:
            shops.to_sql("shops", conn, index=False, dtype={"valid_from": sa.Date()})
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)


def _events(days: int = 2, shop: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": d * 10 + i, "event_date": date(2026, 1, 5) + timedelta(days=d), "shop": shop, "x": i, "y": i % 2}
            for d in range(days)
            for i in range(4)
        ]
    )


def test_extract_joins_and_records_coverage(settings, monkeypatch) -> None:
    _warehouse(settings, monkeypatch, _events(), _shops())
    prepared: dict[str, Any] = {}
    counts = extract_days(make_spec(joins=[JOIN]), ["2026-01-05", "2026-01-06"], settings, prepared=prepared)
    assert counts == {"2026-01-05": 4, "2026-01-06": 4}
    assert prepared["joins"] == {"shops": {"rows": 8, "matched": 8}}
    part = pd.read_parquet(Layout(settings, "demo").raw("2026-01-05"))
    assert set(part["region"]) == {"north"} and part["joined_shops"].all()


def test_a_key_without_partner_for_most_rows_blocks_the_day_and_keeps_every_row(settings, monkeypatch) -> None:
    _warehouse(settings, monkeypatch, _events(shop=7), _shops())  # shop 7 is not in the table
    spec = make_spec(joins=[JOIN])
    extract_days(spec, ["2026-01-05"], settings)
    part = pd.read_parquet(Layout(settings, "demo").raw("2026-01-05"))
    assert len(part) == 4, "the unmatched rows are kept (for quarantine), not dropped"
    [failure] = check_join_coverage(part, spec)
    assert failure.expectation == "expect_join_coverage_to_be_at_least"
    assert failure.observed == 0.0 and failure.unexpected_count == 4 and failure.sample_values == ["7"]
    assert "found no row of shops" in (failure.notes or "")
    # Enough partners: no failure.
    assert check_join_coverage(part.assign(joined_shops=True), spec) == []


def test_a_missing_dimension_table_stops_the_extract_and_writes_nothing(settings, monkeypatch) -> None:
    _warehouse(settings, monkeypatch, _events(), None)
    with pytest.raises(SourceError, match=r"join 'shops': cannot read table 'shops' on connection 'src'"):
        extract_days(make_spec(joins=[JOIN]), ["2026-01-05"], settings)
    assert not Layout(settings, "demo").raw("2026-01-05").exists()


# -- labels --------------------------------------------------------------------


def _label_spec(expression: str, **label: Any) -> VerticalSpec:
    return make_spec(
        label={"column": "risky", "positive": "yes", "negative": "no", "expression": expression, **label},
        features={"numeric": ["x"]},
    )


def test_label_expression_labels_rows_and_nulls_unknown_outcomes() -> None:
    spec = _label_spec("score < 10 and grade in ['a', 'b']")
    frame = pd.DataFrame({"score": [5.0, 20.0, 5.0, None], "grade": ["a", "a", "c", "b"]})
    labelled, stats = apply_label(frame, spec)
    assert labelled["risky"].tolist()[:3] == ["yes", "no", "no"] and pd.isna(labelled["risky"][3])
    assert stats == {"positive": 1, "unlabelled": 1}


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("score <", "does not parse"),
        ("__import__('os').system('true')", "Call is not allowed"),
        ("score.real > 1", "Attribute is not allowed"),
        ("score > @limit", "does not parse"),
        ("1 < 2", "reads no column"),
    ],
)
def test_a_label_expression_that_does_not_parse_is_a_spec_error(expression: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _label_spec(expression)


def test_a_label_rule_with_a_single_class_is_a_clear_error() -> None:
    spec = _label_spec("x > -1")
    window = pd.DataFrame({"id": [1, 2, 3], "event_date": ["2026-01-01"] * 3, "x": [1.0, 2.0, 3.0]})
    with pytest.raises(LabelError, match=r"gives a single class \(yes\) on all 3 labelled rows"):
        label_window(window, spec, "2026-01-05")


def test_label_delay_keeps_days_awaiting_their_outcome_out_of_training_and_holdout() -> None:
    spec = make_spec(label={"column": "y", "positive": 1, "delay_days": 2})
    days = [date(2026, 1, 1) + timedelta(days=d) for d in range(10)]
    window = pd.DataFrame(
        {"id": range(20), "event_date": [d.isoformat() for d in days for _ in (0, 1)], "x": 1.0, "y": [0, 1] * 10}
    )
    kept, labels = label_window(window, spec, "2026-01-10")
    assert labels.awaiting_outcome == 4 and labels.labelled_until == "2026-01-08"
    assert kept["event_date"].max() == "2026-01-08"
    train, holdout = split_window(window, spec, "2026-01-10")
    assert sorted(set(holdout["event_date"])) == ["2026-01-06", "2026-01-07", "2026-01-08"]
    assert train["event_date"].max() == "2026-01-05"


def test_a_label_delay_pulls_again_the_day_whose_outcome_became_known(settings, seeded_warehouse) -> None:
    import shutil

    from pipelines import stages
    from pipelines.data.sources import window_days

    shutil.copyfile(seeded_warehouse, settings.home / "warehouse.db")
    spec = stages.load_spec("healthcare", settings)
    assert spec.label.delay_days == 2
    ds = "2026-11-20"
    layout = Layout(settings, "healthcare")
    stale = pd.DataFrame({"test_id": [0], "event_date": ["x"]})
    for day in window_days(spec, ds)[:-1]:  # every earlier night already validated
        path = layout.validated(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        stale.to_parquet(path)
    record = stages.extract("healthcare", ds, settings=settings)
    # The day two nights back (stored before its result was in) is read again, joined and cleaned.
    assert record["refreshed_days"] == ["2026-11-18"] and record["backfilled_days"] == 0
    refreshed = pd.read_parquet(layout.raw("2026-11-18"))
    assert set(refreshed["event_date"]) == {"2026-11-18"} and refreshed["joined_clinics"].all()
    assert record["preparation"]["joins"]["clinics"]["matched"] == record["rows"]
    assert not layout.raw("2026-11-17").exists()
