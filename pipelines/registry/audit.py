"""The registry's deploy protocol and audit trail: intents, pointer moves, blocks, events.

`AuditTrail` is mixed into `pipelines.registry.store.Registry`, which supplies the
sessions (`_read`, `_write`) and the model lookups; it is a separate module
only so that each file reads in one sitting.

* Every decision, force, deploy intent, pointer move, block and unblock
  appends one ``events`` row (`_event`); rows there are only ever inserted.
* A pointer move is three steps: `record_intent` before the bucket pointer
  moves, the move itself (`pipelines.release.deploy`), then `record_deployment`.  A
  process that dies in between leaves a pending intent that `reconcile`
  confirms once the pointer proves the move happened.
* A rollback blocks the version it moved away from; `block` says whether a
  version is blocked now (the newest of its block / unblock / forced /
  rollback events decides).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipelines.errors import DeployError, InvalidArgumentError, PipelineError
from pipelines.registry.records import DeploymentRecord, EventRecord, ProductionState, detach
from pipelines.registry.schema import LOCK_DEPLOYMENTS, DeploymentRow, EventRow, advisory_xact_lock

if TYPE_CHECKING:
    from pipelines.registry.records import ModelRecord
    from pipelines.registry.schema import ModelVersionRow

DeployAction = Literal["deploy", "rollback"]

#: Retries when a writer that skips the per-vertical lock (older code) took our seq.
_DEPLOYMENT_RETRIES = 5
#: Event kinds that settle whether a version is blocked: the newest one of a version wins.
_BLOCK_KINDS = ("block", "unblock", "forced", "rollback")
#: Event kinds that end a pending deploy or rollback intent.
_INTENT_KINDS = ("deploy_intent", "rollback_intent")
_INTENT_ENDS = ("deploy", "rollback", "intent_closed")
#: Actors the stages write as ``airflow:<dag_run_id>`` (see `pipelines.notify.run_context.actor`).
_RUN_ACTOR_PREFIX = "airflow:"


def _now() -> datetime:
    return datetime.now(UTC)


def run_id_of(actor: str | None) -> str | None:
    """The Airflow run id inside an ``airflow:<run_id>`` actor, else None."""
    if actor and actor.startswith(_RUN_ACTOR_PREFIX):
        return actor[len(_RUN_ACTOR_PREFIX) :] or None
    return None


class AuditTrail:
    """Pointer moves, intents, blocks and the event trail (see the module docstring)."""

    if TYPE_CHECKING:
        # Supplied by `pipelines.registry.store.Registry`.
        _dialect: str

        def _read(self, vertical: str | None = None, ds: str | None = None) -> AbstractContextManager[Session]: ...

        def _write(
            self, vertical: str | None = None, ds: str | None = None, *, retryable: bool = False
        ) -> AbstractContextManager[Session]: ...

        def model(self, vertical: str, model_version: str) -> ModelRecord | None: ...

        @staticmethod
        def _model_row(session: Session, vertical: str, model_version: str) -> ModelVersionRow | None: ...

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
