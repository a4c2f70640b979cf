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


@pytest.fixture(scope="session")
def seeded_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seeded demo warehouse (SQLite) per session; tests copy it into their own home."""
    from pipelines.demo.seed import seed_warehouse

    path = tmp_path_factory.mktemp("seed") / "warehouse.db"
    seed_warehouse(f"sqlite:///{path}")
    return path


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


class _Inbox:
    """Messages a real SMTP server on loopback received."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append(message)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Inbox]:
    """aiosmtpd on 127.0.0.1 (free port); ``smtp_default`` points at it."""
    import json

    from aiosmtpd.controller import Controller

    inbox = _Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a throw-away schema (dropped afterwards)."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_schema_url"))
