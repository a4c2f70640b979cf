"""What the models view shows, gathered from the specs and the registry.

Plain frozen records, no web framework and no Airflow: the HTML page and the
JSON endpoints render the same `VerticalOverview`, and the tests can build one
from a registry they filled themselves.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pipelines.config import Settings, VerticalSpec, load_spec, vertical_names
from pipelines.errors import PipelineError
from pipelines.registry.store import DecisionRecord, DeploymentRecord, EventRecord, ModelRecord, Registry
from pipelines.state import open_state

Outcome = Literal["approved", "rejected", "forced"]

#: Actors the deploy stage writes as ``<who>:<dag_run_id>`` (see `stages.deploy`).
_RUN_ACTOR_PREFIX = "airflow:"


def data_docs_root(settings: Settings, vertical: str) -> Path:
    """The vertical's Great Expectations data docs site (built by the validate stage).

    Mirrors `pipelines.data.data_docs.site_root` without importing it: the data
    part pulls in pandas, which a web request has no use for.
    """
    return settings.home / "gx" / vertical / "gx" / "uncommitted" / "data_docs" / "local_site"


def refresh_from_state(settings: Settings, vertical: str) -> None:
    """Fetch what the workers wrote for ``vertical`` -- stage records and data docs -- from the state store.

    The view reads local files under ``PIPELINES_HOME``; with ``PIPELINES_STATE_URL``
    elsewhere (S3 on Celery workers) that home is only this host's cache, so it is
    brought up to date first.  `StateStore.pull` re-downloads only objects whose
    stored version changed; with the embedded default (state = home) it does nothing.
    A record or page deleted from the state stays in this cache (the stages overwrite, never delete, them).
    """
    state = open_state(settings)
    if not state.is_home:
        docs = data_docs_root(settings, vertical)
        # The pages the view links to; the site's other files (assets, suites) are fetched when asked for.
        state.pull(settings.home / "runs" / vertical, docs / "index.html", docs / "validations")


@dataclass(frozen=True)
class MetricCheck:
    """One gate floor of the spec against the champion's holdout metric."""

    metric: str
    value: float | None
    threshold: float
    #: None when the champion has no value for the metric (never scored, or undefined).
    passed: bool | None


@dataclass(frozen=True)
class Champion:
    """The model production serves, with where it came from."""

    model_version: str
    data_version: str
    #: The logical date (``ds``) the model was trained for.
    ds: str
    dag_run_id: str | None
    registered_at: datetime
    deployed_at: datetime | None
    deployed_by: str | None
    #: The DAG run that deployed it, when an Airflow run did.
    deployed_run_id: str | None
    checks: list[MetricCheck]


@dataclass(frozen=True)
class RuleLine:
    """One gate rule of a decision, as the gate recorded it."""

    rule: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class DecisionEntry:
    ds: str
    model_version: str
    outcome: Outcome
    forced_reason: str | None
    #: The champion the challenger was compared with (None for a first model).
    champion_version: str | None
    rules: list[RuleLine]
    dag_run_id: str | None
    decided_at: datetime
    #: Who decided, when the registry records it (a forced promotion's person).
    actor: str | None = None
    #: When the version first reached production (None: never, or unknown to an older registry).
    deployed_at: datetime | None = None
    #: Whether the version is the champion now.
    is_champion: bool = False
    #: True when the registry's history says the version never reached production.
    never_deployed: bool = False
    #: The GX data docs page of that date's validation, relative to the data docs site.
    validation_page: str | None = None

    @property
    def failed(self) -> list[RuleLine]:
        return [r for r in self.rules if r.passed is False]


@dataclass(frozen=True)
class DeploymentEntry:
    at: datetime
    action: str
    from_version: str | None
    to_version: str
    actor: str
    ds: str | None
    #: The DAG run that moved the pointer, when an Airflow run did.
    dag_run_id: str | None


@dataclass(frozen=True)
class EventEntry:
    """One entry of the registry's append-only audit trail (decisions, forces, moves, blocks)."""

    at: datetime
    kind: str
    ds: str | None
    model_version: str | None
    actor: str
    run_id: str | None
    reason: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class TuningSweep:
    """One tuning sweep (an Optuna study) of a vertical, as `pipelines.model.tuning.list_studies` reads it."""

    study: str
    #: The logical date the sweep ran for.
    ds: str
    #: When its first trial started (ISO 8601), if any did.
    started: str | None
    #: "maximize" (AUROC) or "minimize" (log loss).
    direction: str
    trials: int
    complete: int
    pruned: int
    #: The best validation objective (``model.tuning.metric``), which ``direction`` says is better.
    best_value: float | None
    #: The chosen configuration: the best trial's parameters.
    best_params: dict[str, Any] | None


