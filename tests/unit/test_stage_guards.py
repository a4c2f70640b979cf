"""Guards in the stages that keep production safe on reruns and backfills."""

from __future__ import annotations

import json

import pytest

from pipelines.config import load_spec
from pipelines.data.quality import FailedExpectation, _mask_failure
from pipelines.errors import DeployError
from pipelines.stages import _deploy_blocker


def write_pointer(settings, version: str, ds: str) -> None:
    path = settings.home / "bucket" / "finance" / "production.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": version, "ds": ds}))


def decision(model: str, champion: str | None, *, forced: bool = False) -> dict:
    return {"model_version": model, "champion_version": champion, "forced": forced}


def test_first_deployment_is_not_blocked(settings):
    assert _deploy_blocker(load_spec("finance", settings), "2026-11-27", decision("mv-a", None), settings) is None


def test_an_older_date_never_replaces_a_newer_champion(settings):
    write_pointer(settings, "mv-new", "2026-12-15")
    spec = load_spec("finance", settings)
    why = _deploy_blocker(spec, "2026-11-27", decision("mv-old", "mv-new"), settings)
    assert why is not None and "later date (2026-12-15)" in why
    # ...unless someone forced it, with a recorded reason.
    assert _deploy_blocker(spec, "2026-11-27", decision("mv-old", "mv-new", forced=True), settings) is None
    # A newer date replaces it as usual.
    assert _deploy_blocker(spec, "2026-12-16", decision("mv-next", "mv-new"), settings) is None


def test_a_decision_made_against_another_champion_is_stale(settings):
    write_pointer(settings, "mv-rolled-back-to", "2026-11-20")
    spec = load_spec("finance", settings)
    with pytest.raises(DeployError, match="production changed since this run's evaluation"):
        _deploy_blocker(spec, "2026-11-27", decision("mv-a", "mv-was-champion"), settings)


def test_failed_values_of_a_pii_column_are_masked():
    failure = FailedExpectation(
        expectation="expect_column_values_to_be_in_set",
        column="patient_name",
        expected={"value_set": ["x"]},
        observed=None,
        unexpected_count=2,
        unexpected_percent=1.0,
        sample_values=["Alice", "Bob"],
        sample_keys=[{"id": 1, "patient_name": "Alice"}, {"id": 2, "patient_name": "Bob"}],
        notes=None,
    )
    masked = _mask_failure(failure, ["patient_name"])
    assert masked.sample_values == ["***", "***"]
    assert masked.sample_keys == [{"id": 1, "patient_name": "***"}, {"id": 2, "patient_name": "***"}]
    assert _mask_failure(failure, ["other"]).sample_values == ["Alice", "Bob"]
