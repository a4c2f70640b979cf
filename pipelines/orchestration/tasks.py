"""What runs inside each Airflow task: call one stage, map its errors.

Task bodies in the DAG are one call to `run_stage`.  The stage functions are
imported here, at run time, never at DAG parse time (they pull in pandas, and
their own callees torch, Great Expectations and DVC).

Failure semantics (see docs/airflow.md):

* `DataQualityError` -> its summary logged, then `DataQualityFailure`: the
  run fails at once (the tasks' retry policy), and the task log ends with the
  summary, not a traceback.  The stage already quarantined the partition and
  sent the data-quality alert; retrying would only re-check the same bad rows.
* `InvalidArgumentError` / `SpecError` (a logical date outside the data, a
  broken spec) -> `InvalidRunParams`: retrying cannot fix the arguments.
* any other `PipelineError` whose class says ``retryable = False`` (a training
  split with a single class, a stage run out of order, a broken registry
  invariant) -> `PermanentStageFailure`: fails at once, no retries spent.
* a retryable `PipelineError` and unexpected exceptions propagate unchanged:
  a transient fault, retried with exponential back-off.  That includes
  `RunAlreadyActive`: another run (a CLI run, say) holds the vertical, and
  the retry comes back after it.

Every stage holds the vertical's run lease (`pipelines.registry.run_lock`) with the DAG
run id as holder, so the run's tasks share it while a CLI run or another DAG
run is refused.  Between tasks the lease is parked for the next task; ``report``
and the run's last failure give it back.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from pipelines.notify.run_context import RunContext

log = logging.getLogger(__name__)

#: Record written (per vertical and date) when a task fails; `make run` reads it
#: to say *why* a vertical is blocked without digging through task logs.
FAILURE_RECORD = "airflow_failure"


class DataQualityFailure(SystemExit):
    """The vertical's suite failed: fail the run now, never retry, no traceback.

    Bad data is an expected outcome, not a crash: `run_stage` logs the summary
    and raises this.  A `SystemExit` because Airflow's task runner logs every
    other exception with its traceback ("Task failed with exception"), but a
    `SystemExit` as one line ("Task exited"), so the task log ends with the
    summary.  `DATA_QUALITY_RETRY_POLICY` (every task's ``retry_policy``) fails
    it at once instead of retrying.  The failure notifier recognises it and
    sends nothing more: the stage's own data-quality alert told the owners.
    """


def data_quality_retry_policy() -> Any:
    """The tasks' ``retry_policy``: a `DataQualityFailure` fails at once; anything else retries as usual."""
    from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

    return ExceptionRetryPolicy(
        rules=[
            RetryRule(
                exception=f"{__name__}.DataQualityFailure",
                action=RetryAction.FAIL,
                reason="bad data: a retry would re-check the same rows",
            )
        ]
    )


class InvalidRunParams(AirflowFailException):
    """The trigger's params contradict each other; retrying cannot fix them."""


class PermanentStageFailure(AirflowFailException):
    """A stage failed in a way a retry cannot change (its error's class says ``retryable = False``)."""


class RunInterrupted(AirflowFailException):
    """``make run`` was interrupted (Ctrl-C) while a task ran: the run stops, no retry, no email.

    Under ``dag.test()`` the tasks run in ``make run``'s own process, so Ctrl-C lands
    in the task, and Airflow's task runner takes the ``KeyboardInterrupt`` for a
    failure to retry: the run carried on after the retry delay.  Only
    `nightly.main` asks for this (`stop_on_interrupt`); a worker stopped by its
    operator keeps Airflow's behaviour (retried once it is back).
    """


#: The event ``make run``'s Ctrl-C handler sets (`stop_on_interrupt`); none elsewhere.
_CONSOLE_INTERRUPT: list[threading.Event] = []


def stop_on_interrupt(interrupted: threading.Event) -> None:
    """Make a stage that fails once ``interrupted`` is set end its run (``make run``'s Ctrl-C).

    Whatever the interrupt became by the time it left the stage: Lightning's
    Trainer, for one, turns ``KeyboardInterrupt`` into ``SystemExit(1)``.
    """
    _CONSOLE_INTERRUPT[:] = [interrupted]


def _interrupted_at_console() -> bool:
    return any(event.is_set() for event in _CONSOLE_INTERRUPT)


def airflow_error_for(exc: BaseException) -> BaseException | None:
    """The exception Airflow should see for a stage's error, or None to let it through (retried).

    Decided by the error's class alone (`pipelines.errors`), so a new error
    class cannot be retried by accident: it declares ``retryable`` or inherits it.
    """
    from pipelines.errors import DataQualityError, InvalidArgumentError, PipelineError, SpecError

    if _interrupted_at_console():
        return RunInterrupted("interrupted (Ctrl-C): the run stops here; run the same command again to finish it")
    if isinstance(exc, DataQualityError):
        return DataQualityFailure(f"{exc.vertical} {exc.ds}: data quality failed (summary above)")
    if isinstance(exc, InvalidArgumentError | SpecError):
        return InvalidRunParams(str(exc))
    if isinstance(exc, PipelineError) and not exc.retryable:
        return PermanentStageFailure(f"{type(exc).__name__}: {exc}")
    return None


@dataclass(frozen=True)
class RunOptions:
    """The validated trigger-form params of one DAG run."""

    dry_run: bool = False
    #: Set only when ``force_promotion`` is true; recorded with the decision.
    force_reason: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RunOptions:
        force = bool(params.get("force_promotion", False))
        reason = str(params.get("force_reason") or "").strip()
        if force and not reason:
            raise InvalidRunParams(
                "force_promotion is true but force_reason is empty: give the reason for overriding the gate "
                "(it is recorded with the decision) and trigger the run again"
            )
        if reason and not force:
            log.warning("force_reason %r ignored: force_promotion is false", reason)
        return cls(dry_run=bool(params.get("dry_run", False)), force_reason=reason if force else None)


def run_options(vertical: str, context: Mapping[str, Any]) -> RunOptions:
    """The run's validated params and dates; a contradiction is recorded and fails the task at once."""
    try:
        check_run_dates(vertical, context)
        return RunOptions.from_params(context["params"])
    except InvalidRunParams as exc:
        record_failure(vertical, run_ds(context), context, exc)
        raise


def check_run_dates(vertical: str, context: Mapping[str, Any]) -> None:
    """Refuse a run whose day is not over, or whose data interval is not exactly its day.

    The timetable already refuses both when a run is triggered without an explicit
    data interval (`pipelines.orchestration.timetable`); a trigger that passes
    ``data_interval_start``/``end`` bypasses it, so the first task checks again.
    """
    from pipelines.config import parse_ds
    from pipelines.orchestration.timetable import DayNotOverError, check_day_is_over, day_interval

    ds = run_ds(context)
    day = parse_ds(ds, vertical=vertical)
    try:
        check_day_is_over(day)
    except DayNotOverError as exc:
        raise InvalidRunParams(f"{vertical}: {exc}") from None
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and (start, end) != tuple(day_interval(day)):
        raise InvalidRunParams(
            f"{vertical} {ds}: data interval {start.isoformat()} -> {end.isoformat()} is not the UTC day "
            f"{ds} that this run processes; trigger without a data interval (Airflow then uses the day "
            "of the logical date)"
        )


def run_ds(context: Mapping[str, Any]) -> str:
    """The run's logical date as YYYY-MM-DD (UTC): the day whose data the run covers.

    The timetable (`pipelines.orchestration.timetable`) makes the data interval
    exactly that day: the run for the 27th has logical date 27th 00:00Z and data
    interval 27th 00:00Z -> 28th 00:00Z, and is scheduled on the 28th.  A run
    triggered without a logical date (Airflow 3 allows it; it has no data
    interval) covers the day before it ran, like tonight's run.
    """
    logical = context.get("logical_date")
    if logical is None:
        logical = context["dag_run"].run_after - timedelta(days=1)
    return logical.astimezone(UTC).date().isoformat()


def run_context(context: Mapping[str, Any]) -> RunContext:
    """The task's run ids and UI links, for messages the core builds (it never imports Airflow)."""
    from urllib.parse import quote

    from airflow.sdk.configuration import conf

    from pipelines.notify.run_context import RunContext

    ti = context.get("ti")
    dag_id = getattr(ti, "dag_id", None)
    run_id = context.get("run_id")
    # The same base URL Airflow builds ti.log_url from.
    base = str(conf.get("api", "base_url", fallback="http://localhost:8080/")).rstrip("/")
    run_url = f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}" if dag_id and run_id else None
    try:
        log_url: str | None = str(ti.log_url) if ti is not None else None
    except AttributeError:  # not every TaskInstance flavour carries one
        log_url = None
    return RunContext(
        origin="airflow",
        dag_id=dag_id,
        run_id=run_id,
        task_id=getattr(ti, "task_id", None),
        try_number=getattr(ti, "try_number", None),
        run_url=run_url,
        log_url=log_url,
    )


