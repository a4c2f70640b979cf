"""Schema migrations of the model registry (Alembic), run from Python.

The revisions live in ``versions/`` inside this package, so an installed
wheel migrates its database with no ``alembic.ini`` and no particular working
directory.  `upgrade` is the one entry point; `pipelines.registry.store.Registry`
calls `ensure_schema` on first use, so no stage ever meets a stale schema.

Every migration runs in one transaction that first takes a cross-process
lock — ``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` (the
database write lock) on SQLite — and only then reads the current revision.
Two workers starting at once therefore migrate once: the second waits, then
finds the database at head.  A database made by the old ``create_all`` (the
tables, no ``alembic_version``) is stamped at the initial revision, which
describes exactly that schema, and upgraded from there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from pipelines.errors import PipelineError, RegistryError
from pipelines.registry.schema import LOCK_MIGRATIONS, advisory_xact_lock, create_registry_engine

if TYPE_CHECKING:
    from alembic.config import Config

#: This package's directory: Alembic's ``script_location``.
MIGRATIONS_DIR = Path(__file__).resolve().parent
#: The revision that is exactly the schema ``create_all`` made before migrations.
INITIAL_REVISION = "0001_initial"
#: The newest revision (a test checks it against ``versions/``).  Knowing it
#: without importing Alembic keeps the up-to-date check cheap for every process.
HEAD_REVISION = "0004_run_leases"

_VERSION_TABLE = "alembic_version"
_LEGACY_TABLES = frozenset({"model_versions", "decisions", "deployments"})


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic `Config` for this package, bound to ``connection`` (or to ``url`` for the CLI)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # New revisions are versions/v<rev_id>.py (module names may not start with a digit).
    config.set_main_option("file_template", "v%%(rev)s")
    if url is not None:
        # ConfigParser interpolates '%': escape URL-encoded options such as %3D.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(target: str | Engine | Connection) -> str | None:
    """The revision the registry at ``target`` is at; None for an unmigrated database."""
    if isinstance(target, Connection):
        return _current(target)
    with _database_errors(target), _engine(target) as engine, engine.connect() as conn:
        return _current(conn)


def upgrade(target: str | Engine, revision: str = "head") -> str | None:
    """Migrate the registry at ``target`` (a URL or an engine) up to ``revision``.

    Safe to call from any number of processes at once and a no-op at head.
    Returns the revision the database is at afterwards.
    """
    from alembic import command

    return _migrate(target, lambda config: command.upgrade(config, revision))


def downgrade(target: str | Engine, revision: str) -> str | None:
    """Migrate the registry at ``target`` down to ``revision`` (``"base"`` drops every table)."""
    from alembic import command

    return _migrate(target, lambda config: command.downgrade(config, revision))


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head unless the database is there already (one cheap read when it is)."""
    with engine.connect() as conn:
        if _current(conn) == HEAD_REVISION:
            return
    upgrade(engine)


def new_revision(rev_id: str, message: str) -> Path:
    """Draft ``versions/v<rev_id>.py`` from what ``Base.metadata`` has that head lacks.

    For a development checkout: autogenerates against a scratch SQLite
    database at head (batch operations, which PostgreSQL runs as plain ALTERs).
    Review the draft, bump `HEAD_REVISION`, and run the migration tests on both
    backends — they prove the result equals the models.
    """
    from alembic import command

    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'head.db'}"
        upgrade(url)
        with _engine(url) as engine, engine.connect() as conn:
            script = command.revision(alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id)
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


# -- internals -------------------------------------------------------------


@contextmanager
def _database_errors(target: str | Engine) -> Iterator[None]:
    """A database failure while migrating, as `RegistryError` naming the database (password masked)."""
    try:
        yield
    except SQLAlchemyError as exc:
        where = target.url if isinstance(target, Engine) else target
        try:
            shown = make_url(where).render_as_string(hide_password=True)
        except SQLAlchemyError:
            shown = "PIPELINES_REGISTRY_URL"  # unparsable: do not echo it (it may hold a password)
        cause = getattr(exc, "orig", None) or exc
        raise RegistryError(
            f"could not migrate the model registry at {shown}: {type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause).strip() else '?'}; check that the database is "
            "up and PIPELINES_REGISTRY_URL is right"
        ) from exc


@contextmanager
def _engine(target: str | Engine) -> Iterator[Engine]:
    """``target`` as an engine; one made here from a URL is disposed of afterwards."""
    if isinstance(target, Engine):
        yield target
        return
    engine = create_registry_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table(_VERSION_TABLE):
        return None
    versions = conn.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars().all()
    # This history is linear: more than one row would be a branch this code never made.
    return versions[0] if len(versions) == 1 else None


def _migrate(target: str | Engine, action: Callable[[Config], object]) -> str | None:
    from alembic.util import CommandError

    with _database_errors(target), _engine(target) as engine, engine.connect() as conn, _serialised(conn):
        config = alembic_config(conn)
        _stamp_if_legacy(conn, config)
        before = _current(conn)
        try:
            action(config)
        except CommandError as exc:
            raise PipelineError(
                f"cannot migrate the registry (at revision {before}, this code knows up to "
                f"{HEAD_REVISION}): {exc}; a newer pipelines release may have migrated it — upgrade "
                "this worker's package"
            ) from exc
        return _current(conn)


@contextmanager
def _serialised(conn: Connection) -> Iterator[None]:
    """One transaction that no other migrating process can interleave with."""
    if conn.dialect.name != "sqlite":
        with conn.begin():
            advisory_xact_lock(conn, LOCK_MIGRATIONS, "schema")
            yield
        return
    # SQLite ignores `PRAGMA foreign_keys` inside a transaction, and a batch
    # migration that rebuilds a referenced table (model_versions) would trip the
    # foreign key on DROP: switch enforcement off around the transaction and
    # check every key before committing instead (SQLite's documented procedure).
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise PipelineError(f"a registry migration broke foreign keys ({broken[:5]}); nothing was changed")
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def _stamp_if_legacy(conn: Connection, config: Config) -> None:
    """Adopt a database that ``create_all`` made before migrations existed."""
    from alembic import command

    if inspect(conn).has_table(_VERSION_TABLE):
        return
    present = _LEGACY_TABLES & set(inspect(conn).get_table_names())
    if not present:
        return  # a fresh database: the upgrade creates everything
    if present != _LEGACY_TABLES:
        raise PipelineError(
            f"the registry database has tables {sorted(present)} but not {sorted(_LEGACY_TABLES - present)} "
            "and no alembic_version: it is not a registry this code made; point PIPELINES_REGISTRY_URL "
            "at an empty database or schema"
        )
    command.stamp(config, INITIAL_REVISION)


__all__ = [
    "HEAD_REVISION",
    "INITIAL_REVISION",
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "new_revision",
    "upgrade",
]
