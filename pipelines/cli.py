"""``python -m pipelines …``: the same stages as the DAGs, from a shell.

Exit codes: 0 success, 2 bad spec or arguments, 3 source, 4 data quality,
5 versioning, 6 training, 7 deploy, 8 stage order, 9 registry, 10 a rebuild
(``reproduce``) that did not give the recorded weights, 75 another run
of the vertical holds its lease (``--wait`` to queue behind it); 1 anything else.
A refused argument is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

# Only what parsing and refusing a command needs: pandas, SQLAlchemy and the stages are imported by
# the commands that use them, so a refused argument is answered without loading the stack (~1 s).
from pipelines.config import (
    STAGES,
    Settings,
    check_ds,
    check_vertical_name,
    echo,
    load_spec,
    parse_ds,
    vertical_names,
)
from pipelines.errors import DataQualityError, PipelineError, RunAlreadyActive, SpecError

log = logging.getLogger("pipelines.cli")

#: The longest ``--wait`` accepted (a day): a longer wait is a stuck run, not a queue.
MAX_WAIT_S = 86_400
#: What a model version may look like on the command line (it names a bucket folder).
MODEL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def yesterday() -> str:
    """Tonight's run covers yesterday's data interval (Airflow's logical date)."""
    return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line on stderr and exit code 2.

    argparse's own ``error`` prints the whole usage block first; a script or an
    alert that captures stderr then sees the usage, not the reason.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _argument(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse ``type`` from a checker raising `PipelineError`: its message becomes the refusal."""

    def convert(value: str) -> str:
        try:
            return check(value)
        except PipelineError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = check.__name__
    return convert


def _iso_date(value: str) -> str:
    return parse_ds(value).isoformat()


def _vertical(value: str) -> str:
    return check_vertical_name(value)


def _vertical_or_all(value: str) -> str:
    return value if value == "all" else check_vertical_name(value)


def _reason(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("a forced promotion needs a written reason")
    return value.strip()


def _rollback_reason(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("a rollback needs a reason: say why production goes back")
    return value.strip()


def _unblock_reason(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("an unblock needs a written reason: say why the version may return")
    return value.strip()


def _model_version(value: str) -> str:
    if not MODEL_VERSION.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid model version {echo(value)}: letters, digits, '.', '_' and '-' only (see `status`)"
        )
    return value


def _wait(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"--wait takes seconds from 0 to {MAX_WAIT_S}, got {echo(value)}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="create/refresh the demo SQLite warehouse from packaged public datasets")
    seed.add_argument("--url", help="SQLAlchemy URL to seed instead of the embedded warehouse")
    seed.add_argument(
        "--if-empty",
        action="store_true",
        help="only when the database has no tables yet (a restart of the stack never overwrites the warehouse)",
    )

    date_help = "logical date YYYY-MM-DD, from the source's first day to today (default: yesterday, UTC)"
    wait_help = "wait up to SECONDS for another run of the vertical to finish (default 0: refuse at once)"
    run = sub.add_parser("run", help="run every stage for a vertical (or 'all') and a logical date")
    run.add_argument("vertical", type=_argument(_vertical_or_all), help="vertical name, or 'all'")
    run.add_argument("--date", type=_argument(_iso_date), default=None, help=date_help)
    run.add_argument("--force-reason", type=_reason, default=None, help="promote even if the gate rejects; recorded")
    run.add_argument("--dry-run", action="store_true", help="evaluate and decide, but do not deploy")
    run.add_argument("--json", action="store_true", help="print the summaries as JSON")
    run.add_argument("--wait", type=_wait, default=0.0, metavar="SECONDS", help=wait_help)

    for name in STAGES:
        stage = sub.add_parser(name, help=f"run only the {name} stage")
        stage.add_argument("vertical", type=_argument(_vertical))
        stage.add_argument("--date", type=_argument(_iso_date), default=None, help=date_help)
        stage.add_argument("--wait", type=_wait, default=0.0, metavar="SECONDS", help=wait_help)
        if name == "gate":
            stage.add_argument("--force-reason", type=_reason, default=None)
        if name == "deploy":
            stage.add_argument("--dry-run", action="store_true")

    status = sub.add_parser(
        "status", help="production state, champion, last decision, blocked versions and recent events per vertical"
    )
    status.add_argument("--json", action="store_true")
    status.add_argument("--events", type=int, default=10, help="recent audit events per vertical (default 10)")

    rollback = sub.add_parser("rollback", help="move a vertical's production pointer back (a reason is required)")
    rollback.add_argument("vertical", type=_argument(_vertical))
    rollback.add_argument(
        "--to", dest="to_version", type=_model_version, default=None, help="version to restore (default: previous)"
    )
    rollback.add_argument(
        "--reason", type=_rollback_reason, default=None, help="required: why (kept in the registry and the notice)"
    )

    unblock = sub.add_parser("unblock", help="let a version rolled back away from be promoted again")
    unblock.add_argument("vertical", type=_argument(_vertical))
    unblock.add_argument("model_version", type=_model_version)
    unblock.add_argument(
        "--reason", type=_unblock_reason, default=None, help="required: why it may return (kept in the registry)"
    )

    reproduce = sub.add_parser(
        "reproduce",
        help="retrain a deployed version from its bucket lineage alone and compare the weights' sha256",
    )
    reproduce.add_argument("vertical", type=_argument(_vertical))
    reproduce.add_argument("model_version", type=_model_version)

    sub.add_parser("verticals", help="list the verticals and check every spec and suite")

    alerts = sub.add_parser("alerts", help="emails SMTP did not accept (kept in outbox/undelivered/)")
    alerts.add_argument("action", choices=["pending", "flush"], help="list them, or send them now")

    tuning = sub.add_parser("tuning", help="a vertical's tuning sweeps: trials, pruned, best configuration")
    tuning.add_argument("vertical")
    tuning.add_argument("--json", action="store_true", help="print JSON instead of a table")

    registry = sub.add_parser("registry", help="model registry maintenance")
    registry.add_argument("action", choices=["upgrade", "current"], help="migrate to the newest schema, or show it")

    serve = sub.add_parser(
        "serve", help="run the scoring API (v2 inference protocol + /v1 JSON) over every production model"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=8090)
    return parser


def _checked_date(name: str, ds: str, settings: Settings) -> None:
    """Refuse an unknown vertical or a date outside its data before any lock, file or query."""
    check_ds(ds, load_spec(name, settings))


def _progress(vertical: str, stage: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {vertical}: {stage} …", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    ds = args.date or yesterday()
    names = vertical_names(settings) if args.vertical == "all" else [args.vertical]
    for name in names:
        _checked_date(name, ds, settings)  # fail fast on an unknown vertical, a broken spec or a bad date
    from pipelines import stages
    from pipelines.registry.run_lock import hold_run

    rows: list[dict[str, Any]] = []
    codes: list[int] = []
    for name in names:
        started = time.monotonic()
        try:
            with hold_run(name, ds, settings=settings, wait_s=args.wait):
                summary = stages.run_all(
                    name,
                    ds,
                    settings=settings,
                    force_reason=args.force_reason,
                    dry_run=args.dry_run,
                    on_stage=_progress,
                )
        except PipelineError as exc:
            codes.append(exc.exit_code)
            summary = {"vertical": name, "ds": ds, "blocked": _blocked_kind(exc), "error": str(exc)}
            print(f"error: {exc}", file=sys.stderr)
        summary["seconds"] = round(time.monotonic() - started, 1)
        rows.append(summary)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(decision_table(rows))
    # One vertical: its failure's own exit code (see the module docstring); several: 1 if any failed.
    if not codes:
        return 0
    return codes[0] if len(names) == 1 else 1


def _blocked_kind(exc: PipelineError) -> str:
    if isinstance(exc, DataQualityError):
        return "data quality"
    if isinstance(exc, RunAlreadyActive):
        return "already running"
    return type(exc).__name__


def decision_table(rows: list[dict[str, Any]]) -> str:
    """The table ``make run`` ends with: one line per vertical."""

    def cell(row: dict[str, Any], metric: str) -> str:
        m = row["metrics"][metric]
        champ = "-" if m["champion"] is None else f"{m['champion']:.2f}"
        return f"{m['challenger']:.2f}/{m['threshold']:.2f}/{champ}"

    header = f"{'vertical':<14}{'date':<12}{'data version':<18}{'accuracy':<17}{'recall':<17}{'f1':<17}outcome"
    lines = [header, f"{'':<44}(challenger/threshold/champion)", "-" * len(header)]
    for row in rows:
        if "blocked" in row:
            # The whole message: its hint (what to do) is usually at the end.
            error = "\n    ".join(str(row["error"]).splitlines())
            lines.append(
                f"{row['vertical']:<14}{row['ds']:<12}{'-':<18}{'-':<17}{'-':<17}{'-':<17}"
                f"BLOCKED ({row['blocked']}): {error}"
            )
            continue
        outcome = "promoted" if row["deployed"] else ("approved, not deployed" if row["approved"] else "rejected")
        if not row["deployed"]:
            outcome += f": {row['deploy_note'] if row['approved'] else '; '.join(row['reasons'])}"
        lines.append(
            f"{row['vertical']:<14}{row['ds']:<12}{row['data_version']:<18}"
            f"{cell(row, 'accuracy'):<17}{cell(row, 'recall'):<17}{cell(row, 'f1'):<17}{outcome}"
        )
    return "\n".join(lines)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.registry.store import Registry
    from pipelines.release.rollout import reconcile_production
    from pipelines.release.serving import check_production

    registry = Registry.from_settings(settings)
    out: list[dict[str, Any]] = []
    for name in vertical_names(settings):
        # A deploy that died after its pointer flip is confirmed before anything is shown.
        reconcile_production(registry, settings.bucket_url, name)
        champion = registry.champion(name)
        last = registry.last_decision(name)
        out.append(
            {
                "vertical": name,
                # The registry's side (state, rolled back from …, pending intent) and the bucket's
                # side (does what the pointer names still verify: version, ok, problem).
                "production": {
                    **(_production(registry, name) or {}),
                    **check_production(name, bucket_url=settings.bucket_url),
                },
                "blocked": [_event(e) for e in registry.blocks(name)],
                "recent_events": [_event(e) for e in registry.events(name, limit=max(args.events, 0))],
                "champion": None
                if champion is None
                else {
                    "model_version": champion.model_version,
                    "data_version": champion.data_version,
                    "ds": champion.ds,
                    "metrics": champion.metrics,
                },
                "last_decision": None
                if last is None
                else {
                    "ds": last.ds,
                    "model_version": last.model_version,
                    "approved": last.approved,
                    "forced": last.forced,
                    "reasons": [
                        r["detail"] for r in last.reasons if not r.get("passed", True) and r.get("blocking", True)
                    ]
                    or ["every rule passed"],
                },
            }
        )
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    for row in out:
        print(_status_lines(row))
    return 0


def _production(registry: Any, vertical: str) -> dict[str, Any] | None:
    """The registry's production state: version, last move, and "rolled back from …" with its reason."""
    state = registry.production(vertical)
    if state is None:
        return None
    return {
        "model_version": state.model_version,
        "state": f"rolled back from {state.rolled_back_from}" if state.rolled_back_from else "deployed",
        "action": state.action,
        "since": state.since,
        "by": state.by,
        "ds": state.ds,
        "previous_version": state.previous_version,
        "rolled_back_from": state.rolled_back_from,
        "reason": state.reason,
        "pending": None if state.pending is None else _event(state.pending),
    }


def _event(event: Any) -> dict[str, Any]:
    keys = ("id", "at", "kind", "ds", "model_version", "actor", "run_id", "reason", "details")
    return {key: getattr(event, key) for key in keys}


def _status_lines(row: dict[str, Any]) -> str:
    champ, last, prod = row["champion"], row["last_decision"], row["production"] or {}
    lines = [f"{row['vertical']}: champion {champ['model_version'] if champ else 'none'}"]
    if champ:
        lines[0] += f" (data {champ['data_version']}, trained for {champ['ds']})"
    if not prod.get("ok", True):
        lines.append(f"  PRODUCTION BROKEN ({prod.get('version')}): {prod['problem']}")
    if prod.get("rolled_back_from"):
        lines.append(
            f"  rolled back from {prod['rolled_back_from']} on {prod['since']:%Y-%m-%d %H:%M} UTC "
            f"by {prod['by']}: {prod['reason'] or 'no reason recorded'}"
        )
    if prod.get("pending"):
        pending = prod["pending"]
        lines.append(
            f"  pending {pending['kind'].replace('_intent', '')} of {pending['model_version']} by {pending['actor']} "
            f"since {pending['at']:%Y-%m-%d %H:%M} UTC (the pointer has not moved to it)"
        )
    for block in row["blocked"]:
        lines.append(f"  blocked {block['model_version']}: rolled back by {block['actor']} ({block['reason']})")
    if last:
        verdict = "approved" if last["approved"] else "rejected"
        lines.append(f"  last decision {last['ds']} {last['model_version']}: {verdict} — {'; '.join(last['reasons'])}")
    return "\n".join(lines)


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Move the pointer back (registry row and notice email included); see `pipelines.release.rollout`."""
    from pipelines.notify.run_context import actor
    from pipelines.release.rollout import rollback_vertical

    result = rollback_vertical(
        args.vertical, settings=settings, to_version=args.to_version, actor=actor(), reason=args.reason
    )
    if result["changed"]:
        print(f"{result['vertical']}: production is now {result['model_version']} (was {result['previous_version']})")
    else:
        print(f"{result['vertical']}: production is already {result['model_version']}; the pointer did not move")
    if result["notice"]:
        print(f"notice sent: {result['notice']}")
    return 0


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    """List or send the emails the SMTP relay refused earlier (each is sent exactly once)."""
    from pipelines.notify.alerts import flush_undelivered, undelivered

    if args.action == "pending":
        for path in undelivered(settings):
            print(path)
        return 0
    sent, left = flush_undelivered(settings)
    print(f"sent {sent} queued email(s); {left} still queued")
    return 0 if left == 0 else 1


def _unblock(args: argparse.Namespace, settings: Settings) -> int:
    """Lift the sticky-rollback block on one version (recorded with who and why)."""
    from pipelines.notify.run_context import actor
    from pipelines.release.rollout import unblock_version

    lifted = unblock_version(args.vertical, args.model_version, settings=settings, actor=actor(), reason=args.reason)
    if lifted is None:
        print(f"{args.vertical}: {args.model_version} is not blocked; nothing changed")
    else:
        print(f"{lifted.vertical}: {lifted.model_version} unblocked by {lifted.actor}; it may be promoted again")
    return 0


def _tuning(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.model.tuning import list_studies

    load_spec(args.vertical, settings)  # an unknown vertical fails with the spec error
    studies = list_studies(settings, args.vertical)
    if args.json:
        print(json.dumps(studies, indent=2))
        return 0
    if not studies:
        print(f"{args.vertical}: no tuning sweep yet")
    for study in studies:
        print(
            f"{study['study']}: {study['complete']} complete, {study['pruned']} pruned of {study['trials']} trials; "
            f"best {study['best_value']} {json.dumps(study['best_params'], sort_keys=True)}"
        )
    return 0


def _reproduce(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild from the lineage alone; never writes the registry, the bucket or the pointer."""
    from pipelines.reproduce import reproduce

    result = reproduce(args.vertical, args.model_version, settings=settings)
    print(result.summary())
    return 0 if result.identical and not result.differences else 10


def _verticals(settings: Settings) -> int:
    from pipelines.config import load_suite

    bad = 0
    for name in vertical_names(settings):
        try:
            spec = load_spec(name, settings)
            suite = load_suite(spec, settings)
            print(
                f"{name}: ok — {spec.description.strip().splitlines()[0]} ({len(suite['expectations'])} expectations)"
            )
        except SpecError as exc:
            bad += 1
            print(f"{name}: INVALID\n{exc}", file=sys.stderr)
    return 2 if bad else 0


def _has_tables(url: str) -> bool:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        return bool(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    from pipelines.memory import tune_collector

    tune_collector()  # before the stages import the stack (as Airflow's processes do: airflow_local_settings)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "lightning", "pytorch_lightning", "dvc", "urllib3", "fsspec", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env()
    try:
        if args.command == "seed":
            from pipelines.data.sources import resolve_connection_url
            from pipelines.demo.seed import seed_warehouse

            # The demo warehouse is whatever `warehouse_default` points at (SQLite by default).
            url = args.url or resolve_connection_url("warehouse_default", settings)
            if args.if_empty and _has_tables(url):
                print("the warehouse already has tables: not seeded (--if-empty)")
                return 0
            if not args.verbose:
                # `make run` shows this command's outcome in one line; --verbose shows each table's steps.
                logging.getLogger("pipelines.demo.seed").setLevel(logging.WARNING)
            counts = seed_warehouse(url)
            tables = ", ".join(f"{table} {rows} rows" for table, rows in counts.items())
            print(f"seeded {len(counts)} tables: {tables}")
            return 0
        if args.command == "run":
            return _run(args, settings)
        if args.command == "status":
            return _status(args, settings)
        if args.command == "rollback":
            return _rollback(args, settings)
        if args.command == "unblock":
            return _unblock(args, settings)
        if args.command == "reproduce":
            return _reproduce(args, settings)
        if args.command == "verticals":
            return _verticals(settings)
        if args.command == "tuning":
            return _tuning(args, settings)
        if args.command == "alerts":
            return _alerts(args, settings)
        if args.command == "serve":
            from pipelines.scoring.app import serve

            serve(host=args.host, port=args.port)
            return 0
        if args.command == "registry":
            from pipelines.registry import migrations as registry_migrations

            if args.action == "upgrade":
                print(f"registry schema at {registry_migrations.upgrade(settings.registry_url)}")
            else:
                print(f"registry schema at {registry_migrations.current_revision(settings.registry_url) or 'none'}")
            return 0
        return _stage(args, settings)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _stage(args: argparse.Namespace, settings: Settings) -> int:
    """One stage of a run, e.g. ``python -m pipelines train finance --date …``."""
    ds = args.date or yesterday()
    _checked_date(args.vertical, ds, settings)
    from pipelines import stages
    from pipelines.registry.run_lock import hold_run

    kwargs: dict[str, Any] = {"settings": settings}
    if args.command == "gate":
        kwargs["force_reason"] = args.force_reason
    if args.command == "deploy":
        kwargs["dry_run"] = args.dry_run
    # One stage is a run too: it must not overlap another run of the vertical.
    with hold_run(args.vertical, ds, settings=settings, wait_s=args.wait):
        result = getattr(stages, args.command)(args.vertical, ds, **kwargs)
    print(json.dumps(result, indent=2, default=str))
    return 0
