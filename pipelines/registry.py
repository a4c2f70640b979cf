"""The model registry: which models exist, what the gate decided, what is deployed.

Three tables, one SQLAlchemy 2 declarative schema (the single place the schema
lives, so the Alembic migrations of a later issue autogenerate from it):

``model_versions``
    one row per trained model version of a vertical (data version, logical
    date, DAG run, metrics, lineage).
``decisions``
    one row per (vertical, ds, model_version): a rerun of the gate updates the
    row instead of adding one.
``deployments``
    the append-only history of pointer moves (``deploy`` / ``rollback``); the
    last row of a vertical names its champion.  Moving the pointer to the
    version it already names writes nothing.

SQLite is the embedded default and PostgreSQL the production store; the URL
(``PIPELINES_REGISTRY_URL``) alone chooses.  Every write is idempotent through
dialect-native ``INSERT … ON CONFLICT`` so that an Airflow retry, a "clear" or a
backfill never duplicates a row.  Callers get frozen dataclasses, never ORM
objects, so no session outlives a method.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

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
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pipelines.errors import DeployError, PipelineError, VersioningError

if TYPE_CHECKING:
    from pipelines.config import Settings

DeployAction = Literal["deploy", "rollback"]
_R = TypeVar("_R")

#: How long a SQLite writer waits for another process's write lock (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Retries when two processes append a deployment for one vertical at once.
_DEPLOYMENT_RETRIES = 5

# JSONB on PostgreSQL (indexable, comparable); portable JSON everywhere else.
_Json = JSON().with_variant(postgresql.JSONB(), "postgresql")


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


def _now() -> datetime:
    return datetime.now(UTC)


# -- schema -----------------------------------------------------------------


class Base(DeclarativeBase):
    """Declarative base of the registry schema (``Base.metadata`` for Alembic)."""


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("vertical", "model_version", name="uq_model_versions_vertical_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vertical: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    data_version: Mapped[str] = mapped_column(String(128))
    #: The Airflow logical date (``ds``, YYYY-MM-DD) that first produced the model.
    ds: Mapped[str] = mapped_column(String(10))
    dag_run_id: Mapped[str | None] = mapped_column(String(250))
    metrics: Mapped[dict[str, Any]] = mapped_column(_Json)
    lineage: Mapped[dict[str, Any]] = mapped_column(_Json)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DecisionRow(Base):
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
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(_Json)
    champion_version: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Last time a rerun or a forced promotion rewrote the row.
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # ``seq`` numbers a vertical's pointer moves; its uniqueness turns two
        # concurrent writers into one winner and one retry, on any backend.
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


# -- records handed to callers ----------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    vertical: str
    model_version: str
    data_version: str
    ds: str
    dag_run_id: str | None
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class DecisionRecord:
    vertical: str
    ds: str
    model_version: str
    approved: bool
    forced: bool
    forced_reason: str | None
    reasons: list[dict[str, Any]]
    champion_version: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DeploymentRecord:
    vertical: str
    seq: int
    model_version: str
    action: str
    previous_version: str | None
    actor: str
    ds: str | None
    at: datetime


def _detach(record_type: type[_R], row: Base) -> _R:
    """Copy a row's columns into a plain record (JSON deep-copied: no shared state)."""
    names = [f.name for f in fields(record_type)]  # type: ignore[arg-type]
    return record_type(**{name: copy.deepcopy(getattr(row, name)) for name in names})


# -- engine -----------------------------------------------------------------


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout so an Airflow task and the CLI can share one file.

    pysqlite's own transaction handling defers BEGIN until the first write, so
    a read-then-write transaction can fail with "database is locked" instead of
    waiting.  SQLAlchemy takes over BEGIN (its documented recipe) and writers
    ask for ``BEGIN IMMEDIATE``: they queue on ``busy_timeout`` up front.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


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


_shared_engines: dict[str, Engine] = {}
_shared_lock = threading.Lock()


def _shared_engine(url: str) -> Engine:
    """One engine (pool) per URL per process, its schema ensured on first use.

    Stages open the registry once per call; sharing the engine keeps them from
    piling up pools, and ensuring the schema here means no stage can meet a
    fresh database without tables.
    """
    with _shared_lock:
        engine = _shared_engines.get(url)
        if engine is None:
            engine = create_registry_engine(url)
            _create_tables(engine)
            _shared_engines[url] = engine
        return engine


def _create_tables(engine: Engine) -> None:
    try:
        Base.metadata.create_all(engine)
    except DBAPIError:
        # Two workers' first runs can race on CREATE TABLE (PostgreSQL reports a
        # duplicate); the loser's second, checkfirst pass finds the tables made.
        Base.metadata.create_all(engine)


# -- the registry -----------------------------------------------------------


