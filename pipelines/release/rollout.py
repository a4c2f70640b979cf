"""Rollback as one step: move the bucket pointer, record it, tell the owners.

`rollback_vertical` is the one use case behind ``python -m pipelines rollback``
and the Airflow rollback DAG: small arguments in, a small JSON-able dict
out.  A rollback needs a reason.  Order matters:

1. refuse a missing reason, a target the gate never approved (registry), or
   one whose folder does not verify (bucket) - nothing has moved yet;
2. record the intent in the registry (a registry outage stops here, with
   production untouched);
3. flip ``production.json`` (the only step serving sees);
4. append the ``rollback`` row and event, and the ``block`` on the version
   rolled back away from (it never returns without a force or `unblock_version`);
5. mail a notice to the vertical's ``alerts.emails``.

Each step is idempotent, so a retry after a crash anywhere finishes the job:
`reconcile_production` confirms an intent the pointer proves, the registry
writes no second row, and the notice is sent once per registry row (its
content comes from that row).
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings, VerticalSpec, load_spec
from pipelines.errors import DeployError, InvalidArgumentError, RegistryError

if TYPE_CHECKING:
    from pipelines.registry.store import DeploymentRecord, EventRecord, ModelRecord, Registry

log = logging.getLogger(__name__)

#: Decisions scanned for an approval of the target (one per night: decades).
_DECISION_SCAN = 10_000
_NOTICE_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc")


def rollback_vertical(
    vertical: str,
    *,
    settings: Settings | None = None,
    to_version: str | None = None,
    actor: str = "cli",
    reason: str | None = None,
) -> dict[str, Any]:
    """Put ``to_version`` (default: the pointer's previous version) back in production.

    ``actor`` names who asked (``cli:<user>``, ``airflow:<run_id>``) and
    ``reason`` why (required: `InvalidArgumentError` without one); both go into the
    registry and the notice.  Raises `DeployError` (nothing changed) when the
    target is not an approved, registered version or its bucket folder does
    not verify, and `RegistryError` (nothing changed) when the registry cannot
    take the intent.  Returns ``vertical``, ``model_version``,
    ``previous_version``, ``changed``, ``recorded``, ``notice`` (where the
    email went, or None), ``uri``, ``actor``, ``reason``.
    """
    reason = (reason or "").strip()
    if not reason:
        raise InvalidArgumentError(
            "a rollback needs a reason: say why production is rolled back "
            "(`--reason '…'`, or the 'Reason' field of the rollback DAG)",
            vertical=vertical,
        )
    settings = settings or Settings.from_env()
    spec = load_spec(vertical, settings)
    # After the refusals above: together these cost a command line ~1 s.
    from pipelines.notify import alerts
    from pipelines.registry.store import Registry
    from pipelines.release.deploy import rollback

    registry = Registry.from_settings(settings)
    # A rollback (or deploy) that died after its pointer flip is recorded first.
    reconciled = reconcile_production(registry, settings.bucket_url, spec.name)

    def guard(target: str) -> None:
        require_approved(registry, spec.name, target)
        # Before the pointer moves: a registry that cannot take this stops the rollback here.
        registry.record_intent(vertical=spec.name, model_version=target, action="rollback", actor=actor, reason=reason)

    result = rollback(bucket_url=settings.bucket_url, vertical=spec.name, to_version=to_version, guard=guard)
    try:
        recorded = registry.record_deployment(
            vertical=spec.name,
            model_version=result.model_version,
            action="rollback",
            actor=actor,
            previous_version=result.previous_version,
            reason=reason,
        )
    except RegistryError as exc:
        raise RegistryError(
            f"production now serves {result.model_version} but the registry could not record the rollback "
            f"({exc}); the pending intent is confirmed by the next run, `python -m pipelines status` or a retry",
            vertical=spec.name,
        ) from exc
    latest = recorded or _latest_deployment(registry, spec.name)
    notice = None
    if latest is not None and latest.action == "rollback" and latest.model_version == result.model_version:
        message = rollback_notice(spec, latest, registry, reason=reason, uri=result.uri)
        # Keyed by the registry row: a retried task does not mail twice.
        notice = alerts.deliver(message, settings, dedupe_key=f"{spec.name}-rollback-{latest.seq}")
    log.info(
        "%s: rollback to %s by %s (%s); pointer %s",
        spec.name,
        result.model_version,
        actor,
        reason,
        "moved" if result.changed else "already there",
    )
    return {
        "vertical": spec.name,
        "model_version": result.model_version,
        "previous_version": result.previous_version,
        "changed": result.changed,
        "recorded": recorded is not None or (reconciled is not None and reconciled.action == "rollback"),
        "notice": notice,
        "uri": result.uri,
        "actor": actor,
        "reason": reason,
    }


def reconcile_production(registry: Registry, bucket_url: str, vertical: str) -> DeploymentRecord | None:
    """Record a move the bucket pointer proves but the registry missed (a crash after the flip).

    Reads the pointer only when the registry holds a pending intent, so the
    common case costs one registry query.  Returns the move recorded, or None.
    """
    from pipelines.release.deploy import read_pointer

    if registry.pending_intent(vertical) is None:
        return None
    pointer = read_pointer(bucket_url, vertical)
    moved = registry.reconcile(vertical, pointer["version"] if pointer else None)
    if moved is not None:
        log.warning(
            "%s: the %s of %s by %s reached the bucket but not the registry; recorded it now",
            vertical,
            moved.action,
            moved.model_version,
            moved.actor,
        )
    return moved


def block_message(block: EventRecord) -> str:
    """Why a version may not return: rolled back when, by whom, why, and the two ways out."""
    return (
        f"{block.model_version} was rolled back on {block.at:%Y-%m-%d %H:%M} UTC by {block.actor} because "
        f"{block.reason or 'no reason recorded'}; force it (--force-reason) or unblock it "
        f"(python -m pipelines unblock {block.vertical} {block.model_version} --reason …)"
    )


def unblock_version(
    vertical: str, model_version: str, *, settings: Settings | None = None, actor: str, reason: str | None
) -> EventRecord | None:
    """Let ``model_version`` be promoted again after a rollback; None when it was not blocked.

    Needs a reason (`InvalidArgumentError`) and a registered version (`InvalidArgumentError`).
    """
    reason = (reason or "").strip()
    if not reason:
        raise InvalidArgumentError(f"unblocking {model_version} needs a reason (`--reason '…'`)", vertical=vertical)
    settings = settings or Settings.from_env()
    spec = load_spec(vertical, settings)
    from pipelines.registry.store import Registry  # after the refusals: it costs a command line ~1 s

    registry = Registry.from_settings(settings)
    if registry.model(spec.name, model_version) is None:
        raise InvalidArgumentError(
            f"{model_version} is not in the model registry; see `python -m pipelines status --json`",
            vertical=spec.name,
        )
    return registry.unblock(vertical=spec.name, model_version=model_version, actor=actor, reason=reason)


def require_approved(registry: Registry, vertical: str, model_version: str) -> None:
    """Raise `DeployError` unless ``model_version`` is registered and a gate decision approved it."""
    if registry.model(vertical, model_version) is None:
        raise DeployError(
            f"refusing to roll back to {model_version}: it is not in the model registry; "
            "pick a version from `python -m pipelines status` or the Models view",
            vertical=vertical,
        )
    decisions = registry.decisions(vertical, limit=_DECISION_SCAN)
    if not any(d.model_version == model_version and d.approved for d in decisions):
        raise DeployError(
            f"refusing to roll back to {model_version}: no gate decision approved it; "
            "only approved versions may serve (force it through the gate first if you must)",
            vertical=vertical,
        )


def _latest_deployment(registry: Registry, vertical: str) -> DeploymentRecord | None:
    newest = registry.deployments(vertical, limit=1)
    return newest[0] if newest else None


def rollback_notice(
    spec: VerticalSpec, row: DeploymentRecord, registry: Registry, *, reason: str, uri: str
) -> EmailMessage:
    """The notice: who rolled what back to what, when, why, and both versions' metrics."""
    old = registry.model(spec.name, row.previous_version) if row.previous_version else None
    new = registry.model(spec.name, row.model_version)
    lines = [
        f"The production model of vertical '{spec.name}' was rolled back.",
        "",
        f"  from:   {row.previous_version or 'unknown'}{_trained(old)}",
        f"  to:     {row.model_version}{_trained(new)}",
        f"  who:    {row.actor}",
        f"  when:   {row.at.isoformat(timespec='seconds')}",
        f"  why:    {reason}",
        f"  serves: {uri}",
        "",
        "Holdout metrics recorded for each version:",
        *_metrics_table(old, new, row),
        "",
        f"Registry: deployment #{row.seq} of {spec.name} (action rollback).",
    ]
    if row.previous_version:
        lines.append(
            f"{row.previous_version} is now blocked: nightly runs will not promote it again until it is "
            f"forced or unblocked (python -m pipelines unblock {spec.name} {row.previous_version} --reason …)."
        )
        lines.append(f"To undo: python -m pipelines rollback {spec.name} --to {row.previous_version} --reason …")
    message = EmailMessage()
    message["Subject"] = f"[rollback] {spec.name}: {row.previous_version or 'unknown'} -> {row.model_version}"
    message["To"] = ", ".join(spec.alerts.emails)
    message.set_content("\n".join(lines) + "\n")
    return message


def _trained(model: ModelRecord | None) -> str:
    if model is None:
        return ""
    return f"  (trained for {model.ds}, data version {model.data_version})"


def _metrics_table(old: ModelRecord | None, new: ModelRecord | None, row: DeploymentRecord) -> list[str]:
    def cell(model: ModelRecord | None, name: str) -> str:
        value = (model.metrics if model else {}).get(name)
        return "-" if value is None else f"{value:.4f}"

    head = f"  {'metric':<18}{'from ' + (row.previous_version or '?'):<24}{'to ' + row.model_version:<24}"
    return [head, *(f"  {m:<18}{cell(old, m):<24}{cell(new, m):<24}" for m in _NOTICE_METRICS)]
