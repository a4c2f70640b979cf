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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipelines.errors import DeployError, InvalidArgumentError, PipelineError, RegistryError, VersioningError
from pipelines.registry_records import (
    DecisionRecord,
    DeploymentRecord,
    EventRecord,
    HistoryEntry,
    ModelRecord,
    ProductionState,
    detach,
)
from pipelines.registry_schema import (
    LOCK_DEPLOYMENTS,
    SQLITE_BUSY_TIMEOUT_MS,
    Base,
    DecisionRow,
    DeploymentRow,
    EventRow,
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
#: Event kinds that settle whether a version is blocked: the newest one of a version wins.
_BLOCK_KINDS = ("block", "unblock", "forced", "rollback")
#: Event kinds that end a pending deploy or rollback intent.
_INTENT_KINDS = ("deploy_intent", "rollback_intent")
_INTENT_ENDS = ("deploy", "rollback", "intent_closed")
#: Actors the stages write as ``airflow:<dag_run_id>`` (see `pipelines.stages.actor`).
_RUN_ACTOR_PREFIX = "airflow:"


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


def run_id_of(actor: str | None) -> str | None:
    """The Airflow run id inside an ``airflow:<run_id>`` actor, else None."""
    if actor and actor.startswith(_RUN_ACTOR_PREFIX):
        return actor[len(_RUN_ACTOR_PREFIX) :] or None
    return None


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

    @staticmethod
    def _event(
        session: Session,
        *,
        vertical: str,
        kind: str,
        actor: str | None,
        ds: str | None = None,
        model_version: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> EventRow:
        """Append one audit event in ``session``'s transaction (never updated afterwards)."""
        who = actor or "unknown"
        row = EventRow(
            vertical=vertical,
            kind=kind,
            ds=ds,
            model_version=model_version,
            actor=who,
            run_id=run_id_of(who),
            reason=reason,
            details=details or {},
            at=_now(),
        )
        session.add(row)
        session.flush()
        return row

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

    # -- deployments -------------------------------------------------------------

    def record_intent(
        self,
        *,
        vertical: str,
        model_version: str,
        actor: str,
        action: DeployAction = "deploy",
        ds: str | None = None,
        previous_version: str | None = None,
        reason: str | None = None,
    ) -> EventRecord:
        """Record that a deploy or rollback is about to move the pointer; call before it moves.

        This is the first half of the deploy protocol: intent here, then the
        bucket pointer, then `record_deployment`.  A registry that cannot take
        the intent (down, locked, wrong schema) raises `RegistryError` while
        production is still untouched; a process that dies after the pointer
        moved leaves a pending intent that `reconcile` turns into the
        deployment it was.  Refuses an unregistered model (`DeployError`).
        """
        self._check_move(vertical, model_version, actor, action, ds=ds, reason=reason)
        with self._write(vertical, ds) as session:
            if self._model_row(session, vertical, model_version) is None:
                raise DeployError(
                    f"model version {model_version} is not in the registry; record_model() it "
                    f"before its {action} (rerun train and evaluate)",
                    vertical=vertical,
                    ds=ds,
                )
            row = self._event(
                session,
                vertical=vertical,
                kind=f"{action}_intent",
                actor=actor,
                ds=ds,
                model_version=model_version,
                reason=reason,
                details={"previous_version": previous_version},
            )
            return detach(EventRecord, row)

    def record_deployment(
        self,
        *,
        vertical: str,
        model_version: str,
        actor: str,
        action: DeployAction = "deploy",
        ds: str | None = None,
        previous_version: str | None = None,
        reason: str | None = None,
    ) -> DeploymentRecord | None:
        """Append a pointer move; return None (writing no move) if it names the champion.

        ``actor`` is who or what moved the pointer (``airflow:<run_id>``,
        ``cli:<user>``) and is required; a rollback also needs its ``reason``.
        ``previous_version`` is what production held before the move: pass the
        bucket pointer's (`DeployResult.previous_version`, the ground truth);
        when omitted it is the registry's own last champion.  The model must be
        registered first (`record_model`) so every deployment traces to its
        lineage.  Each move appends its ``deploy`` / ``rollback`` event; a
        rollback also appends a ``block`` on the version it moved away from, so
        no automatic run promotes that version again (see `block`).  Any
        pending intent of the vertical ends here.  Call this after every
        successful bucket deploy, even one that changed nothing: that is how a
        crash between the bucket and the registry heals on the rerun.  Racing
        callers for one vertical are serialised: each sees the move before it,
        so exactly one of them promotes a given version.
        """
        self._check_move(vertical, model_version, actor, action, ds=ds, reason=reason)
        for _ in range(_DEPLOYMENT_RETRIES):
            try:
                with self._write(vertical, ds, retryable=True) as session:
                    return self._append_deployment(
                        session,
                        vertical=vertical,
                        model_version=model_version,
                        actor=actor,
                        action=action,
                        ds=ds,
                        previous_version=previous_version,
                        reason=reason,
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

    @staticmethod
    def _check_move(
        vertical: str, model_version: str, actor: str, action: str, *, ds: str | None, reason: str | None
    ) -> None:
        if action not in ("deploy", "rollback"):
            raise PipelineError(f"deployment action must be 'deploy' or 'rollback', not {action!r}")
        if not actor.strip():
            raise PipelineError(
                f"the {action} of {model_version} needs an actor (who or what moved the pointer, "
                "e.g. 'airflow:<run_id>' or 'cli:<user>')",
                vertical=vertical,
                ds=ds,
            )
        if action == "rollback" and not (reason or "").strip():
            raise InvalidArgumentError(
                f"a rollback to {model_version} needs a reason (why production is rolled back)",
                vertical=vertical,
                ds=ds,
            )

    def _append_deployment(
        self,
        session: Session,
        *,
        vertical: str,
        model_version: str,
        actor: str,
        action: str,
        ds: str | None,
        previous_version: str | None,
        reason: str | None,
        details: dict[str, Any] | None = None,
    ) -> DeploymentRecord | None:
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
        pending = self._pending_intent_row(session, vertical)
        if last is not None and last.model_version == model_version:
            if pending is not None:
                outcome = "already in production" if pending.model_version == model_version else "superseded"
                self._event(
                    session,
                    vertical=vertical,
                    kind="intent_closed",
                    actor=actor,
                    ds=ds,
                    model_version=pending.model_version,
                    details={"intent_id": pending.id, "outcome": outcome},
                )
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
        extra = {"seq": row.seq, "previous_version": row.previous_version, **(details or {})}
        if pending is not None:
            extra.setdefault("intent_id", pending.id)
        self._event(
            session,
            vertical=vertical,
            kind=action,
            actor=actor,
            ds=ds,
            model_version=model_version,
            reason=reason,
            details=extra,
        )
        if action == "rollback" and row.previous_version and row.previous_version != model_version:
            self._event(
                session,
                vertical=vertical,
                kind="block",
                actor=actor,
                ds=ds,
                model_version=row.previous_version,
                reason=reason,
                details={"seq": row.seq, "rolled_back_to": model_version},
            )
        return detach(DeploymentRecord, row)

    def close_intent(self, intent: EventRecord, *, actor: str, outcome: str) -> EventRecord | None:
        """End ``intent`` without a move (its deploy failed before the pointer); None if no longer pending."""
        with self._write(intent.vertical, intent.ds) as session:
            pending = self._pending_intent_row(session, intent.vertical)
            if pending is None or pending.id != intent.id:
                return None
            row = self._event(
                session,
                vertical=intent.vertical,
                kind="intent_closed",
                actor=actor,
                ds=intent.ds,
                model_version=intent.model_version,
                details={"intent_id": intent.id, "outcome": outcome},
            )
            return detach(EventRecord, row)

    def pending_intent(self, vertical: str) -> EventRecord | None:
        """The newest deploy or rollback intent that no move or closing event followed, if any."""
        with self._read(vertical) as session:
            row = self._pending_intent_row(session, vertical)
            return detach(EventRecord, row) if row else None

    @staticmethod
    def _pending_intent_row(session: Session, vertical: str) -> EventRow | None:
        newest = session.scalars(
            select(EventRow)
            .where(EventRow.vertical == vertical, EventRow.kind.in_(_INTENT_KINDS + _INTENT_ENDS))
            .order_by(EventRow.id.desc())
            .limit(1)
        ).first()
        return newest if newest is not None and newest.kind in _INTENT_KINDS else None

    def reconcile(self, vertical: str, pointer_version: str | None) -> DeploymentRecord | None:
        """Confirm a pending intent the bucket pointer proves happened; return the move recorded.

        ``pointer_version`` is what ``production.json`` names now.  When it is
        the pending intent's target, the process that moved the pointer died
        before recording it: the move is recorded now, as the intent's actor,
        with ``reconciled`` in its event.  Otherwise nothing is written (the
        deploy may still be uploading, or failed before the pointer; the next
        intent or move supersedes it).
        """
        with self._write(vertical) as session:
            pending = self._pending_intent_row(session, vertical)
            if pending is None or pending.model_version is None or pending.model_version != pointer_version:
                return None
            action = "rollback" if pending.kind == "rollback_intent" else "deploy"
            return self._append_deployment(
                session,
                vertical=vertical,
                model_version=pending.model_version,
                actor=pending.actor,
                action=action,
                ds=pending.ds,
                previous_version=(pending.details or {}).get("previous_version"),
                reason=pending.reason,
                details={"reconciled": True, "intent_id": pending.id},
            )

    # -- blocks (sticky rollback) --------------------------------------------------

    def block(self, vertical: str, model_version: str) -> EventRecord | None:
        """The ``block`` event keeping ``model_version`` out of production, or None.

        A rollback blocks the version it moved away from; a forced promotion of
        that version, an explicit `unblock`, or a rollback back to it lifts the
        block (the newest of those events for the version decides).
        """
        with self._read(vertical) as session:
            newest = session.scalars(
                select(EventRow)
                .where(
                    EventRow.vertical == vertical,
                    EventRow.model_version == model_version,
                    EventRow.kind.in_(_BLOCK_KINDS),
                )
                .order_by(EventRow.id.desc())
                .limit(1)
            ).first()
            return detach(EventRecord, newest) if newest is not None and newest.kind == "block" else None

    def blocks(self, vertical: str) -> list[EventRecord]:
        """Every version of ``vertical`` blocked now, newest block first."""
        with self._read(vertical) as session:
            rows = session.scalars(
                select(EventRow)
                .where(EventRow.vertical == vertical, EventRow.kind.in_(_BLOCK_KINDS))
                .order_by(EventRow.id.desc())
            )
            seen: set[str | None] = set()
            blocked: list[EventRecord] = []
            for row in rows:
                if row.model_version in seen:
                    continue
                seen.add(row.model_version)
                if row.kind == "block":
                    blocked.append(detach(EventRecord, row))
            return blocked

    def unblock(self, *, vertical: str, model_version: str, actor: str, reason: str) -> EventRecord | None:
        """Lift the rollback block on ``model_version`` (reason required); None if it was not blocked."""
        if not reason.strip():
            raise InvalidArgumentError(f"unblocking {model_version} needs a reason", vertical=vertical)
        with self._write(vertical) as session:
            newest = session.scalars(
                select(EventRow)
                .where(
                    EventRow.vertical == vertical,
                    EventRow.model_version == model_version,
                    EventRow.kind.in_(_BLOCK_KINDS),
                )
                .order_by(EventRow.id.desc())
                .limit(1)
            ).first()
            if newest is None or newest.kind != "block":
                return None
            row = self._event(
                session,
                vertical=vertical,
                kind="unblock",
                actor=actor,
                model_version=model_version,
                reason=reason.strip(),
                details={"block_id": newest.id},
            )
            return detach(EventRecord, row)

    # -- the trail and production ----------------------------------------------------

    def events(self, vertical: str, limit: int = 20, *, kinds: tuple[str, ...] | None = None) -> list[EventRecord]:
        """The audit trail of ``vertical``, newest first (optionally only some kinds)."""
        with self._read(vertical) as session:
            query = select(EventRow).where(EventRow.vertical == vertical)
            if kinds:
                query = query.where(EventRow.kind.in_(kinds))
            rows = session.scalars(query.order_by(EventRow.id.desc()).limit(limit))
            return [detach(EventRecord, row) for row in rows]

    def production(self, vertical: str) -> ProductionState | None:
        """What the registry says production serves, with the last move's who, when and why."""
        with self._read(vertical) as session:
            last = self._last_deployment_row(session, vertical)
            pending = self._pending_intent_row(session, vertical)
            if last is None:
                return None
            move = session.scalars(
                select(EventRow)
                .where(EventRow.vertical == vertical, EventRow.kind == last.action)
                .order_by(EventRow.id.desc())
                .limit(1)
            ).first()
            # The move's event carries its reason; rows from before the trail have none.
            reason = move.reason if move is not None and (move.details or {}).get("seq") == last.seq else None
            return ProductionState(
                model_version=last.model_version,
                action=last.action,
                since=last.at,
                by=last.actor,
                ds=last.ds,
                previous_version=last.previous_version,
                reason=reason,
                rolled_back_from=last.previous_version if last.action == "rollback" else None,
                pending=detach(EventRecord, pending) if pending else None,
            )

    @staticmethod
    def _last_deployment_row(session: Session, vertical: str) -> DeploymentRow | None:
        return session.scalars(
            select(DeploymentRow).where(DeploymentRow.vertical == vertical).order_by(DeploymentRow.seq.desc()).limit(1)
        ).first()

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
