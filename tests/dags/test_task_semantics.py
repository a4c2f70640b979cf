"""What the task bodies and callbacks decide, without running Airflow.

Params validation, the run's date, the error mapping that decides retry vs
fail-now, and where a failure email goes.  The same paths run for real
through Airflow in tests/integration/test_airflow_alerts.py.
"""

from __future__ import annotations

import email
import logging
from datetime import UTC, datetime
from email import policy
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from pipelines import stages
from pipelines.errors import DataQualityError, SourceError
from pipelines.orchestration import notifiers
from pipelines.orchestration.dag_files import (
    MARKER,
    DagFileError,
    is_generated,
    render_dag_file,
    sync_dag_files,
)
from pipelines.orchestration.notifiers import FailureNotifier, failure_message
from pipelines.orchestration.tasks import (
    FAILURE_RECORD,
    DataQualityFailure,
    InvalidRunParams,
    RunOptions,
    data_quality_retry_policy,
    run_ds,
    run_stage,
)

pytestmark = pytest.mark.airflow


def context(ds: str = "2026-11-27", **extra):
    ti = SimpleNamespace(task_id="validate", dag_id="finance", try_number=1, log_url="http://localhost:8080/log")
    return {
        "logical_date": datetime.fromisoformat(f"{ds}T00:00:00+00:00"),
        "run_id": "manual__x",
        "ti": ti,
        "params": {},
        **extra,
    }


# -- params --------------------------------------------------------------------


def test_defaults_deploy_and_do_not_force():
    assert RunOptions.from_params({}) == RunOptions(dry_run=False, force_reason=None)


def test_dry_run_param():
    assert RunOptions.from_params({"dry_run": True}).dry_run is True


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_force_without_reason_fails_without_retry(reason):
    with pytest.raises(InvalidRunParams, match="force_reason is empty") as err:
        RunOptions.from_params({"force_promotion": True, "force_reason": reason})
    assert isinstance(err.value, AirflowFailException)  # Airflow does not retry it


def test_force_reason_is_passed_only_when_forcing():
    forced = RunOptions.from_params({"force_promotion": True, "force_reason": " CFO sign-off #12 "})
    assert forced.force_reason == "CFO sign-off #12"
    assert RunOptions.from_params({"force_promotion": False, "force_reason": "x"}).force_reason is None


# -- the run's date --------------------------------------------------------------


def test_ds_is_the_logical_date_in_utc():
    assert run_ds({"logical_date": datetime(2026, 11, 27, 2, 0, tzinfo=UTC)}) == "2026-11-27"


def test_run_without_logical_date_covers_the_day_before_it_ran():
    dag_run = SimpleNamespace(run_after=datetime(2026, 11, 28, 9, 30, tzinfo=UTC))
    assert run_ds({"dag_run": dag_run}) == "2026-11-27"


# -- error mapping -------------------------------------------------------------------


def test_data_quality_error_fails_the_run_without_retry(settings, monkeypatch):
    def bad(vertical, ds, **_):
        raise DataQualityError("2 expectations failed", vertical=vertical, ds=ds)

    monkeypatch.setattr(stages, "validate", bad)
    with pytest.raises(DataQualityFailure, match="finance 2026-11-27: data quality failed") as err:
        run_stage("validate", "finance", context())
    assert isinstance(err.value.__cause__, DataQualityError)
    decision = data_quality_retry_policy().evaluate(err.value, try_number=1, max_tries=3)
    assert decision.action.value == "fail"  # Airflow does not retry it
    for other in (SourceError("warehouse down"), RuntimeError("disk full")):
        assert data_quality_retry_policy().evaluate(other, try_number=1, max_tries=3).action.value == "default"
    record = (settings.home / "runs" / "finance" / "2026-11-27" / f"{FAILURE_RECORD}.json").read_text()
    assert '"data_quality": true' in record and '"run_id": "manual__x"' in record


@pytest.mark.parametrize("exc", [SourceError("warehouse down"), RuntimeError("disk full")])
def test_other_errors_stay_retryable(settings, monkeypatch, exc):
    def flaky(vertical, ds, **_):
        raise exc

    monkeypatch.setattr(stages, "extract", flaky)
    with pytest.raises(type(exc)) as err:
        run_stage("extract", "finance", context())
    assert not isinstance(err.value, AirflowFailException)
    assert (settings.home / "runs" / "finance" / "2026-11-27" / f"{FAILURE_RECORD}.json").exists()


