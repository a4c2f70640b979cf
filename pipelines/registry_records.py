"""What the registry hands its callers: frozen, detached records.

Plain dataclasses, never ORM objects, so no session outlives a
`pipelines.registry.Registry` method and a caller (the CLI, the Models view)
can keep, compare and serialise them freely.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from pipelines.registry_schema import Base

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


def detach(record_type: type[_R], row: Base) -> _R:
    """Copy a row's columns into a plain record (JSON deep-copied: no shared state)."""
    names = [f.name for f in fields(record_type)]  # type: ignore[arg-type]
    return record_type(**{name: copy.deepcopy(getattr(row, name)) for name in names})
