"""CLI commands that need no pipeline run: spec checks and registry maintenance."""

from __future__ import annotations

import json
import subprocess
import sys

from pipelines.cli import main

#: What a refused command line must not wait for: each costs a fresh interpreter seconds to import.
HEAVY = ("pandas", "numpy", "sqlalchemy", "torch", "great_expectations", "dvc", "pipelines.stages")

_REFUSE_PROBE = """
import contextlib, io, json, sys
from pipelines.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    codes.append([code, err.getvalue()])
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_verticals_checks_every_spec_and_suite(settings, capsys):
    assert main(["verticals"]) == 0
    out = capsys.readouterr().out
    for name in ("finance", "healthcare", "education", "manufacturing"):
        assert f"{name}: ok" in out


def test_registry_upgrade_then_current(settings, capsys):
    assert main(["registry", "current"]) == 0
    assert "registry schema at none" in capsys.readouterr().out
    assert main(["registry", "upgrade"]) == 0
    upgraded = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert upgraded != "none"
    assert main(["registry", "current"]) == 0
    assert capsys.readouterr().out.strip().endswith(upgraded)


def test_status_on_an_empty_registry_says_none(settings, capsys):
    assert main(["status"]) == 0
    assert "finance: champion none" in capsys.readouterr().out


def test_a_blank_force_reason_is_refused_before_any_work(settings, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "finance", "--date", "2026-11-27", "--force-reason", "   "])
    assert exit_info.value.code == 2
    assert "needs a written reason" in capsys.readouterr().err


def test_a_single_vertical_failure_exits_with_its_own_code(settings, capsys):
    # No warehouse was seeded into this data root: the source error's code (3), not a generic 1.
    assert main(["run", "finance", "--date", "2026-11-27"]) == 3
    assert "BLOCKED (SourceError)" in capsys.readouterr().out


def test_an_unreachable_registry_is_one_line_and_exit_9(settings, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINES_REGISTRY_URL", "postgresql+psycopg://registry:s3cret@127.0.0.1:1/mlops")
    for command in (["status"], ["registry", "upgrade"]):
        assert main(command) == 9
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "127.0.0.1:1" in err and "s3cret" not in err


def test_a_blocked_run_shows_the_whole_error_with_its_hint(settings, capsys):
    from pipelines.cli import decision_table

    hint = "run `python -m pipelines seed` for the demo warehouse"
    error = f"[finance, 2026-11-27] {'source finance_loans is unreachable: ' * 5}{hint}\nsecond line of detail"
    table = decision_table([{"vertical": "finance", "ds": "2026-11-27", "blocked": "SourceError", "error": error}])
    assert hint in table and "second line of detail" in table  # nothing cut at 120 characters


def test_a_second_run_of_a_busy_vertical_exits_75_naming_the_holder(settings, capsys):
    from pipelines.registry.run_lock import RunLock

    RunLock.from_settings(settings).acquire("finance", "2026-11-27", "scheduled__2026-11-27T02:00:00+00:00")
    assert main(["run", "finance", "--date", "2026-11-27"]) == 75
    captured = capsys.readouterr()
    assert "BLOCKED (already running)" in captured.out
    (error,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "already running (run id scheduled__2026-11-27T02:00:00+00:00, pid " in error
    assert main(["extract", "finance", "--date", "2026-11-27"]) == 75  # one stage is a run too


def test_a_refused_command_answers_before_importing_the_stack(settings):
    """A bad date, a bad name or a missing reason: one line and exit 2, from an interpreter without the stack."""
    refused = [
        ["run", "finance", "--date", "9999-12-31"],
        ["run", "all", "--date", "2026-02-30"],
        ["train", "no_such_vertical", "--date", "2026-11-27"],
        ["extract", "finance", "--date", "1900-01-01"],
        ["run", "finance", "--wait", "-1"],
        ["rollback", "finance"],
        ["rollback", "no_such_vertical", "--reason", "bad model"],
        ["unblock", "finance", "mv-0123456789ab"],
    ]
    probe = f"HEAVY = {HEAVY!r}\n{_REFUSE_PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(refused)], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(done.stdout)
    for argv, (code, err) in zip(refused, result["codes"], strict=True):
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "error" in err, (argv, err)
    assert "9999-12-31 is after today" in result["codes"][0][1]
    assert result["heavy"] == [], f"a refused command imported {result['heavy']}"