def test_stage_gets_vertical_ds_and_kwargs(settings, monkeypatch):
    seen = {}

    def gate(vertical, ds, **kwargs):
        seen.update(vertical=vertical, ds=ds, **kwargs)
        return {"approved": True}

    monkeypatch.setattr(stages, "gate", gate)
    assert run_stage("gate", "finance", context(), force_reason="why", run_id="r1") == {"approved": True}
    assert seen == {"vertical": "finance", "ds": "2026-11-27", "force_reason": "why", "run_id": "r1"}


# -- the run lease ---------------------------------------------------------------------


def test_tasks_of_one_run_share_the_lease_and_report_gives_it_back(settings, monkeypatch):
    from pipelines.errors import RunAlreadyActive
    from pipelines.registry.run_lock import RunLock

    for stage in ("extract", "report"):
        monkeypatch.setattr(stages, stage, lambda vertical, ds, **_: {"ok": True})
    lock = RunLock.from_settings(settings)

    run_stage("extract", "finance", context())
    parked = lock.current("finance")
    assert parked is not None and parked.holder == "manual__x" and parked.pid is None  # kept for the next task
    with pytest.raises(RunAlreadyActive, match="run id manual__x"):
        lock.acquire("finance", "2026-11-27", "cli:someone")  # a CLI run between two tasks is refused

    run_stage("report", "finance", context())
    assert lock.current("finance") is None


def test_another_run_holding_the_vertical_fails_the_task_retryably(settings, monkeypatch):
    from pipelines.errors import RunAlreadyActive
    from pipelines.orchestration import tasks
    from pipelines.registry.run_lock import RunLock

    monkeypatch.setattr(tasks, "LEASE_WAIT_S", 0.2)
    monkeypatch.setattr(stages, "extract", lambda vertical, ds, **_: pytest.fail("ran while another run held it"))
    RunLock.from_settings(settings).acquire("finance", "2026-11-27", "cli:vm:1:abc")
    with pytest.raises(RunAlreadyActive, match=r"already running .*cli:vm:1:abc") as err:
        run_stage("extract", "finance", context())
    assert not isinstance(err.value, AirflowFailException)  # Airflow retries it after the other run


def test_a_data_quality_stop_gives_the_lease_back(settings, monkeypatch):
    from pipelines.registry.run_lock import RunLock

    def bad(vertical, ds, **_):
        raise DataQualityError("2 expectations failed", vertical=vertical, ds=ds)

    monkeypatch.setattr(stages, "validate", bad)
    with pytest.raises(DataQualityFailure):
        run_stage("validate", "finance", context())
    assert RunLock.from_settings(settings).current("finance") is None


def test_a_logical_date_outside_the_data_fails_without_retry(settings):
    with pytest.raises(InvalidRunParams, match="before 2024-01-01"):
        run_stage("extract", "finance", context(ds="1900-01-01"))


# -- failure notifier ----------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1)], ids=["as raised", "as Lightning re-raises it"])
def test_ctrl_c_in_make_run_ends_the_run_and_gives_the_lease_back(settings, monkeypatch, exc):
    import threading

    from pipelines.orchestration import tasks
    from pipelines.orchestration.tasks import RunInterrupted, stop_on_interrupt
    from pipelines.registry.run_lock import RunLock

    monkeypatch.setattr(tasks, "_CONSOLE_INTERRUPT", [])
    interrupted = threading.Event()
    stop_on_interrupt(interrupted)  # what `make run` does; a worker never does
    started: list[str] = []

    def interrupted_stage(vertical, ds, **_):
        started.append("train")
        interrupted.set()  # the Ctrl-C handler's first act
        raise exc

    monkeypatch.setattr(stages, "train", interrupted_stage)
    with pytest.raises(RunInterrupted, match="run the same command again"):
        run_stage("train", "finance", context())
    assert RunLock.from_settings(settings).current("finance") is None  # nothing parked to wait out

    # A task Airflow retries in the same process afterwards (the interrupt hit its own code) starts nothing.
    monkeypatch.setattr(stages, "evaluate", lambda vertical, ds, **_: started.append("evaluate"))
    with pytest.raises(RunInterrupted, match="before this task"):
        run_stage("evaluate", "finance", context())
    assert started == ["train"]


def test_an_interrupt_outside_make_run_stays_airflows_to_retry(settings, monkeypatch):
    def stopped(vertical, ds, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "train", stopped)
    with pytest.raises(KeyboardInterrupt):  # a worker stopped by its operator: retried once it is back
        run_stage("train", "finance", context())


def test_no_failure_email_for_the_operators_own_ctrl_c(settings, monkeypatch):
    from pipelines.orchestration.tasks import RunInterrupted

    monkeypatch.setattr(notifiers, "smtp_connection", lambda _: pytest.fail("must not look up SMTP"))
    FailureNotifier(vertical="finance", to=["a@example.com"]).notify(context(exception=RunInterrupted("Ctrl-C")))
    assert not (settings.home / "outbox").exists()


