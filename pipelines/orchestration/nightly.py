"""`make run`: tonight's retraining for every vertical, through Airflow.

Runs each vertical's DAG with ``dag.test()`` against the embedded defaults
(`pipelines.orchestration.airflow_env`): the real Airflow task runner,
trigger rules, retries, callbacks, XComs and metadata DB, in one process, so
no scheduler or API server has to be started.  What the runs log goes to
``<PIPELINES_HOME>/logs/run-<ds>-<time>.log``; the console gets one line per
vertical (`pipelines.orchestration.run_output`), then the same decision table
as ``python -m pipelines run all``.

Exit status: 0 when every vertical's run succeeded, 1 otherwise.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.orchestration.airflow_env import apply_embedded_defaults

if TYPE_CHECKING:
    from airflow.sdk import DAG


def yesterday() -> str:
    return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


def migrate_metadata_db() -> None:
    """Create or upgrade Airflow's metadata DB; when its schema is already current, only the cheap upkeep.

    ``airflow db migrate`` on a current DB still loads all of Airflow's ~120 Alembic scripts (twice),
    takes the migration lock and instantiates every external DB manager: seconds of each `make run`.
    What it does besides migrating (the default pool, the log template row) is kept.
    """
    from airflow.utils import db

    if schema_is_current():
        db.add_default_pool_if_not_exists()
        db.synchronize_log_template()
        return
    db.upgradedb()


#: Airflow's default auth manager: it keeps its users in a file, no DB manager of its own.
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def schema_is_current() -> bool:
    """Whether the metadata DB is at this Airflow's migration head and nothing else needs migrating.

    The head comes from Airflow's own version-to-revision map (what ``airflow db migrate
    --to-version`` uses): the newest entry at or below the installed version.  Only Airflow's core
    tables are checked this cheaply, so any external DB manager (a provider's, the auth manager's,
    ``[database] external_db_managers``) means "not known current": the full migration decides.
    """
    from airflow import __version__, settings
    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager
    from airflow.utils.db import _REVISION_HEADS_MAP
    from alembic.migration import MigrationContext
    from packaging.version import Version

    if conf.get("database", "external_db_managers", fallback=None) or ProvidersManager().db_managers:
        return False
    # Asking the auth manager class imports Airflow's whole API app; the embedded default keeps no tables.
    auth_manager = conf.get("core", "auth_manager")
    if auth_manager != SIMPLE_AUTH_MANAGER and conf.getimport("core", "auth_manager").get_db_manager():
        return False
    installed = Version(__version__)
    if installed.is_prerelease:  # a dev or rc build may carry migrations its release's map entry lacks
        return False
    known = [v for v in _REVISION_HEADS_MAP if Version(v) <= installed]
    if not known:
        return False
    head = _REVISION_HEADS_MAP[max(known, key=Version)]
    with settings.get_engine().connect() as connection:
        return MigrationContext.configure(connection).get_current_heads() == (head,)


def load_dags() -> tuple[dict[str, DAG], dict[str, str]]:
    """Parse the configured dags folder: DAGs by id, import errors by file."""
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(conf.get("core", "dags_folder"))
    return dict(bag.dags), dict(bag.import_errors)


def run_conf(*, dry_run: bool, force_reason: str | None) -> dict[str, Any]:
    return {"dry_run": dry_run, "force_promotion": bool(force_reason), "force_reason": force_reason or None}


def logical_date(ds: str) -> datetime:
    """The logical date of ``make run``'s run for ``ds``: midnight UTC."""
    return datetime.combine(date.fromisoformat(ds), datetime.min.time(), tzinfo=UTC)


def run_vertical(dag: DAG, ds: str, conf: dict[str, Any]) -> dict[str, Any]:
    """One DAG run for ``ds`` (logical date ``ds``T00:00Z); returns its summary row."""
    from pipelines.config import Settings
    from pipelines.layout import Layout
    from pipelines.orchestration.run_output import stage_outcomes
    from pipelines.orchestration.tasks import FAILURE_RECORD

    logical = logical_date(ds)
    started = time.monotonic()
    started_at = datetime.now(UTC)
    dag_run = dag.test(logical_date=logical, run_conf=conf)
    record_honest_run(dag.dag_id, dag_run.run_id, started_at)
    layout = Layout(Settings.from_env(), dag.dag_id)
    state = str(dag_run.state)
    row: dict[str, Any]
    if state == "success":
        row = layout.read_record(ds, "report", needed_by="make run")
    else:
        row = {"vertical": dag.dag_id, "ds": ds, "blocked": f"run {state}", "error": "see the run's log file"}
        if layout.has_record(ds, FAILURE_RECORD):
            failure = layout.read_record(ds, FAILURE_RECORD, needed_by="make run")
            if failure.get("run_id") == dag_run.run_id:
                kind = (
                    "data quality" if failure.get("data_quality") else f"{failure['task_id']}: {failure['error_type']}"
                )
                row.update(blocked=kind, error=failure["error"])
    task_instances = dag_run.get_task_instances()
    row["run_id"] = dag_run.run_id
    row["tasks"] = {ti.task_id: {"state": str(ti.state), "try_number": ti.try_number} for ti in task_instances}
    # Each stage's outcome and duration, in DAG order: the line `make run` prints for the vertical.
    row["stages"] = [asdict(s) for s in stage_outcomes(task_instances, list(dag.task_ids))]
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


