"""Alert and report emails: SMTP when configured, otherwise an outbox folder.

SMTP settings come from Airflow's ``smtp_default`` connection through
`pipelines.connections` (``AIRFLOW_CONN_SMTP_DEFAULT`` in the CLI, Airflow's own
lookup inside a task), read as the smtp provider reads it, so data-quality
alerts and Airflow's task-failure emails go through the same relay.  Each alert is sent once per
vertical, date and content: a retried or cleared task that fails the same way
does not mail the owners twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import smtplib
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import connections
from pipelines.config import Settings, VerticalSpec
from pipelines.connections import SmtpConfig
from pipelines.data.drift import DriftReport
from pipelines.data.quality import FailedExpectation, QualityReport
from pipelines.errors import PipelineError
from pipelines.layout import Layout, write_bytes_atomic, write_json_atomic
from pipelines.notify.run_context import CLI, RunContext
from pipelines.state import open_state

log = logging.getLogger(__name__)
DEFAULT_SENDER = connections.DEFAULT_SMTP_SENDER
SMTP_CONN_ID = "smtp_default"
#: Days that passed, listed one by one in a data-quality alert (the rest are summed up in one line).
MAX_PASSED_DAYS_LISTED = 31
#: What makes two alerts "the same" for `deliver`'s dedupe, set by the message builder: the
#: failure itself, not the links and try number that differ between a run and its retry.
DIGEST_HEADER = "X-Pipelines-Alert-Digest"


def configured_smtp() -> SmtpConfig | None:
    """The ``smtp_default`` connection (env, or Airflow's lookup inside Airflow), as the smtp provider reads it."""
    conn = connections.get(SMTP_CONN_ID)
    return None if conn is None else connections.smtp_config(conn)


class AlertDeliveryError(PipelineError, OSError):
    """SMTP refused or could not be reached; the message is kept in the outbox for redelivery.

    An `OSError` too, so callers that already treat a failed send as an
    I/O fault (the validate stage records "NOT SENT" and still stops the run)
    keep doing so, and the message they record says where the email waits.
    """

    retryable = True  # a relay that is down comes back; the queued message is sent then


def deliver(
    message: EmailMessage, settings: Settings, *, dedupe_key: str | None = None, smtp: SmtpConfig | None = None
) -> str:
    """Send ``message`` and return where it went ("smtp://host:port" or the outbox path).

    The one way an email leaves the platform: data-quality alerts, run summaries,
    rollback notices and Airflow's task-failure emails all come through here.
    ``smtp`` is the relay when the caller resolved it (the Airflow notifier, through
    Airflow's connections); otherwise ``AIRFLOW_CONN_SMTP_DEFAULT`` is read.

    ``dedupe_key`` names a marker under the data root; a message whose content
    was already delivered under that key is not sent again.  With SMTP
    configured, every earlier undelivered message is retried first; a message
    SMTP refuses is kept under ``outbox/undelivered/`` and `AlertDeliveryError`
    is raised: the next delivery (or ``python -m pipelines alerts flush``)
    sends it, exactly once.
    """
    digest = _content_digest(message)
    where = _delivered_where(settings, dedupe_key, digest)
    if where is not None:
        log.info("alert %s already delivered (%s); not sending it twice", dedupe_key, digest)
        return where
    # The experiment profile (dvc repro / dvc exp run) never mails anyone, whatever SMTP is configured.
    smtp = (smtp or configured_smtp()) if settings.sends_email else None
    if smtp is None:
        where = open_state(settings).where(_write_outbox(message, settings))
        why = "no SMTP configured (AIRFLOW_CONN_SMTP_DEFAULT)" if settings.sends_email else "experiment profile"
        log.warning("%s; email written to %s, not sent", why, where)
        _mark_delivered(settings, dedupe_key, digest, where)
        return where
    if _redeliver_queued(settings, smtp) and (where := _delivered_where(settings, dedupe_key, digest)):
        return where  # this very message was the queued one (a retried task): sent just now, once
    try:
        where = _send_smtp(message, smtp)
    except (OSError, smtplib.SMTPException) as exc:
        kept = _queue(message, settings, dedupe_key, digest)
        raise AlertDeliveryError(
            f"email {message['Subject']!r} could not be sent through smtp://{smtp.host}:{smtp.port} "
            f"({type(exc).__name__}: {exc}); it is kept at {open_state(settings).where(kept)} "
            "and is sent on the next delivery, "
            "or run `python -m pipelines alerts flush` once the relay (AIRFLOW_CONN_SMTP_DEFAULT) is back"
        ) from exc
    log.info("email %r sent through %s to %s", message["Subject"], where, message["To"])
    _mark_delivered(settings, dedupe_key, digest, where)
    return where


# -- undelivered messages (outbox/undelivered/) ----------------------------------

#: Header that carries a queued message's dedupe key, so redelivery keeps "exactly once".
KEY_HEADER = "X-Pipelines-Alert-Key"
#: A claim older than this belongs to a process that died mid-send; another may retake it.
_STALE_CLAIM_S = 15 * 60


def undelivered_dir(settings: Settings) -> Path:
    """Where emails SMTP did not accept wait for redelivery."""
    return settings.home / "outbox" / "undelivered"


def undelivered(settings: Settings) -> list[Path]:
    """Queued emails, oldest first (by name when they live in a shared state store).

    With ``PIPELINES_STATE_URL`` elsewhere the queue is the state's
    ``outbox/undelivered/`` (any worker may flush what another queued); the
    paths returned are this host's fetched copies.
    """
    folder = undelivered_dir(settings)
    state = open_state(settings)
    if not state.is_home:
        queued = {name for name in state.names(folder) if name.endswith(".eml")}
        for gone in folder.glob("*.eml"):
            if gone.name not in queued:
                gone.unlink()  # sent and removed by another host since this one fetched it
        paths = [folder / name for name in sorted(queued)]
        state.pull(*paths)  # written once, so a cached copy is never stale: only new ones download
        return [p for p in paths if p.is_file()]
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.eml"), key=lambda p: (p.stat().st_mtime, p.name))


def flush_undelivered(settings: Settings) -> tuple[int, int]:
    """Send every queued email now; return (sent, still queued).

    Raises `AlertDeliveryError` when SMTP is not configured (nothing to send through).
    """
    smtp = configured_smtp()
    if smtp is None:
        raise AlertDeliveryError(
            f"{len(undelivered(settings))} email(s) wait in {open_state(settings).where(undelivered_dir(settings))} "
            "but no SMTP relay is "
            "configured: set AIRFLOW_CONN_SMTP_DEFAULT and run `python -m pipelines alerts flush` again"
        )
    sent = _redeliver_queued(settings, smtp)
    return sent, len(undelivered(settings))


def _content_digest(message: EmailMessage) -> str:
    """What makes two alerts the same one: the builder's digest header, else the plain-text body."""
    return message.get(DIGEST_HEADER) or hashlib.sha256(_plain_text(message).encode()).hexdigest()[:16]


def _marker(settings: Settings, dedupe_key: str) -> Path:
    return settings.home / "alerts-sent" / f"{dedupe_key}.json"


def _delivered_where(settings: Settings, dedupe_key: str | None, digest: str) -> str | None:
    if dedupe_key is None:
        return None
    marker = _marker(settings, dedupe_key)
    state = open_state(settings)
    if not state.is_home:
        # The shared copy decides: the alert may have gone out from another worker.
        marker.unlink(missing_ok=True)
        state.pull(marker)
    if not marker.exists():
        return None
    record = json.loads(marker.read_text())
    return str(record["where"]) if record.get("digest") == digest else None


def _mark_delivered(settings: Settings, dedupe_key: str | None, digest: str, where: str) -> None:
    if dedupe_key is not None:
        marker = _marker(settings, dedupe_key)
        write_json_atomic(marker, {"digest": digest, "where": where, "at": datetime.now(UTC).isoformat()})
        open_state(settings).push(marker)


def _queue(message: EmailMessage, settings: Settings, dedupe_key: str | None, digest: str) -> Path:
    """Keep ``message`` for redelivery; the same key and content are queued once."""
    if dedupe_key is not None:
        del message[KEY_HEADER]
        message[KEY_HEADER] = dedupe_key
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in (dedupe_key or "message"))[:100]
    path = undelivered_dir(settings) / f"{name}-{digest}.eml"
    state = open_state(settings)
    if state.is_home or not state.exists(path):  # write-once: the name holds the content's digest
        write_bytes_atomic(path, bytes(message))
        state.push(path)
    return path