#: The last task of a run: its success gives the run lease back.
LAST_STAGE = "report"
#: How long a task waits for another run of its vertical before failing (and being retried).
LEASE_WAIT_S = 60.0


def run_stage(stage: str, vertical: str, context: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Call ``pipelines.stages.<stage>(vertical, ds, **kwargs)`` under the run lease; return its small record."""
    from pipelines.config import Settings
    from pipelines.orchestration import connections
    from pipelines.orchestration.task_logging import route_library_notices

    connections.install()  # sources, alerts, bucket and state see Airflow's connections
    route_library_notices(Settings.from_env().home)  # before the stages import Great Expectations
    from pipelines import stages
    from pipelines.errors import DataQualityError
    from pipelines.memory import release_freed_memory
    from pipelines.registry.run_lock import hold_run

    # Before the stage nothing of it exists yet: Airflow's task runner and the stack's modules (and,
    # under dag.test(), which runs a whole DAG in one process, the last task's garbage, collected
    # here).  Frozen, they are out of every collection the stage triggers (`release_freed_memory`).
    release_freed_memory(between_stages=True)
    ds = run_ds(context)
    holder = str(context["run_id"])
    if _interrupted_at_console():
        # Ctrl-C landed in Airflow's code around a task (it became a retry there): start nothing more.
        _give_back(vertical, holder)
        raise RunInterrupted("interrupted (Ctrl-C) before this task: run the same command again to finish it")
    try:
        # Parked on exit, success or not: the run's next task, or this task's retry, takes it up.
        with hold_run(
            vertical,
            ds,
            settings=Settings.from_env(),
            holder=holder,
            wait_s=LEASE_WAIT_S,
            park_on_exit=True,
            run_ended=run_ended_in_airflow(context),
        ):
            result: dict[str, Any] = getattr(stages, stage)(vertical, ds, **kwargs)
    except DataQualityError as exc:
        record_failure(vertical, ds, context, exc)
        _give_back(vertical, holder)  # the run stops here: no retry, no downstream task
        # The summary ends the task log: an expected outcome, told in two lines, no traceback.
        log.error("%s", exc)
        log.error(
            "%s %s: the data-quality alert went to the owners (the error above says what was quarantined or "
            "kept); no retry. Fix the source, then clear '%s' of this run (or trigger the date again).",
            vertical,
            ds,
            stage,
        )
        raise DataQualityFailure(f"{vertical} {ds}: data quality failed (summary above)") from exc
    except BaseException as exc:
        record_failure(vertical, ds, context, exc)
        permanent = airflow_error_for(exc)
        if permanent is not None or _last_try(context):
            _give_back(vertical, holder)  # the run stops here
        if permanent is not None:
            raise permanent from exc
        raise
    if stage == LAST_STAGE:
        _give_back(vertical, holder)
    return result


#: DAG run states after which no task of the run will take its parked lease up.
_ENDED_RUN_STATES = frozenset({"success", "failed"})


def run_ended_in_airflow(context: Mapping[str, Any]) -> Callable[[str], str | None]:
    """Whether the DAG run holding a parked lease is over, asked of Airflow (the Task SDK).

    An operator who marks a run failed (or success) in the UI, or deletes it, ends it
    between two tasks: its next task never starts, so nothing gives the parked lease
    back, and without this the vertical's next run would wait out the park (20 min).
    The holder is a run id of this task's own DAG (one DAG per vertical; a CLI holder
    is never an Airflow run).  Anything else Airflow cannot answer (no supervisor, an
    API server error) counts as "not over": the lease then frees itself as before.
    """
    from pipelines.registry.run_lock import CLI_HOLDER_PREFIX

    ti = context.get("ti")
    dag_id = getattr(ti, "dag_id", None)

    def ended(holder: str) -> str | None:
        if ti is None or dag_id is None or holder.startswith(CLI_HOLDER_PREFIX):
            return None
        try:
            raw = ti.get_dagrun_state(dag_id, holder)
        except Exception as exc:
            if _run_not_found(exc):
                return f"its Airflow run {dag_id} / {holder} was deleted"
            log.debug("could not read the state of run %s of %s: %s", holder, dag_id, exc)
            return None
        state = str(getattr(raw, "value", raw))  # an enum of str in the Task SDK's models
        return f"its Airflow run {dag_id} / {holder} is {state}" if state in _ENDED_RUN_STATES else None

    return ended


def _run_not_found(exc: BaseException) -> bool:
    """Whether the Execution API answered "no such DAG run" (404, reason ``not_found``).

    The Task SDK raises `AirflowRuntimeError` carrying the API server's answer.  Only
    that exact answer counts: a 404 without it (a wrong API URL, a proxy) says nothing
    about the run.
    """
    from airflow.sdk.exceptions import AirflowRuntimeError

    if not isinstance(exc, AirflowRuntimeError) or not isinstance(exc.error.detail, dict):
        return False
    answer = exc.error.detail
    body = answer.get("detail")
    reason = body.get("detail") if isinstance(body, dict) else None
    return answer.get("status_code") == 404 and isinstance(reason, dict) and reason.get("reason") == "not_found"


def _last_try(context: Mapping[str, Any]) -> bool:
    """Whether Airflow will not retry this task (its run ends with this failure)."""
    ti = context.get("ti")
    return int(getattr(ti, "try_number", 1) or 1) > int(getattr(ti, "max_tries", 0) or 0)


def _give_back(vertical: str, holder: str) -> None:
    """Release the run's lease (a no-op when it holds none, e.g. refused before taking it)."""
    from pipelines.config import Settings
    from pipelines.registry.run_lock import RunLock

    RunLock.from_settings(Settings.from_env()).release(vertical, holder)


def record_failure(vertical: str, ds: str, context: Mapping[str, Any], exc: BaseException) -> None:
    """Write what failed next to the stage records (each failed try overwrites it)."""
    from pipelines.config import Settings
    from pipelines.layout import Layout

    ti = context.get("ti")
    record = {
        "vertical": vertical,
        "ds": ds,
        "run_id": context.get("run_id"),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "error_type": type(exc).__name__,
        "data_quality": type(exc).__name__ == "DataQualityError",
        "error": str(exc),
        "traceback": traceback.format_exception(exc)[-3:],
        "at": datetime.now(UTC).isoformat(),
    }
    try:
        Layout(Settings.from_env(), vertical).write_record(ds, FAILURE_RECORD, record)
    except OSError:
        # Never let the bookkeeping mask the task's real error.
        log.exception("could not record the failure of %s %s", vertical, ds)
