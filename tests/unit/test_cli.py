"""CLI commands that need no pipeline run: spec checks and registry maintenance."""

from __future__ import annotations

from pipelines.cli import main


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