def record_honest_run(dag_id: str, run_id: str, started_at: datetime) -> None:
    """Give a ``dag.test()`` run its real start time and trigger in the metadata DB.

    ``dag.test()`` (Airflow 3.3) stores the *logical date* as the run's start
    date (so the UI showed a 10 a.m. run of yesterday lasting "1d 13h") and
    marks it triggered by ``test`` / ``dag_test``.  ``make run`` is an
    operator's command-line run: record when it really started, ``cli`` as the
    trigger and who ran it.  The run type stays ``manual`` (it is on demand).
    """
    import getpass

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:  # pragma: no cover - dag.test() just created it
            return
        run.start_date = started_at
        run.triggered_by = DagRunTriggeredByType.CLI
        run.triggering_user_name = f"{getpass.getuser()} (make run)"


#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
INTERRUPTED_EXIT = 130


def give_back_interrupted_run(dag_id: str, logical: datetime) -> None:
    """After Ctrl-C outside a task (between two, or while a retry waited): fail the run, free its lease.

    The lease was parked for the run's next task, which will never come; the next
    ``make run`` creates a new run (``dag.test()`` replaces the old one of that
    date) and would otherwise wait the park out.  Only this run's own lease is released.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    from pipelines.config import Settings
    from pipelines.registry.run_lock import RunLock

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date == logical))
        if run is None:
            return
        run_id = run.run_id
        if run.state not in (DagRunState.SUCCESS, DagRunState.FAILED):
            run.set_state(DagRunState.FAILED)
    RunLock.from_settings(Settings.from_env()).release(dag_id, run_id)


@contextmanager
def interrupt_stops_the_night() -> Iterator[threading.Event]:
    """Ctrl-C stops ``make run``: the event tells the loop to run no further vertical.

    Under ``dag.test()`` a task runs in this process, and Airflow's task runner
    takes a ``KeyboardInterrupt`` for a failure to retry (the run went on after
    the retry delay), or Python drops it inside a callback it cannot raise from.
    The handler records the interrupt before raising it, so the loop stops
    either way, and `tasks.stop_on_interrupt` makes a task end its run instead.
    """
    from pipelines.orchestration.tasks import stop_on_interrupt

    interrupted = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield interrupted
        return
    stop_on_interrupt(interrupted)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _exception_message(traceback_text: str) -> str:
    """The raised exception's message from an import-error traceback, on one line."""
    lines = [line.strip() for line in traceback_text.strip().splitlines()]
    starts = [i for i, line in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception): ", line)]
    message = lines[starts[-1] :] if starts else lines[-1:]
    return " ".join(line for line in message if line).split(": ", 1)[-1]


def _conf(raw: str | None) -> dict[str, Any]:
    """``--conf`` as a run conf: a JSON object of the DAG's params, each of its type."""
    from pipelines.errors import InvalidArgumentError

    if raw is None:
        return {}
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"--conf is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(conf, dict):
        raise InvalidArgumentError("--conf must be a JSON object, e.g. '{\"dry_run\": true}'")
    types = {"dry_run": bool, "force_promotion": bool, "force_reason": str}
    for key, value in conf.items():
        if key not in types:
            raise InvalidArgumentError(f"--conf has an unknown key {key[:40]!r}; known: {', '.join(types)}")
        if not isinstance(value, types[key]):
            raise InvalidArgumentError(f"--conf {key} must be a JSON {types[key].__name__}, got {type(value).__name__}")
    if len(conf.get("force_reason", "")) > MAX_REASON:
        raise InvalidArgumentError(f"--conf force_reason is longer than {MAX_REASON} characters")
    return conf


