"""Hostile or absurd arguments, through the real command lines a user types.

Every refusal is exit code 2 with one line on stderr that says what is wrong
and what to do (never cut short), no traceback, and nothing written anywhere:
the data root stays empty and no path outside it is touched.  The commands run
as subprocesses, all at once (each one is an interpreter start-up), and each
case is then checked on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT

LONG_NAME = "a" * 10_000
#: Stands for tomorrow's date (UTC) in a case's argv, resolved as the case runs (`_argv`): computed at
#: import, a suite collected before midnight and run after it asked for today, which is allowed.
TOMORROW = "<tomorrow>"
CLI = ("-m", "pipelines")
ORCHESTRATION = ("-m", "pipelines.orchestration")


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    #: Must appear in the one stderr line: the cause and, usually, what to do.
    expect: tuple[str, ...]


#: Cases run as real subprocesses (an interpreter start each, seconds on a busy
#: 2-core machine): one per kind of refusal and command line (a name, a date, a
#: reason; the orchestration's, refused before Airflow starts), all started at
#: once.  The others call the same ``main`` in this process, with the same
#: checks.  Elsewhere real commands also refuse an unknown vertical and a bad
#: date (tests/integration/test_cli_pipeline.py) and path-like names
#: (test_security.py).
SUBPROCESS = {
    "long-name",
    "year-9999",
    "blank-rollback-reason",
    "orch-9999",
}
#: Interpreters started at once.
PARALLEL = 4


CASES = [
    # -- names: validated before any path is built -------------------------------------
    Case("long-name", (*CLI, "run", LONG_NAME), ("invalid vertical name", "10000 characters", "verticals` lists")),
    Case("traversal-run", (*CLI, "run", "../verticals/finance"), ("invalid vertical name", "'../verticals/finance'")),
    Case("traversal-etc", (*CLI, "run", "../../etc"), ("invalid vertical name",)),
    Case("absolute-path", (*CLI, "extract", "/etc/passwd"), ("invalid vertical name",)),
    Case("newline-name", (*CLI, "run", "finance\n"), ("invalid vertical name", r"'finance\n'")),
    Case("upper-case", (*CLI, "snapshot", "Finance"), ("invalid vertical name",)),
    Case("sql-name", (*CLI, "train", "x'; DROP TABLE decisions; --"), ("invalid vertical name",)),
    Case(
        "rollback-traversal",
        (*CLI, "rollback", "../verticals/finance", "--reason", "x"),
        ("invalid vertical name",),
    ),
    Case("rollback-to-path", (*CLI, "rollback", "finance", "--to", "../../x", "--reason", "r"), ("invalid model",)),
    Case("unknown-vertical", (*CLI, "run", "nosuch"), ("unknown vertical 'nosuch'", "known verticals: ", "finance")),
    Case("unknown-stage-vertical", (*CLI, "gate", "nosuch"), ("unknown vertical 'nosuch'",)),
    # -- dates: a real day between the source's first day and today ---------------------
    Case("year-9999", (*CLI, "run", "finance", "--date", "9999-12-31"), ("after today", "pick a date from 2024-01-01")),
    Case("year-1900", (*CLI, "run", "finance", "--date", "1900-01-01"), ("before 2024-01-01", "source.start")),
    Case("day-before-source", (*CLI, "validate", "finance", "--date", "2023-12-31"), ("before 2024-01-01",)),
    Case("tomorrow", (*CLI, "run", "finance", "--date", TOMORROW), ("after today",)),
    Case("not-a-date", (*CLI, "run", "finance", "--date", "yesterday"), ("bad date 'yesterday'", "YYYY-MM-DD")),
    Case("feb-30", (*CLI, "extract", "finance", "--date", "2026-02-30"), ("bad date '2026-02-30'",)),
    Case("basic-format", (*CLI, "run", "finance", "--date", "20261127"), ("bad date '20261127'", "YYYY-MM-DD")),
    Case("long-date", (*CLI, "run", "finance", "--date", "1" * 5000), ("bad date", "5000 characters")),
    # -- reasons and other options ---------------------------------------------------------
    Case("blank-rollback-reason", (*CLI, "rollback", "finance", "--reason", ""), ("rollback needs a reason",)),
    Case("space-rollback-reason", (*CLI, "rollback", "finance", "--reason", "   "), ("rollback needs a reason",)),
    Case("blank-force-reason", (*CLI, "run", "finance", "--force-reason", " "), ("needs a written reason",)),
    Case("bad-wait", (*CLI, "run", "finance", "--wait", "forever"), ("--wait takes seconds from 0 to 86400",)),
    Case("unknown-command", (*CLI, "frobnicate"), ("invalid choice: 'frobnicate'",)),
    # -- python -m pipelines.orchestration: refused before Airflow starts ------------------
    Case("orch-traversal", (*ORCHESTRATION, "run", "../../etc"), ("invalid vertical name", "'../../etc'")),
    Case("orch-long-name", (*ORCHESTRATION, "run", LONG_NAME), ("invalid vertical name", "10000 characters")),
    Case("orch-unknown", (*ORCHESTRATION, "run", "nosuch"), ("unknown vertical 'nosuch'",)),
    Case("orch-9999", (*ORCHESTRATION, "run", "finance", "--date", "9999-12-31"), ("after today",)),
    Case("orch-1900", (*ORCHESTRATION, "run", "finance", "--date", "1900-01-01"), ("before 2024-01-01",)),
    Case("orch-bad-conf", (*ORCHESTRATION, "run", "finance", "--conf", "{bad"), ("--conf is not valid JSON",)),
    Case(
        "orch-conf-type",
        (*ORCHESTRATION, "run", "finance", "--conf", '{"dry_run": "yes"}'),
        ("--conf dry_run must be a JSON bool",),
    ),
    Case(
        "orch-rollback-traversal",
        (*ORCHESTRATION, "rollback", "../../etc", "--reason", "x"),
        ("invalid vertical name",),
    ),
    Case("orch-blank-reason", (*ORCHESTRATION, "rollback", "finance", "--reason", ""), ("needs a reason",)),
    Case("orch-unknown-command", (*ORCHESTRATION, "frobnicate"), ("unknown command 'frobnicate'", "use one of")),
]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _top_level() -> set[str]:
    """The repository's visible top-level entries (tool caches such as .mypy_cache come and go)."""
    return {p.name for p in PROJECT_ROOT.iterdir() if not p.name.startswith(".")}


