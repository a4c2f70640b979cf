"""Fixtures shared by every tier: an isolated data root and real services."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get("PIPELINES_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_settings(home: Path, **overrides: str) -> Settings:
    """Settings rooted at ``home`` with the repo's specs and suites."""
    values = {
        "home": home,
        "specs_dir": PROJECT_ROOT / "verticals",
        "expectations_dir": PROJECT_ROOT / "expectations",
        "bucket_url": (home / "bucket").as_uri(),
        "registry_url": f"sqlite:///{home / 'registry.db'}",
        "dvc_remote": str(home / "dvc-remote"),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh data root; env points there too, for code that reads Settings.from_env()."""
    home = tmp_path / "state"
    home.mkdir()
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    monkeypatch.delenv("PIPELINES_BUCKET_URL", raising=False)
    monkeypatch.delenv("PIPELINES_REGISTRY_URL", raising=False)
    monkeypatch.delenv("PIPELINES_DVC_REMOTE", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    return make_settings(home)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip locally when a service is down, but fail loudly in CI, where it must run."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must start it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The machine's PostgreSQL (trust auth, database ``test``)."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    yield POSTGRES_URL