@dataclass(frozen=True)
class VerticalOverview:
    """Everything the view knows about one vertical."""

    name: str
    description: str | None
    owner: str | None
    thresholds: dict[str, float]
    champion: Champion | None
    decisions: list[DecisionEntry]
    deployments: list[DeploymentEntry]
    has_data_docs: bool
    #: Why the spec could not be loaded (the vertical is still listed, with the message).
    spec_error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Days the suite failed on and that are held in quarantine, newest first.
    blocked: list[BlockedDay] = field(default_factory=list)
    #: Where the deployed versions live (see `BucketLocation`).
    bucket: BucketLocation | None = None
    #: The champion's validation page in the data docs (relative to the site).
    champion_validation_page: str | None = None
    #: The audit trail, newest first.
    events: list[EventEntry] = field(default_factory=list)
    #: Versions rolled back away from and not yet forced or unblocked: version -> why.
    blocked_versions: dict[str, str] = field(default_factory=dict)
    #: Recent tuning sweeps, newest first.
    tuning: list[TuningSweep] = field(default_factory=list)
    #: Recent nights' data-quality warnings and drift against the champion's data, newest first.
    data_checks: list[DataCheckNight] = field(default_factory=list)

    @property
    def last_decision(self) -> DecisionEntry | None:
        return self.decisions[0] if self.decisions else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (datetimes as ISO 8601 strings)."""
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def listed_verticals(settings: Settings, registry: Registry) -> list[str]:
    """The verticals of the spec files, plus any the registry still holds without one.

    A vertical whose spec was removed keeps its history; listing it (marked as
    having no spec) is how its last champion stays visible.  ``Registry.verticals``
    is newer than this view: without it, the spec files alone decide.
    """
    names = set(vertical_names(settings))
    registered = getattr(registry, "verticals", None)
    if callable(registered):
        names.update(str(name) for name in registered())
    return sorted(names)


def collect_vertical(
    registry: Registry,
    settings: Settings,
    vertical: str,
    *,
    history: int = 10,
) -> VerticalOverview:
    """Champion, metric checks and the newest ``history`` decisions and deployments of one vertical."""
    spec: VerticalSpec | None = None
    spec_error: str | None = None
    try:
        spec = load_spec(vertical, settings)
    except PipelineError as exc:
        spec_error = str(exc)
    thresholds: dict[str, float] = {str(k): v for k, v in spec.gate.thresholds.items()} if spec else {}
    notes = _reconcile(registry, settings, vertical)
    refresh_from_state(settings, vertical)
    deployments = registry.deployments(vertical, limit=history)
    models = _ModelCache(registry, vertical)
    champion = registry.champion(vertical)
    champion_version = champion.model_version if champion else None
    if champion is None and deployments:
        notes.append(f"the last deployment names {deployments[0].model_version}, which is not in model_versions")
    decisions = _decisions(registry, vertical, history, models, champion_version)
    tuning, tuning_note = tuning_sweeps(settings, vertical, limit=min(history, 5))
    if tuning_note:
        notes.append(tuning_note)
    return VerticalOverview(
        name=vertical,
        description=spec.description if spec else None,
        owner=spec.owner if spec else None,
        thresholds=thresholds,
        champion=_champion(champion, deployments, thresholds) if champion else None,
        decisions=annotate_decisions(decisions, settings, vertical, history_known=_has_history(registry)),
        deployments=[_deployment(d) for d in deployments],
        has_data_docs=(data_docs_root(settings, vertical) / "index.html").is_file(),
        spec_error=spec_error,
        notes=notes,
        blocked=blocked_days(settings, vertical, limit=history),
        bucket=bucket_location(settings.bucket_url, vertical),
        champion_validation_page=validation_page(settings, vertical, champion.ds) if champion else None,
        events=[_event(e) for e in registry.events(vertical, limit=history * 3)],
        blocked_versions={b.model_version or "": _block_message(b) for b in registry.blocks(vertical)},
        tuning=tuning,
        data_checks=data_checks(settings, vertical, limit=history),
    )


def tuning_sweeps(settings: Settings, vertical: str, *, limit: int = 5) -> tuple[list[TuningSweep], str | None]:
    """The newest ``limit`` tuning sweeps of ``vertical`` (newest first), and a note when they cannot be read.

    Read with the `tuning` CLI command's reader (`pipelines.model.tuning.list_studies`).
    No studies file next to a SQLite registry means no sweep yet: Optuna is not
    even imported.  A storage that cannot be read is a note on the page, not
    a failed page: the registry's history is still worth showing.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from pipelines.model.tuning import list_studies, study_storage_url

    try:
        url = study_storage_url(settings)
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            return [], None
        studies = list_studies(settings, vertical)
    # RuntimeError: Optuna's own "storage schema not compatible with this version".
    except (PipelineError, SQLAlchemyError, ImportError, RuntimeError) as exc:
        return [], f"tuning sweeps could not be read: {exc}"
    newest = sorted(studies, key=lambda s: str(s["ds"]), reverse=True)[:limit]
    return [
        TuningSweep(
            study=str(s["study"]),
            ds=str(s["ds"]),
            started=s.get("started"),
            direction=str(s.get("direction") or ""),
            trials=int(s["trials"]),
            complete=int(s["complete"]),
            pruned=int(s["pruned"]),
            best_value=None if s["best_value"] is None else float(s["best_value"]),
            best_params=s["best_params"],
        )
        for s in newest
    ], None


