"""How the model registry is stored: its tables, and the engine that reaches them.

The ORM classes here are the single description of the schema.  Alembic
migrations (`pipelines.registry.migrations`) create and evolve the tables;
a test compares the migrated database with ``Base.metadata`` on SQLite and
PostgreSQL, so the two can never drift apart unnoticed.

``model_versions``
    one row per trained model version of a vertical, with its metrics and its
    lineage (DAG run, logical date, data version, suite result, code version,
    config hash).
``decisions``
    one row per (vertical, ds, model_version): the gate's verdict, every rule
    result, and whether (and why, and by whom) a person forced it.
``deployments``
    the append-only history of pointer moves (``deploy`` / ``rollback``), each
    with who or what moved it; the last row of a vertical names its champion.
``events``
    the append-only audit trail (added in 0003): every decision, forced
    promotion, deploy intent, deployment, rollback, block and unblock, with
    actor, run id, time and reason.  Rows are only ever inserted.
``run_leases``
    at most one row per vertical: the run that currently holds it (see
    `pipelines.registry.run_lock`), so two runs of one vertical never overlap.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pipelines.errors import PipelineError

#: How long a SQLite writer waits for another process's write lock (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000

# JSON as JSONB on PostgreSQL (indexable, comparable), portable JSON elsewhere.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    SQLite has no timezone type and hands back naive values; normalising here
    means callers always compare aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the registry schema (``Base.metadata`` is what migrations must produce)."""