class Registry:
    """Reads and idempotent writes of the registry tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Writers on SQLite take the write lock at BEGIN (see _configure_sqlite).
        writer = engine.execution_options(sqlite_begin="IMMEDIATE") if self._dialect == "sqlite" else engine
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Registry:
        """The registry at ``url``, on this process's shared engine, tables created if missing."""
        return cls(_shared_engine(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry named by ``settings.registry_url`` (``PIPELINES_REGISTRY_URL``)."""
        return cls.from_url(settings.registry_url)

    def create_all(self) -> None:
        """Create missing tables; a no-op on an up-to-date database."""
        _create_tables(self.engine)

    def close(self) -> None:
        """Close pooled connections (the engine reconnects if used again)."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_sessions() as session, session.begin():
            yield session

    def _insert(self, table: Any) -> Any:
        # Both dialect inserts expose the same on_conflict_* API.
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)

    # -- models --------------------------------------------------------------

    def record_model(
        self,
        *,
        vertical: str,
        model_version: str,
        data_version: str,
        ds: str,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        dag_run_id: str | None = None,
    ) -> ModelRecord:
        """Insert or refresh one model version; a rerun keeps one row.

        A rerun refreshes ``metrics`` and ``lineage`` and keeps the first
        ``ds`` and ``created_at``; a rerun without a DAG run id (the CLI) keeps
        the Airflow run that produced the model.  The same model version with a
        different data version means version ids are not derived from the data:
        that raises `VersioningError` instead of rewriting history.
        """
        table = ModelVersionRow.__table__
        stmt = self._insert(table).values(
            vertical=vertical,
            model_version=model_version,
            data_version=data_version,
            ds=ds,
            dag_run_id=dag_run_id,
            metrics=metrics,
            lineage=lineage,
            created_at=_now(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["vertical", "model_version"],
            set_={
                "metrics": stmt.excluded.metrics,
                "lineage": stmt.excluded.lineage,
                "dag_run_id": func.coalesce(stmt.excluded.dag_run_id, table.c.dag_run_id),
            },
            where=table.c.data_version == stmt.excluded.data_version,
        )
        with self._write() as session:
            session.execute(stmt)
            row = self._model_row(session, vertical, model_version)
            if row is None or row.data_version != data_version:
                raise VersioningError(
                    f"model version {model_version} is already registered with data version "
                    f"{row.data_version if row else '?'}, not {data_version}; model version ids must "
                    "be derived from the data version",
                    vertical=vertical,
                    ds=ds,
                )
            return _detach(ModelRecord, row)

    def model(self, vertical: str, model_version: str) -> ModelRecord | None:
        with self._read() as session:
            row = self._model_row(session, vertical, model_version)
            return _detach(ModelRecord, row) if row else None

    @staticmethod
    def _model_row(session: Session, vertical: str, model_version: str) -> ModelVersionRow | None:
        return session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.vertical == vertical, ModelVersionRow.model_version == model_version
            )
        ).one_or_none()

    # -- decisions -------------------------------------------------------------

    def record_decision(
        self,
        *,
        vertical: str,
        ds: str,
        model_version: str,
        approved: bool,
        reasons: list[dict[str, Any]],
        champion_version: str | None = None,
        forced: bool = False,
        forced_reason: str | None = None,
    ) -> DecisionRecord:
        """Record the gate's decision for (vertical, ds, model_version); reruns update it.

        A forced promotion is a person's decision: a later automatic rerun of
        the gate for the same key leaves it as it is (and the stored, forced
        record is returned), while forcing again overwrites it.
        """
        if forced and not forced_reason:
            raise PipelineError("a forced decision needs forced_reason", vertical=vertical, ds=ds)
        table = DecisionRow.__table__
        now = _now()
        stmt = self._insert(table).values(
            vertical=vertical,
            ds=ds,
            model_version=model_version,
            approved=approved,
            forced=forced,
            forced_reason=forced_reason,
            reasons=reasons,
            champion_version=champion_version,
            created_at=now,
            updated_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["vertical", "ds", "model_version"],
            set_={
                name: getattr(stmt.excluded, name)
                for name in ("approved", "forced", "forced_reason", "reasons", "champion_version", "updated_at")
            },
            where=or_(table.c.forced.is_(False), stmt.excluded.forced.is_(True)),
        )
        with self._write() as session:
            session.execute(stmt)
            row = session.scalars(
                select(DecisionRow).where(
                    DecisionRow.vertical == vertical,
                    DecisionRow.ds == ds,
                    DecisionRow.model_version == model_version,
                )
            ).one()
            return _detach(DecisionRecord, row)

    def decision(self, vertical: str, ds: str, model_version: str) -> DecisionRecord | None:
        """The decision for one key (what the deploy stage checks before pushing)."""
        with self._read() as session:
            row = session.scalars(
                select(DecisionRow).where(
                    DecisionRow.vertical == vertical,
                    DecisionRow.ds == ds,
                    DecisionRow.model_version == model_version,
                )
            ).one_or_none()
            return _detach(DecisionRecord, row) if row else None

    def decisions(self, vertical: str, limit: int = 20) -> list[DecisionRecord]:
        """Newest first: by logical date, then by when the row was last written."""
        with self._read() as session:
            rows = session.scalars(
                select(DecisionRow)
                .where(DecisionRow.vertical == vertical)
                .order_by(DecisionRow.ds.desc(), DecisionRow.updated_at.desc(), DecisionRow.id.desc())
                .limit(limit)
            )
            return [_detach(DecisionRecord, row) for row in rows]

    def last_decision(self, vertical: str) -> DecisionRecord | None:
        newest = self.decisions(vertical, limit=1)
        return newest[0] if newest else None

    # -- deployments -------------------------------------------------------------

    def record_deployment(
        self,
        *,
        vertical: str,
        model_version: str,
        actor: str,
        action: DeployAction = "deploy",
        ds: str | None = None,
        previous_version: str | None = None,
    ) -> DeploymentRecord | None:
        """Append a pointer move; return None (writing nothing) if it names the champion.

        ``previous_version`` is what production held before the move: pass the
        bucket pointer's (`DeployResult.previous_version`, the ground truth);
        when omitted it is the registry's own last champion.  The model must be
        registered first (`record_model`) so every deployment traces to its
        lineage.  Call this after every successful bucket deploy, even one that
        changed nothing: that is how a crash between the bucket and the
        registry heals on the rerun.
        """
        if action not in ("deploy", "rollback"):
            raise PipelineError(f"deployment action must be 'deploy' or 'rollback', not {action!r}")
        for _ in range(_DEPLOYMENT_RETRIES):
            try:
                return self._append_deployment(
                    vertical=vertical,
                    model_version=model_version,
                    actor=actor,
                    action=action,
                    ds=ds,
                    previous_version=previous_version,
                )
            except IntegrityError:
                # Another writer took this seq (or the model row vanished); re-read.
                if self.model(vertical, model_version) is None:
                    break
        raise DeployError(
            f"could not record the {action} of {model_version}: another process kept moving the "
            "pointer, or the model is not registered; check `deployments` and retry",
            vertical=vertical,
            ds=ds,
        )

    def _append_deployment(
        self,
        *,
        vertical: str,
        model_version: str,
        actor: str,
        action: str,
        ds: str | None,
        previous_version: str | None,
    ) -> DeploymentRecord | None:
        with self._write() as session:
            if self._model_row(session, vertical, model_version) is None:
                raise DeployError(
                    f"model version {model_version} is not in the registry; record_model() it "
                    "before recording its deployment",
                    vertical=vertical,
                    ds=ds,
                )
            last = self._last_deployment_row(session, vertical)
            if last is not None and last.model_version == model_version:
                return None
            row = DeploymentRow(
                vertical=vertical,
                seq=last.seq + 1 if last else 1,
                model_version=model_version,
                action=action,
                previous_version=previous_version or (last.model_version if last else None),
                actor=actor,
                ds=ds,
                at=_now(),
            )
            session.add(row)
            session.flush()
            return _detach(DeploymentRecord, row)

    @staticmethod
    def _last_deployment_row(session: Session, vertical: str) -> DeploymentRow | None:
        return session.scalars(
            select(DeploymentRow).where(DeploymentRow.vertical == vertical).order_by(DeploymentRow.seq.desc()).limit(1)
        ).first()

    def deployments(self, vertical: str, limit: int = 20) -> list[DeploymentRecord]:
        """Pointer moves, newest first."""
        with self._read() as session:
            rows = session.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.vertical == vertical)
                .order_by(DeploymentRow.seq.desc())
                .limit(limit)
            )
            return [_detach(DeploymentRecord, row) for row in rows]

    def champion(self, vertical: str) -> ModelRecord | None:
        """The model the last deploy or rollback put in production, if any."""
        with self._read() as session:
            last = self._last_deployment_row(session, vertical)
            if last is None:
                return None
            row = self._model_row(session, vertical, last.model_version)
            return _detach(ModelRecord, row) if row else None

    def previous_champion(self, vertical: str) -> ModelRecord | None:
        """The model production had before the last move (what a rollback returns to).

        Mirrors the bucket pointer's ``previous_version``: after a rollback it
        names the version rolled back from, so a second rollback undoes the first.
        """
        with self._read() as session:
            last = self._last_deployment_row(session, vertical)
            if last is None or last.previous_version is None:
                return None
            row = self._model_row(session, vertical, last.previous_version)
            return _detach(ModelRecord, row) if row else None