#: The DAG's ``force_reason`` param allows this many characters.
MAX_REASON = 500


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import OneLineParser, _argument, _iso_date, _reason, _vertical_or_all

    parser = OneLineParser(prog="python -m pipelines.orchestration run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "verticals", nargs="*", type=_argument(_vertical_or_all), default=["all"], help="vertical names, or 'all'"
    )
    parser.add_argument(
        "--date", type=_argument(_iso_date), default=None, help="logical date YYYY-MM-DD (default: yesterday, UTC)"
    )
    parser.add_argument("--dry-run", action="store_true", help="evaluate and decide, but do not deploy")
    parser.add_argument("--force-reason", type=_reason, default=None, help="promote even if the gate rejects; recorded")
    parser.add_argument("--conf", default=None, help="raw run conf (JSON), e.g. '{\"dry_run\": true}'")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON instead of the table")
    parser.add_argument("--summary-json", default=None, help="also write the summaries (with task states) here")
    args = parser.parse_args(argv)
    apply_embedded_defaults()  # before the first airflow import, and before Settings reads PIPELINES_HOME

    from pipelines.config import Settings, check_ds, load_spec, vertical_names
    from pipelines.errors import PipelineError

    ds = args.date or yesterday()
    settings = Settings.from_env()
    names = vertical_names(settings) if args.verticals == ["all"] else args.verticals
    try:
        # Refuse an unknown vertical, a date outside its data or a bad conf before Airflow starts.
        for name in names:
            check_ds(ds, load_spec(name, settings))
        extra = _conf(args.conf)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.force_reason and len(args.force_reason) > MAX_REASON:
        parser.error(f"--force-reason is longer than {MAX_REASON} characters")
    # Imports Airflow (which creates AIRFLOW_HOME): only once the arguments are known to be sane.
    from pipelines.orchestration.timetable import DayNotOverError, check_day_is_over

    try:
        check_day_is_over(date.fromisoformat(ds))  # a run processes a whole UTC day (the timetable refuses it too)
    except DayNotOverError as exc:
        parser.error(f"--date {exc}")

    from pipelines.cli import decision_table
    from pipelines.orchestration.run_output import captured_output, run_log_path, watch_tasks

    log_path = run_log_path(settings.home, ds)
    conf = {**run_conf(dry_run=args.dry_run, force_reason=args.force_reason), **extra}
    rows: list[dict[str, Any]] = []
    # Airflow's, GX's and Lightning's logs go to the file; the console gets one line per vertical.
    with captured_output(log_path) as console, interrupt_stops_the_night() as interrupted:
        console.line(f"nightly run for {ds} through Airflow, {len(names)} vertical(s); full log: {_shown(log_path)}")
        watch_tasks(console)
        migrate_metadata_db()
        dags, import_errors = load_dags()
        for name in names:
            if interrupted.is_set():
                break
            if name not in dags:
                error = next((e for f, e in import_errors.items() if Path(f).name == f"{name}.py"), None)
                row = {
                    "vertical": name,
                    "ds": ds,
                    "blocked": "DAG import error" if error else "no DAG",
                    "error": _exception_message(error) if error else f"no DAG file for {name!r}: run `make dags`",
                }
            else:
                console.running(name, "starting")
                try:
                    row = run_vertical(dags[name], ds, conf)
                except KeyboardInterrupt:
                    interrupted.set()
                    give_back_interrupted_run(name, logical_date(ds))
                    row = {"vertical": name, "ds": ds}
                if interrupted.is_set() and (row.get("blocked") or "tasks" not in row):
                    row.update(blocked="interrupted", error="Ctrl-C: run the same command again to finish")
            rows.append(row)
            for line in summary_lines(row):
                console.line(line)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(rows, indent=2, default=str))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(decision_table(rows))
    failed = [row["vertical"] for row in rows if "blocked" in row]
    if interrupted.is_set():
        not_run = [name for name in names if name not in {row["vertical"] for row in rows}]
        print(
            f"interrupted (Ctrl-C){'; not run: ' + ', '.join(not_run) if not_run else ''}; "
            f"run the same command again to finish; the full log is {_shown(log_path)}",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    if failed:
        print(f"failed: {', '.join(failed)}; the full log is {_shown(log_path)}", file=sys.stderr)
    return 1 if failed else 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (``.state/logs/…``)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def summary_lines(row: dict[str, Any]) -> list[str]:
    """The console lines of one vertical's run: its stage line, then a failure's summary."""
    from pipelines.orchestration.run_output import StageOutcome, failure_lines, vertical_line

    stages = [StageOutcome(**s) for s in row.get("stages") or []]
    state = "failed" if "blocked" in row else "success"
    line = vertical_line(row["vertical"], row["ds"], state, float(row.get("seconds") or 0.0), stages)
    return [line, *failure_lines(row, stages)]
