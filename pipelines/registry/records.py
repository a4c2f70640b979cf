"""What the registry hands its callers: frozen, detached records.

Plain dataclasses, never ORM objects, so no session outlives a
`pipelines.registry.store.Registry` method and a caller (the CLI, the Models view)
can keep, compare and serialise them freely.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, TypeVar

from pipelines.registry.schema import Base

_R = TypeVar("_R")


@dataclass(frozen=True)
class ModelRecord:
    """A trained model version.

    ``lineage`` is what `pipelines.stages` records: ``dag_run_id``,
    ``logical_date``, ``data_version``/``data_tag``/``data_commit``, ``suite``
    and ``suite_result``, ``code_version``, ``config_hash``, ``seed``, row counts.
    """

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
    """The gate's decision for one (vertical, ds, model_version), every rule in ``reasons``."""

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
    actor: str | None


@dataclass(frozen=True)
class DeploymentRecord:
    """One pointer move: ``seq`` counts a vertical's moves from 1, ``actor`` made it."""

    vertical: str
    seq: int
    model_version: str
    action: str
    previous_version: str | None
    actor: str
    ds: str | None
    at: datetime


@dataclass(frozen=True)
class HistoryEntry:
    """A decision and what became of its model version (for the Models view)."""

    decision: DecisionRecord
    #: When and by whom the version first reached production; None if it never did.
    deployed_at: datetime | None
    deployed_by: str | None
    #: Whether the version is the champion now.
    is_champion: bool

    @property
    def deployed(self) -> bool:
        return self.deployed_at is not None


#: What an audit event can be (``events.kind``).
EVENT_KINDS: Final = (
    "decision",  # the gate decided (automatically); reruns add one each
    "forced",  # a person forced a promotion, with a reason (lifts a rollback block)
    "deploy_intent",  # a deploy is about to move the pointer (written before it moves)
    "rollback_intent",  # a rollback is about to move the pointer
    "deploy",  # the pointer moved to a version (the deployments row is written with it)
    "rollback",  # the pointer moved back, with the reason
    "intent_closed",  # an intent ended without a move (already in production, or it failed)
    "block",  # a version rolled back away from: no automatic re-promotion
    "unblock",  # a person lifted a block, with a reason
)


@dataclass(frozen=True)
class EventRecord:
    """One entry of the append-only audit trail (``events``), newest ids last."""

    id: int
    vertical: str
    kind: str
    ds: str | None
    model_version: str | None
    actor: str
    run_id: str | None
    reason: str | None
    details: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class ProductionState:
    """What production serves according to the registry, and how it got there."""

    model_version: str
    #: ``deploy`` or ``rollback``: the last pointer move.
    action: str
    since: datetime
    by: str
    ds: str | None
    previous_version: str | None
    #: The rollback's reason (None for a deploy).
    reason: str | None
    #: The version production was rolled back away from (None unless the last move was a rollback).
    rolled_back_from: str | None
    #: A deploy or rollback recorded as intended but not (yet) confirmed, if any.
    pending: EventRecord | None


def detach(record_type: type[_R], row: Base) -> _R:
    """Copy a row's columns into a plain record (JSON deep-copied: no shared state)."""
    names = [f.name for f in fields(record_type)]  # type: ignore[arg-type]
    return record_type(**{name: copy.deepcopy(getattr(row, name)) for name in names})
