"""Which interpreter `make install` builds the venv from (the Makefile's PYTHON)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.config import PROJECT_ROOT


def _python(*assignments: str, env: dict[str, str] | None = None) -> str:
    """The Makefile's PYTHON as make expands it, with ``assignments`` on make's command line."""
    show = "show-python: ; @echo $(PYTHON)"
    argv = ["make", "-s", "--no-print-directory", "-C", str(PROJECT_ROOT), *assignments, "--eval", show, "show-python"]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=environment).stdout.strip()


def _no_venv_module(tmp_path: Path) -> Path:
    """A python3.11 that cannot make a venv (a distribution's without its venv package fails the same check)."""
    fake = tmp_path / "python3.11"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    return fake


def test_the_first_candidate_that_can_make_a_venv_is_taken(tmp_path: Path) -> None:
    fake = _no_venv_module(tmp_path)
    candidates = f"{tmp_path / 'missing'} {fake} {sys.executable}"

    assert _python(f"PYTHON_CANDIDATES={candidates}") == sys.executable


def test_without_a_usable_candidate_make_names_python311_instead_of_running_nothing(tmp_path: Path) -> None:
    assert _python(f"PYTHON_CANDIDATES={_no_venv_module(tmp_path)}") == "python3.11"


def test_an_explicit_python_wins(tmp_path: Path) -> None:
    # From the environment too: a make command line overrides any assignment, the environment only a default.
    assert _python(env={"PYTHON": str(tmp_path / "mine")}) == str(tmp_path / "mine")
