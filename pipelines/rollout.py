"""Rollback as one step: move the bucket pointer, record it, tell the owners.

`rollback_vertical` is the one use case behind ``python -m pipelines rollback``
and the Airflow rollback param: small arguments in, a small JSON-able dict
out.  Order matters:

1. refuse a target the gate never approved (registry), or whose folder does
   not verify (bucket) - nothing has moved yet;
2. flip ``production.json`` (the only step serving sees);
3. append the ``rollback`` row to the registry;
4. mail a notice to the vertical's ``alerts.emails``.

Each step is idempotent, so a retry after a crash anywhere finishes the job:
the pointer already names the target, the registry writes no second row, and
the notice is sent once per registry row (its content comes from that row).
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings, VerticalSpec, load_spec
from pipelines.errors import DeployError

if TYPE_CHECKING:
    from pipelines.registry import DeploymentRecord, ModelRecord, Registry

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
    ``reason`` why; both go into the notice.  Raises `DeployError` (nothing
    changed) when the target is not an approved, registered version or its
    bucket folder does not verify.  Returns ``vertical``, ``model_version``,
    ``previous_version``, ``changed``, ``recorded``, ``notice`` (where the
    email went, or None), ``uri``, ``actor``, ``reason``.
    """
    from pipelines import alerts
    from pipelines.deploy import rollback
    from pipelines.registry import Registry

    settings = settings or Settings.from_env()
    spec = load_spec(vertical, settings)
    registry = Registry.from_settings(settings)
    result = rollback(
        bucket_url=settings.bucket_url,
        vertical=spec.name,
        to_version=to_version,
        guard=lambda target: require_approved(registry, spec.name, target),
    )
    recorded = registry.record_deployment(
        vertical=spec.name,
        model_version=result.model_version,
        action="rollback",
        actor=actor,
        previous_version=result.previous_version,
    )
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
        reason or "no reason given",
        "moved" if result.changed else "already there",
    )
    return {
        "vertical": spec.name,
        "model_version": result.model_version,
        "previous_version": result.previous_version,
        "changed": result.changed,
        "recorded": recorded is not None,
        "notice": notice,
        "uri": result.uri,
        "actor": actor,
        "reason": reason,
    }


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
    spec: VerticalSpec, row: DeploymentRecord, registry: Registry, *, reason: str | None, uri: str
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
        f"  why:    {reason or 'no reason given'}",
        f"  serves: {uri}",
        "",
        "Holdout metrics recorded for each version:",
        *_metrics_table(old, new, row),
        "",
        f"Registry: deployment #{row.seq} of {spec.name} (action rollback).",
    ]
    if row.previous_version:
        lines.append(f"To undo: python -m pipelines rollback {spec.name} --to {row.previous_version}")
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