def _reconcile(registry: Registry, settings: Settings, vertical: str) -> list[str]:
    """Confirm a deploy that died after its pointer flip, so the view agrees with serving.

    A bucket that cannot be read is reported on the page (the registry's view is shown as is).
    """
    from pipelines.release.rollout import reconcile_production

    try:
        reconcile_production(registry, settings.bucket_url, vertical)
    except PipelineError as exc:
        return [f"a pending deploy could not be checked against the bucket: {exc}"]
    pending = registry.pending_intent(vertical)
    if pending is None:
        return []
    return [
        f"{pending.kind.replace('_intent', '')} of {pending.model_version} by {pending.actor} pending since "
        f"{pending.at:%Y-%m-%d %H:%M} UTC: the production pointer has not moved to it"
    ]


def _block_message(block: EventRecord) -> str:
    from pipelines.release.rollout import block_message

    return block_message(block)


def _event(record: EventRecord) -> EventEntry:
    return EventEntry(
        at=record.at,
        kind=record.kind,
        ds=record.ds,
        model_version=record.model_version,
        actor=record.actor,
        run_id=record.run_id,
        reason=record.reason,
        details=record.details,
    )


def collect_all(
    registry: Registry, settings: Settings, verticals: Iterable[str], *, history: int = 10
) -> list[VerticalOverview]:
    return [collect_vertical(registry, settings, name, history=history) for name in verticals]


class _ModelCache:
    """Decisions name model versions; their DAG run lives on the model row (one read each)."""

    def __init__(self, registry: Registry, vertical: str) -> None:
        self._registry = registry
        self._vertical = vertical
        self._seen: dict[str, ModelRecord | None] = {}

    def get(self, model_version: str) -> ModelRecord | None:
        if model_version not in self._seen:
            self._seen[model_version] = self._registry.model(self._vertical, model_version)
        return self._seen[model_version]


def check_metrics(metrics: dict[str, Any], thresholds: dict[str, float]) -> list[MetricCheck]:
    """Each spec floor against ``metrics`` (a missing or non-numeric value is neither pass nor fail)."""
    checks = []
    for metric, floor in sorted(thresholds.items()):
        value = metrics.get(metric)
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        checks.append(MetricCheck(metric, number, floor, None if number is None else number >= floor))
    return checks


def _champion(model: ModelRecord, deployments: list[DeploymentRecord], thresholds: dict[str, float]) -> Champion:
    last = deployments[0] if deployments and deployments[0].model_version == model.model_version else None
    return Champion(
        model_version=model.model_version,
        data_version=model.data_version,
        ds=model.ds,
        dag_run_id=model.dag_run_id,
        registered_at=model.created_at,
        deployed_at=last.at if last else None,
        deployed_by=last.actor if last else None,
        deployed_run_id=_run_of(last.actor) if last else None,
        checks=check_metrics(model.metrics, thresholds),
    )


def _rule(reason: Any) -> RuleLine:
    # The gate stores `RuleResult` dicts; tolerate a bare string from an older writer.
    if isinstance(reason, dict):
        passed = reason.get("passed")
        return RuleLine(
            rule=str(reason.get("rule", "")),
            passed=passed if isinstance(passed, bool) else None,
            detail=str(reason.get("detail") or reason.get("rule") or ""),
        )
    return RuleLine(rule="", passed=None, detail=str(reason))


