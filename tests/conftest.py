"""Fixtures shared by every tier: an isolated data root and real services."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

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


@cache
def seeded_warehouse_file() -> Path:
    """The demo warehouse (SQLite), seeded once per test process; callers copy it, never write it.

    One for the `seeded_warehouse` fixture and `tests.integration.airflow_support.seed_home`
    alike (each seed is ~2 CPU-seconds).  Removed when the process exits.
    """
    from pipelines.demo.seed import seed_warehouse

    folder = Path(tempfile.mkdtemp(prefix="pipelines-test-seed-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    seed_warehouse(f"sqlite:///{folder / 'warehouse.db'}")
    return folder / "warehouse.db"


@pytest.fixture(scope="session")
def seeded_warehouse() -> Path:
    """The seeded demo warehouse (`seeded_warehouse_file`); tests copy it into their own home."""
    return seeded_warehouse_file()


class GoldenHomes:
    """Data roots built once per session, handed to each test as a fresh copy (issue 14).

    A whole first run of a vertical (365-day backfill, a tuning sweep) costs tens of
    seconds; most tests only need its result as their starting point.  ``home(name,
    build)`` builds the state once with ``build(home)`` and keeps a pristine snapshot;
    every call then restores that snapshot into the same path ``live``.  The path is
    fixed because run records hold absolute paths (model dirs, holdout scores, the DVC
    remote): a copy elsewhere would point back into the snapshot.  Tests in one
    process run one at a time, so one live path per session (per xdist worker) is
    enough; a test must not keep a second golden home open while asking for another.
    What ``build`` returns (e.g. the run's stdout) is kept in ``built[name]``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live = root / "live" / "state"
        self.built: dict[str, Any] = {}

    def home(self, name: str, build: Callable[[Path], Any]) -> Path:
        snapshot = self.root / "snapshots" / name
        if not snapshot.exists():
            self._clear_live()
            self.live.mkdir()
            self.built[name] = build(self.live)
            shutil.copytree(self.live, snapshot, symlinks=True)
        self._clear_live()
        shutil.copytree(snapshot, self.live, symlinks=True)
        return self.live

    def _clear_live(self) -> None:
        # Everything beside the data root too (specs overlays, serve caches) belongs to the last test.
        shutil.rmtree(self.live.parent, ignore_errors=True)
        self.live.parent.mkdir(parents=True)


def short_window_specs(folder: Path, vertical: str, **changes: Any) -> Path:
    """A specs folder: the repo's specs, with ``vertical``'s top-level sections updated by ``changes``.

    For tests about orchestration or data handling, not model quality: a short window
    (e.g. ``window={"train_days": 60, "holdout_days": 20, "validation_days": 15}``)
    makes a first run's backfill, validation and training a fraction of the year's.
    Every other spec is copied unchanged, so each DAG file still finds its spec.
    Point ``PIPELINES_SPECS_DIR`` at the returned folder.
    """
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for path in (PROJECT_ROOT / "verticals").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        if raw.get("name") == vertical:
            for key, value in changes.items():
                raw[key] = (
                    {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
                )
        (folder / path.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.fixture(scope="session")
def golden(tmp_path_factory: pytest.TempPathFactory) -> GoldenHomes:
    """Session-scoped golden data roots (see `GoldenHomes`)."""
    return GoldenHomes(tmp_path_factory.mktemp("golden"))


#: Work that takes longest goes first when pytest-xdist spreads the suite over workers (`make test`
#: runs ``-n 2 --dist loadscope``): a long module started last would leave one worker idle at the end.
#: The browser tier comes after the other slow ones, so it never shares the cores with the Celery stack.
_SLOWEST_FIRST = ("tests/distributed/", "tests/integration/", "tests/reliability/", "tests/browser/")

#: Test modules that start from the same golden data root (`GoldenHomes`, tests/integration/conftest.py)
#: form one xdist work unit, so one worker builds that golden once instead of each worker again.
GOLDEN_GROUPS = {
    "golden:cli-finance-first-run": (
        "tests/integration/test_cli_pipeline.py",
        "tests/integration/test_reproduce.py",
        "tests/integration/test_scoring_pipeline.py",
    ),
    "golden:airflow-nightly-all": (
        "tests/integration/test_airflow_alerts.py",
        "tests/integration/test_airflow_dag_test.py",
        "tests/integration/test_airflow_rollback.py",
    ),
}
_GROUP_OF = {module: group for group, modules in GOLDEN_GROUPS.items() for module in modules}


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``loadscope`` (one work unit per module, in collection order) with the golden groups above.

    A module's tests share module- and session-scoped fixtures (a standalone Airflow, a
    golden first run); split across workers, each worker would build them again.  xdist's
    own ``loadgroup`` marker cannot express this with pytest 9 (its node-id suffix is
    ignored), so the grouping is by path here.
    """
    if config.getoption("dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GoldenGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return _GROUP_OF.get(module, module)

    return GoldenGroupScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """`make test-profile`: each test's wall time and the machine's CPU, summed per module (tests/suite_profile.py)."""
    folder = os.environ.get("PIPELINES_TEST_PROFILE")
    if folder:
        from .suite_profile import SuiteProfile

        distributed = bool(getattr(config.option, "numprocesses", None)) and "PYTEST_XDIST_WORKER" not in os.environ
        config.pluginmanager.register(SuiteProfile(Path(folder), distributed=distributed), "suite-profile")


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """After each test: collect its garbage, then freeze what survives out of the collector's sight.

    A test process imports Great Expectations, torch, DVC and Airflow (millions of objects that
    live to the end), and every full collection walked all of them again: 12 % of the unit
    tier's CPU went to the collector (``gc.callbacks``), and its walks evicted the caches the
    tests run in.  Frozen objects are never walked; what a test leaves behind in cycles is
    still freed here, before the freeze.  With this, the unit tier alone: 71 -> 58 CPU-s.
    """
    gc.collect()
    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist: slow tiers first (xdist hands out work units in collection order)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def tier(item: pytest.Item) -> int:
        ranks = (rank for rank, prefix in enumerate(_SLOWEST_FIRST) if item.nodeid.startswith(prefix))
        return next(ranks, len(_SLOWEST_FIRST))

    items.sort(key=tier)  # stable: the order inside a tier stays the collection order


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

    from pipelines.orchestration.stack import free_ports

    inbox = _Inbox()
    port = free_ports(1)[0]
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