def test_no_second_email_for_a_data_quality_failure(settings, monkeypatch):
    monkeypatch.setattr(notifiers, "smtp_connection", lambda _: pytest.fail("must not look up SMTP"))
    FailureNotifier(vertical="finance", to=["a@example.com"]).notify(
        context(exception=DataQualityFailure("suite failed"))
    )
    assert not (settings.home / "outbox").exists()


def test_failure_email_goes_to_the_outbox_without_smtp(settings, monkeypatch):
    monkeypatch.setattr(notifiers, "smtp_connection", lambda _: None)
    FailureNotifier(vertical="finance", to=["a@example.com", "b@example.com"]).notify(
        context(exception=SourceError("warehouse down", vertical="finance", ds="2026-11-27"))
    )
    [path] = (settings.home / "outbox").glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["Subject"] == "[retrain failed] finance 2026-11-27: task validate"
    assert message["To"] == "a@example.com, b@example.com"
    body = message.get_body(("plain",)).get_content()
    assert "SourceError: [finance, 2026-11-27] warehouse down" in body
    assert "No model is in production for this vertical yet." in body  # read from the bucket, not assumed
    assert "python -m pipelines run finance --date 2026-11-27" in body


def test_failure_email_is_sent_through_smtp_default(settings, smtp_server):
    FailureNotifier(vertical="finance", to=["a@example.com"]).notify(context(exception=RuntimeError("{{ boom }}")))
    [message] = smtp_server.messages
    assert message["Subject"] == "[retrain failed] finance 2026-11-27: task validate"
    assert message["From"] == "airflow@example.com"  # from the connection's extra
    html_part = message.get_body(("html",)).get_content()
    assert "RuntimeError: {{ boom }}" in html_part  # not rendered as a template
    assert not (settings.home / "outbox").exists()


def test_failure_message_names_task_run_and_rerun():
    subject, body = failure_message("finance", context(exception=RuntimeError("x")))
    assert subject == "[retrain failed] finance 2026-11-27: task validate"
    assert "finance / manual__x" in body and "try 1" in body
    assert "airflow tasks clear finance -t '^validate$' -d -s 2026-11-27 -e 2026-11-27" in body


# -- generated DAG files ---------------------------------------------------------


def test_sync_writes_rewrites_and_removes_only_generated_files(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "handwritten.py").write_text("# my own DAG\n")
    (dags / "stale.py").write_text(render_dag_file("stale"))
    (dags / "b_vertical.py").write_text(render_dag_file("b_vertical") + "# edited\n")

    report = sync_dag_files(dags, ["a_vertical", "b_vertical"])

    assert report.written == ["a_vertical", "b_vertical"] and report.removed == ["stale"]
    assert sorted(p.name for p in dags.iterdir()) == ["a_vertical.py", "b_vertical.py", "handwritten.py"]
    assert (dags / "b_vertical.py").read_text() == render_dag_file("b_vertical")
    assert sync_dag_files(dags, ["a_vertical", "b_vertical"]).unchanged == ["a_vertical", "b_vertical"]


def test_check_mode_writes_nothing(tmp_path):
    report = sync_dag_files(tmp_path, ["a_vertical"], check=True)
    assert report.written == ["a_vertical"] and not list(tmp_path.iterdir())


def test_sync_never_overwrites_a_handwritten_file(tmp_path):
    (tmp_path / "finance.py").write_text("# hand-written\n")
    with pytest.raises(DagFileError, match="was not generated"):
        sync_dag_files(tmp_path, ["finance"])


def test_sync_rejects_a_name_airflow_cannot_use(tmp_path):
    with pytest.raises(DagFileError, match="rename the file"):
        sync_dag_files(tmp_path, ["Bad-Name"])


def test_generated_file_is_recognised_and_parsed_by_airflow_heuristics(tmp_path):
    path = tmp_path / "finance.py"
    path.write_text(render_dag_file("finance"))
    assert is_generated(path) and path.read_text().startswith(MARKER)
    content = path.read_text().lower()
    assert "airflow" in content and "dag" in content  # DAG discovery safe mode


# -- task logs -------------------------------------------------------------------