def _decisions(
    registry: Registry, vertical: str, limit: int, models: _ModelCache, champion_version: str | None
) -> list[DecisionEntry]:
    """Newest first; with ``Registry.history`` each says whether and when its version was deployed."""
    history = getattr(registry, "history", None)
    if callable(history):
        return [
            _decision(h.decision, models, deployed_at=h.deployed_at, is_champion=h.is_champion)
            for h in history(vertical, limit=limit)
        ]
    return [
        _decision(d, models, deployed_at=None, is_champion=d.model_version == champion_version)
        for d in registry.decisions(vertical, limit=limit)
    ]


def _decision(
    record: DecisionRecord, models: _ModelCache, *, deployed_at: datetime | None, is_champion: bool
) -> DecisionEntry:
    outcome: Outcome = "forced" if record.forced else "approved" if record.approved else "rejected"
    model = models.get(record.model_version)
    return DecisionEntry(
        ds=record.ds,
        model_version=record.model_version,
        outcome=outcome,
        forced_reason=record.forced_reason,
        champion_version=record.champion_version,
        rules=[_rule(r) for r in record.reasons],
        dag_run_id=model.dag_run_id if model else None,
        decided_at=record.updated_at,
        actor=getattr(record, "actor", None),  # newer registries record who decided
        deployed_at=deployed_at,
        is_champion=is_champion,
    )


def _run_of(actor: str) -> str | None:
    run_id = actor[len(_RUN_ACTOR_PREFIX) :] if actor.startswith(_RUN_ACTOR_PREFIX) else None
    return run_id or None


def _deployment(record: DeploymentRecord) -> DeploymentEntry:
    return DeploymentEntry(
        at=record.at,
        action=record.action,
        from_version=record.previous_version,
        to_version=record.model_version,
        actor=record.actor,
        ds=record.ds,
        dag_run_id=_run_of(record.actor),
    )


# -- where a version, its validation and its blocked days are (read from disk, no GX import) ---------


@dataclass(frozen=True)
class BucketLocation:
    """The deployment bucket folder of a vertical's versions.

    ``served`` is True for a ``file://`` bucket: the plugin serves its version
    folders read-only (an ``s3://`` bucket is shown as its URI, to be opened
    with the team's S3 tools and credentials).
    """

    #: ``<bucket>/<vertical>/versions/``, credentials removed from the URL.
    versions_uri: str
    served: bool

    def version_uri(self, model_version: str) -> str:
        return f"{self.versions_uri}{model_version}/"


def bucket_location(bucket_url: str, vertical: str) -> BucketLocation:
    """Where ``vertical``'s versions live in the bucket at ``bucket_url``."""
    parts = urlsplit(bucket_url)
    # A password in the URL never reaches a page; an Airflow conn id ("aws_default@") is no secret.
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    shown = urlunsplit(parts._replace(netloc=netloc)).rstrip("/")
    return BucketLocation(versions_uri=f"{shown}/{vertical}/versions/", served=parts.scheme == "file")


def local_bucket_root(bucket_url: str) -> Path | None:
    """The folder of a ``file://`` bucket (None for any other scheme)."""
    parts = urlsplit(bucket_url)
    if parts.scheme != "file":
        return None
    from urllib.request import url2pathname

    return Path(url2pathname(parts.path))


def validation_page(settings: Settings, vertical: str, ds: str) -> str | None:
    """The data docs page of the newest validation run for ``ds``, relative to the site, or None.

    The validate stage names its GX run ``<vertical>-<ds>`` (`pipelines.data.quality.validate_frame`);
    GX writes each run to ``validations/<suite>/<run name>/<run time>/<batch>.html``.
    A rerun adds a newer run time: the last one is what the day's data got.
    """
    root = data_docs_root(settings, vertical)
    pages = sorted(
        root.glob(f"validations/*/{glob.escape(f'{vertical}-{ds}')}/*/*.html"),  # ds is registry text
        key=lambda p: (p.parent.name, p.name),  # GX run times sort as text (20261130T155756.632102Z)
    )
    return pages[-1].relative_to(root).as_posix() if pages else None