def _argv(case: Case) -> list[str]:
    """The case's arguments, tomorrow's date put in now."""
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    return [tomorrow if arg == TOMORROW else arg for arg in case.argv]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """The subprocess cases, run once, a few at a time, from an empty directory against an empty data root."""
    base = tmp_path_factory.mktemp("hostile")
    home, cwd = base / "state", base / "cwd"
    cwd.mkdir()
    env = {
        **os.environ,
        "PIPELINES_HOME": str(home),
        "AIRFLOW_HOME": str(base / "airflow"),
        "PIPELINES_REGISTRY_URL": f"sqlite:///{home / 'registry.db'}",
    }
    for key in ("PIPELINES_BUCKET_URL", "PIPELINES_DVC_REMOTE", "PIPELINES_SPECS_DIR", "AIRFLOW_CONN_SMTP_DEFAULT"):
        env.pop(key, None)
    watched = {d: _files(d) for d in (PROJECT_ROOT / "verticals", PROJECT_ROOT / "expectations")}
    top_level = _top_level()

    def run(case: Case) -> Outcome:
        proc = subprocess.run(
            [sys.executable, *_argv(case)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        return Outcome(proc.returncode, proc.stdout, proc.stderr)

    chosen = [case for case in CASES if case.id in SUBPROCESS]
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(zip([c.id for c in chosen], pool.map(run, chosen), strict=True))
    # Nothing written: not in the data root, not where the command ran, not in the repository.
    assert _files(home) == set() and _files(cwd) == set() and not (base / "airflow").exists()
    for directory, before in watched.items():
        assert _files(directory) - before == set(), f"files appeared under {directory}"
    assert _top_level() - top_level == set()
    yield results


def _in_process(case: Case, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``main(argv)`` of the module the case names, as its ``__main__`` would call it."""
    from pipelines.cli import main as cli_main
    from pipelines.orchestration.__main__ import main as orchestration_main

    main = cli_main if case.argv[:2] == CLI else orchestration_main
    saved = dict(os.environ)  # the orchestration fills in Airflow's embedded defaults: keep them out of later tests
    try:
        code = main(_argv(case)[2:])
    except SystemExit as exc:  # argparse refuses by exiting
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out = capsys.readouterr()
    return Outcome(code, out.out, out.err)


def _check(outcome: Outcome, case: Case) -> None:
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout
    assert outcome.returncode == 2, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    for fragment in case.expect:
        assert fragment in lines[0], lines[0]
    # A hostile value is named, not echoed whole: the line stays readable.
    assert len(lines[0]) < 600


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS], ids=lambda c: c.id)
def test_refused_by_the_real_command_with_exit_2_and_one_full_line(outcomes: dict[str, Outcome], case: Case):
    _check(outcomes[case.id], case)


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in SUBPROCESS], ids=lambda c: c.id)
def test_refused_with_exit_2_and_one_full_line(
    case: Case, settings, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    _check(_in_process(case, capsys), case)
    assert _files(settings.home) == set() and _files(cwd) == set() and not (tmp_path / "airflow").exists()
