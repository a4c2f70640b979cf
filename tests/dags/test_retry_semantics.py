"""Only transient failures are retried: each error class says so, and the task layer maps it.

One row per error class of `pipelines.errors` (and its subclasses elsewhere in
the package): a new class without a row fails `test_every_error_class_has_a_row`.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from pipelines import errors, stages
from pipelines.connections import ConnectionConfigError
from pipelines.data.labels import LabelError
from pipelines.model.features import MissingFeatureError
from pipelines.model.training import split_window
from pipelines.notify.alerts import AlertDeliveryError
from pipelines.orchestration.tasks import (
    DataQualityFailure,
    InvalidRunParams,
    PermanentStageFailure,
    airflow_error_for,
    data_quality_retry_policy,
    run_stage,
)
from pipelines.registry.run_lock import RunLock
from pipelines.state import StateError

from ..unit.test_training import dated, make_spec

pytestmark = pytest.mark.airflow

#: error class -> (retryable, what Airflow sees: None = the error itself, retried with back-off)
EXPECTED: dict[type[errors.PipelineError], tuple[bool, type[BaseException] | None]] = {
    errors.PipelineError: (False, PermanentStageFailure),
    errors.SpecError: (False, InvalidRunParams),
    errors.InvalidArgumentError: (False, InvalidRunParams),
    errors.SourceError: (True, None),
    errors.DataQualityError: (False, DataQualityFailure),
    errors.VersioningError: (True, None),
    errors.TrainingError: (False, PermanentStageFailure),
    MissingFeatureError: (False, PermanentStageFailure),
    # A label rule that cannot label the data (single class, missing input) is the spec's fault.
    LabelError: (False, InvalidRunParams),
    errors.DeployError: (True, None),
    errors.StageOrderError: (False, PermanentStageFailure),
    errors.RegistryError: (True, None),
    # Only the CLI's `reproduce` raises it; in a task it would be a permanent failure.
    errors.ReproductionError: (False, PermanentStageFailure),
    errors.RunAlreadyActive: (True, None),
    AlertDeliveryError: (True, None),
    ConnectionConfigError: (False, PermanentStageFailure),
    StateError: (True, None),
}


def _subclasses(cls: type) -> set[type]:
    return {cls} | {sub for direct in cls.__subclasses__() for sub in _subclasses(direct)}


def _instance(cls: type[errors.PipelineError]) -> errors.PipelineError:
    if cls is MissingFeatureError:
        return MissingFeatureError(["age"], ["income"])
    return cls("it broke", vertical="finance", ds="2026-11-27")


def _context() -> dict:
    ti = SimpleNamespace(task_id="train", dag_id="finance", try_number=1, max_tries=3, log_url="http://x/log")
    return {"logical_date": datetime(2026, 11, 27, tzinfo=UTC), "run_id": "manual__retry", "ti": ti, "params": {}}


def test_every_error_class_has_a_row():
    """Every subclass of PipelineError defined anywhere in the package (found in the source, loaded or not)."""
    names = {c.__name__ for c in EXPECTED}
    defined = set()
    for path in sorted((Path(errors.__file__).parent).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).split(".")[-1] in names for base in node.bases):
                defined.add(node.name)
    assert defined - names == set(), "give the new error class a row (and a retryable flag)"
    loaded = {c for c in _subclasses(errors.PipelineError) if c.__module__.startswith("pipelines.")}
    assert loaded <= set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_class_declares_whether_it_is_retryable(cls):
    assert "retryable" in vars(cls), f"{cls.__name__} inherits retryable; say it explicitly"
    assert cls.retryable is EXPECTED[cls][0]


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_airflow_side_mapping(cls):
    retryable, expected = EXPECTED[cls]
    mapped = airflow_error_for(_instance(cls))
    if expected is None:
        assert mapped is None  # raised unchanged: Airflow retries it with back-off
    else:
        assert type(mapped) is expected
    # Failing at once means: an AirflowFailException, or the data-quality stop the retry policy fails.
    fails_now = isinstance(mapped, AirflowFailException) or (
        mapped is not None
        and data_quality_retry_policy().evaluate(mapped, try_number=1, max_tries=3).action.value == "fail"
    )
    assert fails_now is not retryable


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_run_stage_fails_at_once_or_lets_airflow_retry(cls, settings, monkeypatch):
    expected = EXPECTED[cls][1]
    error = _instance(cls)

    def stage(vertical, ds, **_):
        raise error

    monkeypatch.setattr(stages, "train", stage)
    with pytest.raises(BaseException) as caught:
        run_stage("train", "finance", _context())
    if expected is None:
        assert caught.value is error
        # Not the last try: the lease stays parked for the retry.
        assert RunLock.from_settings(settings).current("finance") is not None
    else:
        assert type(caught.value) is expected and caught.value.__cause__ is error
        assert RunLock.from_settings(settings).current("finance") is None  # the run ends: lease given back


def test_a_single_class_training_split_is_not_retried():
    """The real check in training raises a non-retryable TrainingError, which fails the task at once."""
    frame = dated(["2024-01-02", "2024-01-03", "2024-01-09"], ["good", "good", "bad"])
    with pytest.raises(errors.TrainingError, match="single class") as caught:
        split_window(frame, make_spec(), "2024-01-10")
    assert isinstance(airflow_error_for(caught.value), PermanentStageFailure)


def test_a_stage_out_of_order_is_not_retried(settings):
    """Gate before evaluate: the stage's own StageOrderError, mapped to a failure without retry."""
    with pytest.raises(PermanentStageFailure, match="StageOrderError") as caught:
        run_stage("gate", "finance", _context())
    assert isinstance(caught.value.__cause__, errors.StageOrderError)