@dataclass(frozen=True)
class BlockedDay:
    """A run stopped by the data-quality suite: its date, what failed, the days held back."""

    ds: str
    summary: str
    #: The days the stage moved to quarantine for this run.
    quarantined: list[str]
    #: Of those, the days whose partition is still in quarantine (not revalidated since).
    still_quarantined: list[str]
    #: Where the alert went (an address list, an outbox file, or why it was not sent).
    alert: str | None
    validation_page: str | None


def blocked_days(settings: Settings, vertical: str, *, limit: int = 10) -> list[BlockedDay]:
    """Runs whose latest ``validate`` record failed, newest first (at most ``limit``).

    The validate stage writes ``runs/<vertical>/<ds>/validate.json`` with
    ``success: false`` when the suite fails; a later successful rerun of the
    date overwrites it, so a fixed day drops off this list.
    """
    runs = settings.home / "runs" / vertical
    # One listing of the shared quarantine folder (a partition revalidated on another worker leaves it there).
    held = open_state(settings).names(settings.home / "data" / vertical / "quarantine")
    blocked: list[BlockedDay] = []
    for record_path in sorted(runs.glob("*/validate.json"), reverse=True):
        if len(blocked) >= limit:
            break
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue  # being rewritten by a running stage: it shows on the next page load
        if not isinstance(record, dict) or record.get("success") is not False:
            continue
        ds = record_path.parent.name
        days = [str(d) for d in record.get("quarantined") or []]
        blocked.append(
            BlockedDay(
                ds=ds,
                summary=str(record.get("summary") or "the data-quality suite failed"),
                quarantined=days,
                still_quarantined=[d for d in days if f"{d}.parquet" in held],
                alert=str(record["alert"]) if record.get("alert") else None,
                validation_page=validation_page(settings, vertical, ds),
            )
        )
    return blocked


def _has_history(registry: Registry) -> bool:
    return callable(getattr(registry, "history", None))


def annotate_decisions(
    decisions: list[DecisionEntry], settings: Settings, vertical: str, *, history_known: bool
) -> list[DecisionEntry]:
    """Add each decision's validation page and whether its version never reached production.

    "Never deployed" needs ``Registry.history``; without it whether a version
    was deployed is unknown, and nothing is marked.
    """
    pages: dict[str, str | None] = {}
    annotated = []
    for d in decisions:
        if d.ds not in pages:
            pages[d.ds] = validation_page(settings, vertical, d.ds)
        never = history_known and d.deployed_at is None and not d.is_champion
        annotated.append(replace(d, never_deployed=never, validation_page=pages[d.ds]))
    return annotated


@dataclass(frozen=True)
class DataCheckNight:
    """One night's non-blocking data-quality warnings and its drift against the champion's training data."""

    ds: str
    #: "expectation on column (severity): observed", one per warning (GX severity warning/info).
    warnings: list[str]
    #: The drift record's one-line summary (or why nothing was compared); None: no drift record.
    drift: str | None
    drift_max_psi: float | None
    #: Features at or beyond the warn threshold, and whether one reached block (the run stopped).
    drift_flagged: list[str]
    drift_blocked: bool


def data_checks(settings: Settings, vertical: str, *, limit: int = 10) -> list[DataCheckNight]:
    """The newest ``limit`` nights with a warning or a drift comparison (read from the stage records)."""
    runs = settings.home / "runs" / vertical
    nights: list[DataCheckNight] = []
    for run_dir in sorted((p for p in runs.glob("*") if p.is_dir()), reverse=True):
        if len(nights) >= limit:
            break
        validate, drift = _record(run_dir / "validate.json"), _record(run_dir / "drift.json")
        warnings = [
            f"{w.get('expectation')} on {w.get('column') or 'the table'} ({w.get('severity')}): {w.get('observed')}"
            for w in validate.get("warnings") or []
            if isinstance(w, dict)
        ]
        compared = bool(drift) and not drift.get("skipped")
        if not warnings and not compared:
            continue
        max_psi = drift.get("max_psi")
        nights.append(
            DataCheckNight(
                ds=run_dir.name,
                warnings=warnings,
                drift=str(drift["summary"]) if drift.get("summary") else None,
                drift_max_psi=float(max_psi) if isinstance(max_psi, int | float) else None,
                drift_flagged=[str(f) for f in [*(drift.get("blocking") or []), *(drift.get("warnings") or [])]],
                drift_blocked=bool(drift.get("blocking")),
            )
        )
    return nights


def _record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent, or being rewritten by a running stage: it shows on the next page load
    return record if isinstance(record, dict) else {}