def test_data_quality_failure_logs_its_summary_last(settings, monkeypatch, caplog):
    def bad(vertical, ds, **_):
        raise DataQualityError("1 of 18 expectations failed on 3954 rows: age", vertical=vertical, ds=ds)

    monkeypatch.setattr(stages, "validate", bad)
    with caplog.at_level(logging.INFO), pytest.raises(DataQualityFailure):
        run_stage("validate", "finance", context())
    summary, hint = [r.getMessage() for r in caplog.records if r.name == "pipelines.orchestration.tasks"][-2:]
    assert "1 of 18 expectations failed on 3954 rows: age" in summary
    assert "no retry" in hint and "clear 'validate'" in hint


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_library_notices_go_to_a_file_and_their_warnings_to_the_task_log(settings):
    from pipelines.orchestration.task_logging import route_library_notices

    library = logging.getLogger("great_expectations")
    saved = (library.handlers[:], library.propagate, library.level)
    library.setLevel(logging.NOTSET)  # an in-process `python -m pipelines` run (tests/unit) raised it to WARNING
    for handler in saved[0]:  # an earlier test's run_stage routed them to its own home
        if getattr(handler, "_pipelines_route", False):
            library.removeHandler(handler)
    task_log, root = _Collect(), logging.getLogger()  # stands in for Airflow's task-log handler
    root.addHandler(task_log)
    old_level, root.level = root.level, logging.INFO
    try:
        path = route_library_notices(settings.home)
        assert route_library_notices(settings.home) == path
        assert sum(getattr(h, "_pipelines_route", False) for h in library.handlers) == 2  # idempotent
        gx = logging.getLogger("great_expectations._docs_decorators")
        gx.info("Skipping registering function get_context because it does not have a class")
        gx.warning("a real GX warning")
        logging.getLogger("pipelines.stages").info("our own notice")
        assert task_log.messages == ["a real GX warning", "our own notice"]
        for handler in library.handlers:
            handler.flush()
        text = path.read_text()
        assert "Skipping registering function get_context" in text and "a real GX warning" in text
        assert path.is_relative_to(settings.home)
    finally:
        root.removeHandler(task_log)
        root.level = old_level
        for handler in library.handlers[:]:
            if handler not in saved[0]:
                library.removeHandler(handler)
                handler.close()
        library.handlers[:0] = [h for h in saved[0] if h not in library.handlers]
        library.propagate = saved[1]
        library.setLevel(saved[2])


def test_run_context_carries_the_airflow_run_and_its_links(monkeypatch):
    """What the validate task hands the core for the data-quality alert (the core never imports Airflow)."""
    from pipelines.orchestration.tasks import run_context

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    ctx = context(run_id="scheduled__2026-11-27T02:00:00+00:00")
    run = run_context(ctx)
    assert run.from_airflow and (run.dag_id, run.task_id, run.try_number) == ("finance", "validate", 1)
    assert run.run_id == "scheduled__2026-11-27T02:00:00+00:00"
    assert run.run_url == "https://airflow.example.com/dags/finance/runs/scheduled__2026-11-27T02%3A00%3A00%2B00%3A00"
    assert run.log_url == "http://localhost:8080/log"  # Airflow's own ti.log_url


# -- a parked lease whose run is over ------------------------------------------


def _answering(answer):
    """A task instance whose ``get_dagrun_state`` answers like the Task SDK: a state, or raises."""

    def get_dagrun_state(dag_id, run_id):
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return {"ti": SimpleNamespace(dag_id="finance", get_dagrun_state=get_dagrun_state)}


def _api_error(status: int, body: object) -> BaseException:
    # What the supervisor sends back for an Execution API error (supervisor.py, ServerResponseError).
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    detail = {"status_code": status, "message": "Server returned error", "detail": body}
    return AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail=detail))


def test_a_parked_lease_of_a_failed_or_deleted_run_is_known_to_be_over():
    from pipelines.orchestration.tasks import run_ended_in_airflow

    assert run_ended_in_airflow(_answering("failed"))("manual__a") == "its Airflow run finance / manual__a is failed"
    not_found = {"detail": {"reason": "not_found", "message": "Dag run ... was not found"}}
    assert run_ended_in_airflow(_answering(_api_error(404, not_found)))("manual__a") == (
        "its Airflow run finance / manual__a was deleted"
    )
    assert run_ended_in_airflow(_answering("failed"))("cli:someone") is None  # a CLI holder is never a run


@pytest.mark.parametrize(
    "answer",
    [
        "running",
        "queued",
        _api_error(404, {"detail": "Not Found"}),  # a route that does not exist says nothing of the run
        _api_error(500, {"detail": {"reason": "not_found"}}),
        ConnectionError("no supervisor"),
    ],
    ids=["running", "queued", "wrong-route", "server-error", "no-supervisor"],
)
def test_a_run_that_may_go_on_keeps_its_parked_lease(answer):
    from pipelines.orchestration.tasks import run_ended_in_airflow

    assert run_ended_in_airflow(_answering(answer))("manual__a") is None
