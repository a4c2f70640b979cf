"""The snapshot stage's inputs fingerprint: whatever can change the window changes it."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.config import Settings, VerticalSpec, load_spec
from pipelines.layout import Layout
from pipelines.stages import window_inputs

DS = "2026-11-27"


@pytest.fixture
def spec(settings: Settings) -> VerticalSpec:
    return load_spec("finance", settings)


@pytest.fixture
def layout(settings: Settings, spec: VerticalSpec) -> Layout:
    layout = Layout(settings, spec.name)
    for day in ("2026-11-25", "2026-11-26", DS):
        path = layout.validated(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"amount": [1.0, 2.0], "day": [day, day]}).to_parquet(path)
    return layout


def test_same_inputs_same_fingerprint(spec: VerticalSpec, layout: Layout) -> None:
    assert window_inputs(spec, DS, layout) == window_inputs(spec, DS, layout)


def test_a_changed_partition_changes_it(spec: VerticalSpec, layout: Layout) -> None:
    before = window_inputs(spec, DS, layout)
    pd.DataFrame({"amount": [1.0, 3.0], "day": ["2026-11-26"] * 2}).to_parquet(layout.validated("2026-11-26"))
    assert window_inputs(spec, DS, layout) != before


def test_a_removed_or_added_partition_changes_it(spec: VerticalSpec, layout: Layout) -> None:
    before = window_inputs(spec, DS, layout)
    layout.validated("2026-11-25").unlink()
    assert window_inputs(spec, DS, layout) != before


def test_a_changed_label_rule_changes_it(spec: VerticalSpec, layout: Layout) -> None:
    relabelled = spec.model_copy(update={"label": spec.label.model_copy(update={"positive": "good"})})
    assert window_inputs(relabelled, DS, layout) != window_inputs(spec, DS, layout)


def test_a_changed_spec_section_changes_it(spec: VerticalSpec, layout: Layout) -> None:
    shorter = spec.model_copy(update={"window": spec.window.model_copy(update={"train_days": 200})})
    assert window_inputs(shorter, DS, layout) != window_inputs(spec, DS, layout)
    more_pii = spec.model_copy(update={"pii": [*spec.pii, "amount"]})  # a column dropped before versioning
    assert window_inputs(more_pii, DS, layout) != window_inputs(spec, DS, layout)


def test_another_date_changes_it(spec: VerticalSpec, layout: Layout) -> None:
    assert window_inputs(spec, "2026-11-28", layout) != window_inputs(spec, DS, layout)
