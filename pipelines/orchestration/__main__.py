"""``python -m pipelines.orchestration {dags,run,rollback,standalone,stack}``.

* ``dags [--check]``: (re)generate ``dags/<vertical>.py`` from the specs.
* ``run [VERTICAL ...] [--date D]``: the nightly run through Airflow (`make run`).
* ``rollback VERTICAL --reason R [--to VERSION]``: the ``rollback_model`` DAG, run through Airflow.
* ``standalone``: ``airflow standalone`` on the embedded defaults (`make airflow`).
* ``stack [env]``: the production topology without Docker (`make stack`): CeleryExecutor with two
  workers, PostgreSQL, Redis, S3 and SMTP on loopback; ``env`` prints the shell variables to use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def _dags(argv: list[str]) -> int:
    from pipelines.cli import OneLineParser
    from pipelines.orchestration.dag_files import DAGS_DIR, DagFileError, sync_dag_files

    parser = OneLineParser(prog="python -m pipelines.orchestration dags")
    parser.add_argument("--check", action="store_true", help="only say whether dags/ is up to date")
    check = parser.parse_args(argv).check
    try:
        report = sync_dag_files(DAGS_DIR, check=check)
    except DagFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would write" if check else "wrote"
    for name in report.written:
        print(f"{verb} dags/{name}.py")
    for name in report.removed:
        print(f"{'would remove' if check else 'removed'} dags/{name}.py (its spec is gone)")
    if check and report.changed:
        print("dags/ is out of date with verticals/: run `make dags`", file=sys.stderr)
        return 1
    return 0


def _standalone() -> int:
    from pipelines.orchestration.airflow_env import apply_embedded_defaults, with_interpreter_on_path

    env = with_interpreter_on_path(apply_embedded_defaults(dict(os.environ)))
    airflow = Path(sys.executable).with_name("airflow")
    home = env["AIRFLOW_HOME"]
    print(
        f"Airflow UI: {env['AIRFLOW__API__BASE_URL']}  user: admin  password: "
        f"{home}/simple_auth_manager_passwords.json.generated\n"
        f"AIRFLOW_HOME={home}  PIPELINES_HOME={env['PIPELINES_HOME']}  "
        f"dags: {env['AIRFLOW__CORE__DAGS_FOLDER']}  (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    os.execve(airflow, [str(airflow), "standalone"], dict(env))


def _rollback(argv: list[str]) -> int:
    from pipelines.cli import OneLineParser, _argument, _model_version, _rollback_reason, _vertical
    from pipelines.config import load_spec
    from pipelines.errors import PipelineError
    from pipelines.orchestration.airflow_env import apply_embedded_defaults

    parser = OneLineParser(prog="python -m pipelines.orchestration rollback")
    parser.add_argument("vertical", type=_argument(_vertical))
    parser.add_argument(
        "--to", dest="to_version", type=_model_version, default=None, help="version to restore (default: previous)"
    )
    parser.add_argument(
        "--reason", type=_rollback_reason, required=True, help="why production is rolled back (goes into the notice)"
    )
    args = parser.parse_args(argv)
    try:
        load_spec(args.vertical)  # an unknown vertical is refused before Airflow starts
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    apply_embedded_defaults()  # before the first airflow import

    from pipelines.config import Settings
    from pipelines.orchestration.nightly import load_dags, migrate_metadata_db
    from pipelines.orchestration.rollback_dag import DAG_ID
    from pipelines.release.deploy import read_pointer

    migrate_metadata_db()
    dags, errors = load_dags()
    if DAG_ID not in dags:
        print(f"error: the {DAG_ID} DAG did not load: {errors}", file=sys.stderr)
        return 2
    conf = {"vertical": args.vertical, "to_version": args.to_version, "reason": args.reason}
    dag_run = dags[DAG_ID].test(run_conf=conf)
    pointer = read_pointer(Settings.from_env().bucket_url, args.vertical)
    print(f"{DAG_ID} {dag_run.run_id}: {dag_run.state}; {args.vertical} production is {pointer and pointer['version']}")
    return 0 if str(dag_run.state) == "success" else 1


def _run(argv: list[str]) -> int:
    from pipelines.orchestration.nightly import main as run_main

    return run_main(argv)


def _standalone_command(argv: list[str]) -> int:
    if argv:
        print(f"error: standalone takes no arguments, got {' '.join(argv)[:80]!r}", file=sys.stderr)
        return 2
    return _standalone()


def _stack(argv: list[str]) -> int:
    from pipelines.orchestration.stack import main as stack_main

    return stack_main(argv)


#: The one dispatcher: each command parses its own arguments (a `pipelines.cli.OneLineParser`).
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "dags": _dags,
    "run": _run,
    "rollback": _rollback,
    "standalone": _standalone_command,
    "stack": _stack,
}


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command in COMMANDS:
        return COMMANDS[command](rest)
    if command in ("-h", "--help"):
        print(__doc__)
        return 0
    # One line, like every other refusal; --help prints the whole story.
    from pipelines.config import echo

    what = f"unknown command {echo(command)}" if command else "no command given"
    print(
        f"python -m pipelines.orchestration: error: {what}; use one of {', '.join(COMMANDS)} (see --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
