"""The model registry: which models exist, what the gate decided, what is deployed.

The tables live in `pipelines.registry.schema` and are created and evolved by
the Alembic migrations in `pipelines.registry.migrations`; a `Registry`
upgrades its database to the newest revision on first use.

SQLite is the embedded default and PostgreSQL the production store; the URL
(``PIPELINES_REGISTRY_URL``) alone chooses.  Every write is idempotent —
``INSERT … ON CONFLICT`` for models and decisions, "no row when the pointer
already names this version" for deployments — so an Airflow retry, a "clear"
or a backfill never duplicates a row.  Pointer moves of one vertical are
serialised across processes (``BEGIN IMMEDIATE`` on SQLite, an advisory lock
per vertical on PostgreSQL), so two racing promotions leave one champion and
one unbroken history.  Callers get frozen dataclasses, never ORM objects, so no
session outlives a method.

Every decision, force, deploy intent, pointer move, block and unblock also
appends an ``events`` row (the audit trail): rows there are only inserted, so
a rerun adds to the history and never rewrites it.  Any database failure
reaches callers as `RegistryError`, naming the database, the vertical and date,
and what to check.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipelines.errors import PipelineError, RegistryError, VersioningError
from pipelines.registry.audit import AuditTrail, DeployAction, _now, run_id_of
from pipelines.registry.records import (
    DecisionRecord,
    DeploymentRecord,
    EventRecord,
    HistoryEntry,
    ModelRecord,
    ProductionState,
    detach,
)
from pipelines.registry.schema import (
    SQLITE_BUSY_TIMEOUT_MS,
    Base,
    DecisionRow,
    DeploymentRow,
    EventRow,
    ModelVersionRow,
    UtcDateTime,
    create_registry_engine,
)

if TYPE_CHECKING:
    from pipelines.config import Settings

# -- engines ----------------------------------------------------------------

_shared_engines: dict[str, Engine] = {}
_shared_lock = threading.Lock()
#: Engines whose database this process has seen at the head revision.
_migrated: weakref.WeakSet[Engine] = weakref.WeakSet()


def _shared_engine(url: str) -> Engine:
    """One engine (pool) per URL per process: stages open the registry once per call."""
    with _shared_lock:
        engine = _shared_engines.get(url)
        if engine is None:
            try:
                engine = create_registry_engine(url)
            except SQLAlchemyError as exc:
                # A malformed URL or a missing driver: say which variable to fix.
                raise RegistryError(
                    f"cannot open the model registry ({type(exc).__name__}: {exc}); check "
                    "PIPELINES_REGISTRY_URL (a sqlite:/// or postgresql+psycopg:// URL)"
                ) from exc
            _shared_engines[url] = engine
        return engine


def _ensure_migrated(engine: Engine) -> None:
    from pipelines.registry.migrations import ensure_schema

    with _shared_lock:
        if engine not in _migrated:
            ensure_schema(engine)
            _migrated.add(engine)


# -- the registry -----------------------------------------------------------


class Registry(AuditTrail):
    """Reads and idempotent writes of the registry tables (pointer moves and the trail: `AuditTrail`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Writers on SQLite take the write lock at BEGIN (see registry_schema._configure_sqlite).
        writer = engine.execution_options(sqlite_begin="IMMEDIATE") if self._dialect == "sqlite" else engine
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Registry:
        """The registry at ``url``, on this process's shared engine."""
        return cls(_shared_engine(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry named by ``settings.registry_url`` (``PIPELINES_REGISTRY_URL``)."""
        return cls.from_url(settings.registry_url)

    def upgrade(self, revision: str = "head") -> str | None:
        """Migrate the database to ``revision`` (every use does so to head anyway); returns it."""
        from pipelines.registry.migrations import upgrade

        return upgrade(self.engine, revision)

    def create_all(self) -> None:
        """Bring the schema up to date: the name predates migrations."""
        self.upgrade()

    def close(self) -> None:
        """Close pooled connections (the engine reconnects if used again)."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self, vertical: str | None = None, ds: str | None = None) -> Iterator[Session]:
        with self._database_errors("read", vertical, ds):
            _ensure_migrated(self.engine)
            with self._sessions() as session, session.begin():
                yield session

    @contextmanager
    def _write(
        self, vertical: str | None = None, ds: str | None = None, *, retryable: bool = False
    ) -> Iterator[Session]:
        with self._database_errors("write", vertical, ds, retryable=retryable):
            _ensure_migrated(self.engine)
            with self._write_sessions() as session, session.begin():
                yield session

    @contextmanager
    def _database_errors(
        self, doing: str, vertical: str | None, ds: str | None, *, retryable: bool = False
    ) -> Iterator[None]:
        """Turn any SQLAlchemy failure into a `RegistryError` that says what to check.

        ``retryable`` lets an ``IntegrityError`` through for the caller's retry loop.
        """
        try:
            yield
        except IntegrityError as exc:
            if retryable:
                raise
            raise self._error(doing, vertical, ds, exc) from exc
        except SQLAlchemyError as exc:
            raise self._error(doing, vertical, ds, exc) from exc

    def _error(self, doing: str, vertical: str | None, ds: str | None, exc: BaseException | None) -> RegistryError:
        where = self.engine.url.render_as_string(hide_password=True)
        cause = getattr(exc, "orig", None) or exc
        hint = (
            "another process holds the SQLite write lock longer than the busy timeout; retry when it is done"
            if "locked" in str(cause)
            else "check that the database is up, PIPELINES_REGISTRY_URL is right and the schema exists "
            "(`python -m pipelines registry upgrade`)"
        )
        return RegistryError(
            f"could not {doing} the model registry at {where}: {type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause).strip() else '?'}; {hint}",
            vertical=vertical,
            ds=ds,
        )

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
        metrics: dict[str, Any] | None,
        lineage: dict[str, Any],
        dag_run_id: str | None = None,
    ) -> ModelRecord:
        """Insert or refresh one model version; a rerun keeps one row.

        ``metrics=None`` (training, before evaluation) keeps any metrics already
        recorded, so retraining never blanks a deployed model's numbers.
        A rerun refreshes ``metrics`` and keeps what the first producer wrote:
        ``ds``, ``created_at``, ``dag_run_id`` and ``lineage`` (which names that
        run), so a rerun - Airflow or CLI - never rewrites where the model came
        from; a row first written without a run id takes the first run id
        (with its lineage) that comes.  The same model version with a
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
            metrics=metrics or {},
            lineage=lineage,
            created_at=_now(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["vertical", "model_version"],
            set_={
                "metrics": table.c.metrics if metrics is None else stmt.excluded.metrics,
                "lineage": case(
                    (and_(table.c.dag_run_id.is_(None), stmt.excluded.dag_run_id.is_not(None)), stmt.excluded.lineage),
                    else_=table.c.lineage,
                ),
                "dag_run_id": func.coalesce(table.c.dag_run_id, stmt.excluded.dag_run_id),
            },
            where=table.c.data_version == stmt.excluded.data_version,
        )
        with self._write(vertical, ds) as session:
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
            return detach(ModelRecord, row)

    def model(self, vertical: str, model_version: str) -> ModelRecord | None:
        """One model version, or None if it was never registered."""
        with self._read(vertical) as session:
            row = self._model_row(session, vertical, model_version)
            return detach(ModelRecord, row) if row else None

    def models(self, vertical: str, limit: int = 20) -> list[ModelRecord]:
        """A vertical's model versions, newest first."""
        with self._read(vertical) as session:
            rows = session.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.vertical == vertical)
                .order_by(ModelVersionRow.created_at.desc(), ModelVersionRow.id.desc())
                .limit(limit)
            )
            return [detach(ModelRecord, row) for row in rows]

    def verticals(self) -> list[str]:
        """Every vertical with a model or a decision in the registry, sorted."""
        with self._read() as session:
            names = session.scalars(select(ModelVersionRow.vertical).union(select(DecisionRow.vertical)))
            return sorted(names)

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
        actor: str | None = None,
    ) -> DecisionRecord:
        """Record the gate's decision for (vertical, ds, model_version) and append its event.

        The ``decisions`` row is the key's current verdict (what deploy and
        rollback check); the ``events`` trail keeps every verdict: each call
        appends a ``decision`` (or ``forced``) event with its actor, run and
        failed rules, so a rerun adds history instead of replacing it.  The
        row's ``actor`` is who decided first; a rerun does not rewrite it.
        A forced promotion is a person's decision: a later automatic rerun of
        the gate for the same key leaves the row as it is (and the stored,
        forced record is returned), while forcing again overwrites it and
        names the person.  ``actor`` says who or what decided
        (``airflow:<run_id>``, ``cli:<user>``).
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
            actor=actor,
        )
        verdict = ("approved", "forced", "forced_reason", "reasons", "champion_version", "updated_at")
        set_: dict[str, Any] = {name: getattr(stmt.excluded, name) for name in verdict}
        # Forcing names the person; an automatic rerun keeps whoever decided first.
        set_["actor"] = case(
            (stmt.excluded.forced.is_(True), stmt.excluded.actor),
            else_=func.coalesce(table.c.actor, stmt.excluded.actor),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["vertical", "ds", "model_version"],
            set_=set_,
            where=or_(table.c.forced.is_(False), stmt.excluded.forced.is_(True)),
        )
        with self._write(vertical, ds) as session:
            session.execute(stmt)
            row = self._decision_row(session, vertical, ds, model_version)
            assert row is not None  # inserted or kept just now, in this transaction
            failed = [r.get("detail") for r in reasons if isinstance(r, dict) and not r.get("passed", True)]
            self._event(
                session,
                vertical=vertical,
                kind="forced" if forced else "decision",
                actor=actor,
                ds=ds,
                model_version=model_version,
                reason=forced_reason if forced else None,
                details={
                    "approved": approved,
                    "champion_version": champion_version,
                    "failed": failed,
                    # An automatic rerun of a forced key: the person's verdict stands.
                    "kept_forced": bool(row.forced and not forced),
                },
            )
            return detach(DecisionRecord, row)

    def decision(self, vertical: str, ds: str, model_version: str) -> DecisionRecord | None:
        """The decision for one key (what the deploy stage checks before pushing)."""
        with self._read(vertical) as session:
            row = self._decision_row(session, vertical, ds, model_version)
            return detach(DecisionRecord, row) if row else None

    @staticmethod
    def _decision_row(session: Session, vertical: str, ds: str, model_version: str) -> DecisionRow | None:
        return session.scalars(
            select(DecisionRow).where(
                DecisionRow.vertical == vertical, DecisionRow.ds == ds, DecisionRow.model_version == model_version
            )
        ).one_or_none()

    def decisions(self, vertical: str, limit: int = 20) -> list[DecisionRecord]:
        """Newest first: by logical date, then by when the row was last written."""
        with self._read(vertical) as session:
            return [detach(DecisionRecord, row) for row in self._decision_rows(session, vertical, limit)]

    @staticmethod
    def _decision_rows(session: Session, vertical: str, limit: int) -> list[DecisionRow]:
        return list(
            session.scalars(
                select(DecisionRow)
                .where(DecisionRow.vertical == vertical)
                .order_by(DecisionRow.ds.desc(), DecisionRow.updated_at.desc(), DecisionRow.id.desc())
                .limit(limit)
            )
        )

    def last_decision(self, vertical: str) -> DecisionRecord | None:
        """The newest decision of a vertical, if any."""
        newest = self.decisions(vertical, limit=1)
        return newest[0] if newest else None

    def history(self, vertical: str, limit: int = 20) -> list[HistoryEntry]:
        """Decisions, newest first, each with whether and when its version reached production."""
        with self._read(vertical) as session:
            decisions = self._decision_rows(session, vertical, limit)
            versions = {row.model_version for row in decisions}
            moves = session.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.vertical == vertical, DeploymentRow.model_version.in_(versions))
                .order_by(DeploymentRow.seq)
            )
            first_move: dict[str, DeploymentRow] = {}
            for move in moves:
                first_move.setdefault(move.model_version, move)
            last = self._last_deployment_row(session, vertical)
            return [
                HistoryEntry(
                    decision=detach(DecisionRecord, row),
                    deployed_at=first_move[row.model_version].at if row.model_version in first_move else None,
                    deployed_by=first_move[row.model_version].actor if row.model_version in first_move else None,
                    is_champion=last is not None and last.model_version == row.model_version,
                )
                for row in decisions
            ]

    def deployments(self, vertical: str, limit: int = 20) -> list[DeploymentRecord]:
        """Pointer moves, newest first."""
        with self._read(vertical) as session:
            rows = session.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.vertical == vertical)
                .order_by(DeploymentRow.seq.desc())
                .limit(limit)
            )
            return [detach(DeploymentRecord, row) for row in rows]

    def champion(self, vertical: str) -> ModelRecord | None:
        """The model the last deploy or rollback put in production, if any."""
        with self._read(vertical) as session:
            last = self._last_deployment_row(session, vertical)
            if last is None:
                return None
            row = self._model_row(session, vertical, last.model_version)
            return detach(ModelRecord, row) if row else None

    def previous_champion(self, vertical: str) -> ModelRecord | None:
        """The model production had before the last move (what a rollback returns to).

        Mirrors the bucket pointer's ``previous_version``: after a rollback it
        names the version rolled back from, so a second rollback undoes the first.
        """
        with self._read(vertical) as session:
            last = self._last_deployment_row(session, vertical)
            if last is None or last.previous_version is None:
                return None
            row = self._model_row(session, vertical, last.previous_version)
            return detach(ModelRecord, row) if row else None


__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "Base",
    "DecisionRecord",
    "DecisionRow",
    "DeployAction",
    "DeploymentRecord",
    "DeploymentRow",
    "EventRecord",
    "EventRow",
    "HistoryEntry",
    "ModelRecord",
    "ModelVersionRow",
    "ProductionState",
    "Registry",
    "UtcDateTime",
    "create_registry_engine",
    "run_id_of",
]