class ModelVersionRow(Base):
    """A trained model version; ``lineage`` holds the keys `pipelines.stages` records."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("vertical", "model_version", name="uq_model_versions_vertical_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vertical: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    data_version: Mapped[str] = mapped_column(String(128))
    #: The Airflow logical date (``ds``, YYYY-MM-DD) that first produced the model.
    ds: Mapped[str] = mapped_column(String(10))
    dag_run_id: Mapped[str | None] = mapped_column(String(250))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)
    lineage: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DecisionRow(Base):
    """The gate's decision for one (vertical, ds, model_version)."""

    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("vertical", "ds", "model_version", name="uq_decisions_vertical_ds_version"),
        Index("ix_decisions_vertical_ds", "vertical", "ds"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vertical: Mapped[str] = mapped_column(String(64))
    ds: Mapped[str] = mapped_column(String(10))
    model_version: Mapped[str] = mapped_column(String(128))
    approved: Mapped[bool] = mapped_column(Boolean)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    forced_reason: Mapped[str | None] = mapped_column(Text)
    #: One record per gate rule (``RuleResult`` as a dict), in rule order.
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    champion_version: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Last time a rerun or a forced promotion rewrote the row.
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Who or what wrote the row last (``airflow:<run_id>``, ``cli:<user>``); added in 0002.
    actor: Mapped[str | None] = mapped_column(String(250))


class DeploymentRow(Base):
    """One move of a vertical's production pointer."""

    __tablename__ = "deployments"
    __table_args__ = (
        # ``seq`` numbers a vertical's pointer moves.  Writers are serialised per
        # vertical (see `lock_vertical`); the constraint is the backstop that
        # turns any writer that is not (older code) into a retry, not a fork.
        UniqueConstraint("vertical", "seq", name="uq_deployments_vertical_seq"),
        ForeignKeyConstraint(
            ["vertical", "model_version"],
            ["model_versions.vertical", "model_versions.model_version"],
            name="fk_deployments_model_version",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vertical: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    previous_version: Mapped[str | None] = mapped_column(String(128))
    #: Who moved the pointer: ``airflow:<dag_run_id>``, ``cli:<user>``, ...
    actor: Mapped[str] = mapped_column(String(250))
    ds: Mapped[str | None] = mapped_column(String(10))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class EventRow(Base):
    """One entry of the append-only audit trail (see `pipelines.registry.records.EVENT_KINDS`)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_vertical_id", "vertical", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vertical: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    #: The logical date concerned, when there is one (a rollback or an unblock has none).
    ds: Mapped[str | None] = mapped_column(String(10))
    model_version: Mapped[str | None] = mapped_column(String(128))
    #: Who: ``airflow:<run_id>``, ``cli:<user>``.
    actor: Mapped[str] = mapped_column(String(250))
    #: The Airflow DAG run behind the event, when an Airflow run made it.
    run_id: Mapped[str | None] = mapped_column(String(250))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(Json)
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class RunLeaseRow(Base):
    """The lease of the one run a vertical may have at a time (`pipelines.registry.run_lock`).

    Keyed by vertical alone: runs of two dates of one vertical share window
    partitions, the DVC repository and the production pointer, so they must not
    overlap either; ``ds`` says which date the holder is running.
    """

    __tablename__ = "run_leases"

    vertical: Mapped[str] = mapped_column(String(64), primary_key=True)
    ds: Mapped[str] = mapped_column(String(10))
    #: The Airflow DAG run id (shared by its tasks), or ``cli:<host>:<pid>:<token>``.
    holder: Mapped[str] = mapped_column(String(250))
    #: The process working for the holder now; None between two Airflow tasks.
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: A lease not renewed by then is abandoned and may be taken over.
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- engine -----------------------------------------------------------------


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout so an Airflow task and the CLI can share one file.

    pysqlite's own transaction handling defers BEGIN until the first write, so
    a read-then-write transaction can fail with "database is locked" instead of
    waiting (SQLite refuses to upgrade a reader's lock rather than deadlock).
    SQLAlchemy takes over BEGIN (its documented recipe) and writers ask for
    ``BEGIN IMMEDIATE`` through the ``sqlite_begin`` execution option: they
    queue on ``busy_timeout`` up front, which serialises them.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _make_durable(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _make_durable(cursor: Any) -> None:
    """The registry's durability settings: WAL, and a commit appended to it without an fsync.

    A crash can lose the last commits, never corrupt the file.
    """
    _enable_wal(cursor)
    cursor.execute("PRAGMA synchronous = NORMAL")


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL once; later connections find it so and change nothing.

    Switching takes an exclusive lock while holding a shared one, so SQLite
    answers "database is locked" at once (deadlock avoidance, no busy wait)
    when another process writes to a fresh file — two workers' first runs.
    Retry until the busy timeout: by then the other process has switched it.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def sqlite_connect(path: str) -> sqlite3.Connection:
    """A DBAPI connection to the SQLite file ``path`` with the registry's durability settings.

    For a library that opens its own engine (Optuna's ``RDBStorage`` takes a
    ``creator``): `_make_durable` makes a commit one append to the log (the
    default rollback journal syncs the file and the journal on every commit).
    The library keeps its own transaction handling.
    """
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    cursor = connection.cursor()
    _make_durable(cursor)
    cursor.close()
    return connection


def create_registry_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), tuned for shared use."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise PipelineError(
            f"registry URL {parsed.render_as_string(hide_password=True)} uses {backend!r}; "
            "set PIPELINES_REGISTRY_URL to a sqlite:/// or postgresql+psycopg:// URL"
        )
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


# -- cross-process locks on PostgreSQL --------------------------------------

# Advisory locks in the two-int4 key space, which PostgreSQL keeps apart from
# the single-bigint space Airflow's own locks use: sharing Airflow's metadata
# database never makes the registry wait on the scheduler, or the reverse.
LOCK_MIGRATIONS = 0x52_45_47_01  # "REG\x01"
LOCK_DEPLOYMENTS = 0x52_45_47_02  # "REG\x02"


def _int4(name: str) -> int:
    """A stable signed 32-bit key for ``name`` (collisions only serialise two names)."""
    value = zlib.crc32(name.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def advisory_xact_lock(conn: Connection | Session, namespace: int, name: str) -> None:
    """Hold a PostgreSQL advisory lock on ``(namespace, name)`` until this transaction ends.

    Transaction-scoped, so a crash or a rollback releases it and a pooled
    connection never carries it into its next use.
    """
    conn.execute(select(func.pg_advisory_xact_lock(namespace, _int4(name))))