def _claims(settings: Settings) -> list[Path]:
    """Queued files, plus claims abandoned by a process that died while sending them."""
    folder = undelivered_dir(settings)
    now = datetime.now(UTC).timestamp()
    stale = [p for p in folder.glob(".*.eml.claimed-*") if now - p.stat().st_mtime > _STALE_CLAIM_S]
    return undelivered(settings) + stale


def _redeliver_queued(settings: Settings, smtp: SmtpConfig) -> int:
    """Send queued emails in order; stop at the first the relay refuses (it stays queued)."""
    from email import message_from_bytes, policy

    if not open_state(settings).is_home:
        return _redeliver_shared(settings, smtp)
    sent = 0
    for path in _claims(settings):
        # Claim by rename, so two processes flushing at once never send the same email twice.
        original = path.with_name(path.name.split(".claimed-")[0].lstrip(".")) if ".claimed-" in path.name else path
        claimed = path.with_name(f".{original.name}.claimed-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, claimed)
        except FileNotFoundError:
            continue  # another process took it
        claimed.touch()  # the claim's age starts now
        queued = message_from_bytes(claimed.read_bytes(), policy=policy.default)
        assert isinstance(queued, EmailMessage)
        key, digest = queued[KEY_HEADER], _content_digest(queued)
        if _delivered_where(settings, key, digest) is None:
            if not _resend(settings, smtp, queued, shown=str(original)):
                os.replace(claimed, original)
                break
            sent += 1
        claimed.unlink()
    return sent


def _resend(settings: Settings, smtp: SmtpConfig, queued: EmailMessage, *, shown: str) -> bool:
    """Send one queued email and record its delivery; False (logged) when the relay still refuses it."""
    try:
        where = _send_smtp(queued, smtp)
    except (OSError, smtplib.SMTPException) as exc:
        log.error(
            "queued email %s still not accepted by smtp://%s:%s (%s: %s); it stays queued",
            shown,
            smtp.host,
            smtp.port,
            type(exc).__name__,
            exc,
        )
        return False
    _mark_delivered(settings, queued[KEY_HEADER], _content_digest(queued), where)
    log.info("redelivered queued email %r through %s", queued["Subject"], where)
    return True


def _redeliver_shared(settings: Settings, smtp: SmtpConfig) -> int:
    """`_redeliver_queued` for a queue in a shared state store, where a rename claims nothing.

    Each message is claimed with a marker (`_claim`); the holder sends it, records
    the delivery, then deletes the queued object and only then its claim, so a
    flush that claims it afterwards finds the object gone and sends nothing.
    """
    from email import message_from_bytes, policy

    state = open_state(settings)
    sent = 0
    for path in undelivered(settings):
        claim = _claim(settings, path)
        if claim is None:
            continue  # another flush holds it: that one sends it
        try:
            if not state.exists(path):
                continue  # sent and removed by another flush since it was listed
            queued = message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(queued, EmailMessage)
            key, digest = queued[KEY_HEADER], _content_digest(queued)
            if _delivered_where(settings, key, digest) is None:
                if not _resend(settings, smtp, queued, shown=state.where(path)):
                    break
                sent += 1
            state.remove(path)
        finally:
            state.remove(claim)
    return sent


#: How often a flush that found a message claimed by another one looks again (with random waits).
_CLAIM_TRIES = 4
#: A claim marker's name: ``<unix time>-<pid>-<random>``.
_CLAIM_NAME = re.compile(r"\d+-\d+-[0-9a-f]{8}")


def _claim(settings: Settings, path: Path) -> Path | None:
    """Claim the queued ``path`` in the shared state, or None when another flush holds it.

    A flush writes its own marker under ``outbox/claims/<message>/`` and then
    lists that folder: it holds the message only when no other live marker is
    there.  Two flushes that list at once both see each other and both step
    back (never both send); each then waits a random moment and tries again,
    so one of them takes it.  Markers older than `_STALE_CLAIM_S` belong to a
    flush that died mid-send and are removed.  The store must list what was
    written before (S3 and SeaweedFS are strongly consistent).
    """
    import random
    import time

    state = open_state(settings)
    folder = settings.home / "outbox" / "claims" / path.name
    for attempt in range(_CLAIM_TRIES):
        if attempt:
            time.sleep(random.uniform(0.05, 0.3) * attempt)
        mine = folder / f"{int(time.time())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        write_bytes_atomic(mine, b"")
        state.push(mine)
        live = False
        for name in state.names(folder) - {mine.name}:
            if not _CLAIM_NAME.fullmatch(name):
                continue  # not a claim (an object store may list an emptied "folder" itself)
            if time.time() - int(name.split("-", 1)[0]) > _STALE_CLAIM_S:
                state.remove(folder / name)
            else:
                live = True
        if not live:
            return mine
        state.remove(mine)
    return None


def _plain_text(message: EmailMessage) -> str:
    # An HTML email is multipart/alternative: its plain-text part is the content to compare.
    body = message.get_body(("plain",))
    return str(body.get_content()) if body is not None else message.as_string()


def _send_smtp(message: EmailMessage, smtp: SmtpConfig) -> str:
    if not message["From"]:
        message["From"] = smtp.sender
    client_cls = smtplib.SMTP_SSL if smtp.use_ssl else smtplib.SMTP
    with client_cls(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        if smtp.starttls and not smtp.use_ssl:  # as Airflow: STARTTLS only on a plain connection
            client.starttls()
        if smtp.login:
            client.login(smtp.login, smtp.password or "")
        client.send_message(message)
    return f"smtp://{smtp.host}:{smtp.port}"


def _write_outbox(message: EmailMessage, settings: Settings) -> Path:
    if not message["From"]:
        message["From"] = DEFAULT_SENDER
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    slug = "".join(c if c.isalnum() else "-" for c in str(message["Subject"]))[:60].strip("-")
    path = settings.home / "outbox" / f"{stamp}-{slug}.eml"
    write_bytes_atomic(path, bytes(message))
    open_state(settings).push(path)
    return path


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    return str(value)


def _sample(frame: pd.DataFrame) -> dict[str, Any]:
    """A failing-rows sample as plain strings, for both templates."""
    return {
        "columns": [str(c) for c in frame.columns],
        "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)],
        "text": frame.to_string(index=False, max_colwidth=24) if not frame.empty else "(no sample rows)",
    }


def observed_text(failure: FailedExpectation) -> str:
    """What GX saw, with the percentage on the rows the expectation checked."""
    if failure.unexpected_count is not None:
        base = f" of {failure.element_count} rows checked" if failure.element_count is not None else ""
        percent = f" ({failure.unexpected_percent:.2f}%)" if failure.unexpected_percent is not None else ""
        text = f"{failure.unexpected_count}{base} unexpected{percent}"
        return f"{failure.observed}; {text}" if failure.observed is not None else text
    return _cell(failure.observed)


def _expected(failure: FailedExpectation) -> str:
    """The expectation's arguments; a check without any (e.g. uniqueness) is said in words."""
    if failure.expected:
        return json.dumps(failure.expected, default=str, sort_keys=True)
    words = failure.expectation.removeprefix("expect_").replace("_", " ")
    return f"{failure.column or 'the table'}: {words}"


def _rerun(spec: VerticalSpec, ds: str, run: RunContext) -> dict[str, Any]:
    """The hint that fits where the run came from."""
    cli = f"python -m pipelines run {spec.name} --date {ds}"
    if not run.from_airflow:
        return {"airflow": False, "cli": cli}
    task = run.task_id or "validate"
    return {
        "airflow": True,
        "task": task,
        "url": run.run_url,
        "airflow_cli": f"airflow tasks clear {run.dag_id or spec.name} -t '^{task}$' -d -s {ds} -e {ds} --yes",
    }


@dataclass(frozen=True)
class _Day:
    """One day the suite checked, as the alert lists it."""

    day: str
    rows: int | None
    failed: bool
    where: str


@functools.cache
def _templates() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines.notify", "templates"),
        # HTML escapes every value (sample rows are data from the source); plain text must not.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def quality_alert(
    spec: VerticalSpec,
    report: QualityReport,
    samples: Sequence[pd.DataFrame],
    settings: Settings,
    run_context: RunContext | None = None,
) -> EmailMessage:
    """The data-quality alert: what broke, on which days and rows, where to look, how to rerun.

    ``samples`` holds each failed expectation's own failing rows (PII masked),
    in the order of ``report.failed`` (see `pipelines.data.quality.failing_samples`).
    ``run_context`` says where the run came from (None: the CLI); an Airflow
    run gets links to its run and task log and the "clear the task" hint.
    HTML with a plain-text alternative, both from ``pipelines/notify/templates``.
    """
    if len(samples) != len(report.failed):
        raise ValueError(f"{len(samples)} samples for {len(report.failed)} failed expectations")
    run = run_context or CLI
    layout = Layout(settings, spec.name)
    # Only GX severity ``warning``/``info`` failed: the run goes on, and the email says so.
    blocking = not report.success
    failed_days = set(report.failed_days or report.days) if blocking else set()
    days = [
        _Day(
            day=day,
            rows=report.rows_per_day.get(day),
            failed=day in failed_days,
            where=layout.state.where(layout.quarantine(day) if day in failed_days else layout.validated(day)),
        )
        for day in report.days
    ]
    # A first run checks a whole window at once: every failing day is listed, passing ones up to a month.
    passed = [d for d in days if not d.failed]
    shown = {d.day for d in days if d.failed} | {d.day for d in passed[-MAX_PASSED_DAYS_LISTED:]}
    hidden = [d for d in passed if d.day not in shown]
    more_passed = (
        {"days": len(hidden), "first": hidden[0].day, "last": hidden[-1].day, "rows": sum(d.rows or 0 for d in hidden)}
        if hidden
        else None
    )
    tables = [_sample(sample) for sample in samples]
    values = {
        "blocking": blocking,
        "warnings": [
            {
                "failure": f,
                "expected": _expected(f),
                "observed": observed_text(f),
                "sample_values": json.dumps(f.sample_values, default=str) if f.sample_values else None,
            }
            for f in report.warnings
        ],
        "spec": spec,
        "report": report,
        "run": run,
        "days": [d for d in days if d.day in shown],
        "n_days": len(days),
        "more_passed": more_passed,
        "n_failed_days": len(failed_days & set(report.days)),
        "failures": [
            {
                "failure": f,
                "expected": _expected(f),
                "observed": observed_text(f),
                "sample_values": json.dumps(f.sample_values, default=str) if f.sample_values else None,
                "sample": table,
            }
            for f, table in zip(report.failed, tables, strict=True)
        ],
        "pii": ", ".join(spec.pii) or "none",
        "quality_json": layout.state.where(layout.report_dir(report.ds) / "quality.json"),
        "rerun": _rerun(spec, report.ds, run),
    }
    identity = {
        "vertical": spec.name,
        "ds": report.ds,
        "days": [asdict(d) for d in days],
        "failed": [asdict(f) for f in report.failed],
        "warnings": [asdict(f) for f in report.warnings],
        "samples": [table["rows"] for table in tables],
    }
    subject = (
        f"[data quality] {spec.name} {report.ds}: {len(report.failed)} expectation(s) failed"
        if blocking
        else f"[data quality warning] {spec.name} {report.ds}: {len(report.warnings)} expectation(s) warned; "
        "the run continues"
    )
    return _templated_email(spec, "quality_alert", subject, values, identity)


def _templated_email(
    spec: VerticalSpec, template: str, subject: str, values: dict[str, Any], identity: dict[str, Any]
) -> EmailMessage:
    """HTML ``templates/<template>.html`` with its ``.txt`` alternative; ``identity`` is what dedupes it."""
    env = _templates()
    message = EmailMessage()
    message[DIGEST_HEADER] = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    message["Subject"] = subject
    message["To"] = ", ".join(spec.alerts.emails)
    message.set_content(env.get_template(f"{template}.txt").render(values))
    message.add_alternative(env.get_template(f"{template}.html").render(values), subtype="html")
    return message


def summary_email(spec: VerticalSpec, ds: str, summary_text: str, *, outcome: str) -> EmailMessage:
    """The run summary (decision, metrics vs thresholds vs champion)."""
    message = EmailMessage()
    message["Subject"] = f"[retrain] {spec.name} {ds}: {outcome}"
    message["To"] = ", ".join(spec.alerts.emails)
    message.set_content(summary_text)
    return message


def drift_alert(
    spec: VerticalSpec, report: DriftReport, settings: Settings, run_context: RunContext | None = None
) -> EmailMessage:
    """Drift against the champion's training data: a blocking alert (the run stopped) or a warning.

    HTML with a plain-text alternative, from ``pipelines/notify/templates/drift_alert.*``.
    """
    run = run_context or CLI
    blocking = bool(report.blocking)
    values = {
        "spec": spec,
        "report": report,
        "run": run,
        "blocking": blocking,
        "features": sorted(report.features, key=lambda f: f.psi, reverse=True),
        "drift_json": str(Layout(settings, spec.name).report_dir(report.ds) / "drift.json"),
        "rerun": _rerun(spec, report.ds, run),
    }
    identity = {"vertical": spec.name, "ds": report.ds, "report": report.to_dict()}
    subject = (
        f"[data drift] {spec.name} {report.ds}: {len(report.blocking)} feature(s) beyond the block threshold"
        if blocking
        else f"[data drift warning] {spec.name} {report.ds}: {len(report.warnings)} feature(s) drifted; "
        "the run continues"
    )
    return _templated_email(spec, "drift_alert", subject, values, identity)
