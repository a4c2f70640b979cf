"""The model registry: which models exist, what the gate decided, what is deployed.

The tables live in `pipelines.registry_schema` and are created and evolved by
the Alembic migrations in `pipelines.registry_migrations`; a `Registry`
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
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pipelines.errors import DeployError, PipelineError, VersioningError
from pipelines.registry_records import DecisionRecord, DeploymentRecord, HistoryEntry, ModelRecord, detach
from pipelines.registry_schema import (
    LOCK_DEPLOYMENTS,
    SQLITE_BUSY_TIMEOUT_MS,
    Base,
    DecisionRow,
    DeploymentRow,
    ModelVersionRow,
    UtcDateTime,
    advisory_xact_lock,
    create_registry_engine,
)

if TYPE_CHECKING:
    from pipelines.config import Settings

DeployAction = Literal["deploy", "rollback"]

#: Retries when a writer that skips the per-vertical lock (older code) took our seq.
_DEPLOYMENT_RETRIES = 5


def _now() -> datetime:
    return datetime.now(UTC)


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
            engine = _shared_engines[url] = create_registry_engine(url)
        return engine


def _ensure_migrated(engine: Engine) -> None:
    from pipelines.registry_migrations import ensure_schema

    with _shared_lock:
        if engine not in _migrated:
            ensure_schema(engine)
            _migrated.add(engine)


# -- the registry -----------------------------------------------------------


class Registry:
    """Reads and idempotent writes of the registry tables."""

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
        from pipelines.registry_migrations import upgrade

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
    def _read(self) -> Iterator[Session]:
        _ensure_migrated(self.engine)
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        _ensure_migrated(self.engine)
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
        metrics: dict[str, Any] | None,
        lineage: dict[str, Any],
        dag_run_id: str | None = None,
    ) -> ModelRecord:
        """Insert or refresh one model version; a rerun keeps one row.

        ``metrics=None`` (training, before evaluation) keeps any metrics already
        recorded, so retraining never blanks a deployed model's numbers.
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
            metrics=metrics or {},
            lineage=lineage,
            created_at=_now(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["vertical", "model_version"],
            set_={
                "metrics": table.c.metrics if metrics is None else stmt.excluded.metrics,
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
            return detach(ModelRecord, row)

    def model(self, vertical: str, model_version: str) -> ModelRecord | None:
        """One model version, or None if it was never registered."""
        with self._read() as session:
            row = self._model_row(session, vertical, model_version)
            return detach(ModelRecord, row) if row else None

    def models(self, vertical: str, limit: int = 20) -> list[ModelRecord]:
        """A vertical's model versions, newest first."""
        with self._read() as session:
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
        """Record the gate's decision for (vertical, ds, model_version); reruns update it.

        A forced promotion is a person's decision: a later automatic rerun of
        the gate for the same key leaves it as it is (and the stored, forced
        record is returned), while forcing again overwrites it.  ``actor`` says
        who or what decided (``airflow:<run_id>``, ``cli:<user>``).
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
        rewritten = ("approved", "forced", "forced_reason", "reasons", "champion_version", "updated_at", "actor")
        stmt = stmt.on_conflict_do_update(
            index_elements=["vertical", "ds", "model_version"],
            set_={name: getattr(stmt.excluded, name) for name in rewritten},
            where=or_(table.c.forced.is_(False), stmt.excluded.forced.is_(True)),
        )
        with self._write() as session:
            session.execute(stmt)
            row = self._decision_row(session, vertical, ds, model_version)
            assert row is not None  # inserted or kept just now, in this transaction
            return detach(DecisionRecord, row)

    def decision(self, vertical: str, ds: str, model_version: str) -> DecisionRecord | None:
        """The decision for one key (what the deploy stage checks before pushing)."""
        with self._read() as session:
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
        with self._read() as session:
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
        with self._read() as session:
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

        ``actor`` is who or what moved the pointer (``airflow:<run_id>``,
        ``cli:<user>``) and is required.  ``previous_version`` is what
        production held before the move: pass the bucket pointer's
        (`DeployResult.previous_version`, the ground truth); when omitted it is
        the registry's own last champion.  The model must be registered first
        (`record_model`) so every deployment traces to its lineage.  Call this
        after every successful bucket deploy, even one that changed nothing:
        that is how a crash between the bucket and the registry heals on the
        rerun.  Racing callers for one vertical are serialised: each sees the
        move before it, so exactly one of them promotes a given version.
        """
        if action not in ("deploy", "rollback"):
            raise PipelineError(f"deployment action must be 'deploy' or 'rollback', not {action!r}")
        if not actor.strip():
            raise PipelineError(
                f"the {action} of {model_version} needs an actor (who or what moved the pointer, "
                "e.g. 'airflow:<run_id>' or 'cli:<user>')",
                vertical=vertical,
                ds=ds,
            )
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
                # A writer outside the lock took this seq (or the model row vanished); re-read.
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
            if self._dialect == "postgresql":
                # READ COMMITTED lets two writers read the same last move; the lock
                # (held to commit) makes read-decide-append one step per vertical.
                # SQLite needs none: BEGIN IMMEDIATE already admits one writer.
                advisory_xact_lock(session, LOCK_DEPLOYMENTS, vertical)
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
            return detach(DeploymentRecord, row)

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
            return [detach(DeploymentRecord, row) for row in rows]

    def champion(self, vertical: str) -> ModelRecord | None:
        """The model the last deploy or rollback put in production, if any."""
        with self._read() as session:
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
        with self._read() as session:
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
    "HistoryEntry",
    "ModelRecord",
    "ModelVersionRow",
    "Registry",
    "UtcDateTime",
    "create_registry_engine",
]
