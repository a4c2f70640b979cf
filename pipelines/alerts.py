"""Alert and report emails: SMTP when configured, otherwise an outbox folder.

SMTP settings come from Airflow's ``smtp_default`` connection, given as
``AIRFLOW_CONN_SMTP_DEFAULT`` (JSON form, as Airflow documents it), so the CLI
and the DAGs deliver through the same relay.  Each alert is sent once per
vertical, date and content: a retried or cleared task that fails the same way
does not mail the owners twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import smtplib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd

from pipelines.config import Settings, VerticalSpec
from pipelines.errors import PipelineError
from pipelines.layout import Layout, write_bytes_atomic, write_json_atomic
from pipelines.quality import QualityReport

log = logging.getLogger(__name__)
DEFAULT_SENDER = "nightly-retrain@localhost"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    login: str | None = None
    password: str | None = None
    use_ssl: bool = False
    starttls: bool = False
    sender: str = DEFAULT_SENDER

    @classmethod
    def from_env(cls) -> SmtpConfig | None:
        """Parse ``AIRFLOW_CONN_SMTP_DEFAULT`` (JSON or URI); None when unset."""
        raw = os.environ.get("AIRFLOW_CONN_SMTP_DEFAULT", "").strip()
        if not raw:
            return None
        if raw.startswith("{"):
            conn = json.loads(raw)
            extra = conn.get("extra") or {}
            if isinstance(extra, str):
                extra = json.loads(extra or "{}")
            return cls(
                host=conn.get("host") or "localhost",
                port=int(conn.get("port") or 25),
                login=conn.get("login") or None,
                password=conn.get("password") or None,
                # Airflow's SMTP hook defaults: SSL and TLS on unless the extra disables them.
                use_ssl=not _truthy(extra.get("disable_ssl", False)),
                starttls=not _truthy(extra.get("disable_tls", False)),
                sender=extra.get("from_email") or DEFAULT_SENDER,
            )
        url = urlsplit(raw)
        return cls(
            host=url.hostname or "localhost",
            port=url.port or 25,
            login=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
        )


def _truthy(value: object) -> bool:
    # Airflow's URI form turns "false" into a truthy string; accept both spellings.
    return value is True or str(value).lower() in ("1", "true", "yes")


class AlertDeliveryError(PipelineError, OSError):
    """SMTP refused or could not be reached; the message is kept in the outbox for redelivery.

    An `OSError` too, so callers that already treat a failed send as an
    I/O fault (the validate stage records "NOT SENT" and still stops the run)
    keep doing so, and the message they record says where the email waits.
    """


def deliver(message: EmailMessage, settings: Settings, *, dedupe_key: str | None = None) -> str:
    """Send ``message`` and return where it went ("smtp://host:port" or the outbox path).

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
    smtp = SmtpConfig.from_env() if settings.sends_email else None
    if smtp is None:
        where = str(_write_outbox(message, settings))
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
            f"({type(exc).__name__}: {exc}); it is kept at {kept} and is sent on the next delivery, "
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
    """Queued emails, oldest first."""
    folder = undelivered_dir(settings)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.eml"), key=lambda p: (p.stat().st_mtime, p.name))


def flush_undelivered(settings: Settings) -> tuple[int, int]:
    """Send every queued email now; return (sent, still queued).

    Raises `AlertDeliveryError` when SMTP is not configured (nothing to send through).
    """
    smtp = SmtpConfig.from_env()
    if smtp is None:
        raise AlertDeliveryError(
            f"{len(undelivered(settings))} email(s) wait in {undelivered_dir(settings)} but no SMTP relay is "
            "configured: set AIRFLOW_CONN_SMTP_DEFAULT and run `python -m pipelines alerts flush` again"
        )
    sent = _redeliver_queued(settings, smtp)
    return sent, len(undelivered(settings))


def _content_digest(message: EmailMessage) -> str:
    return hashlib.sha256(message.get_content().encode()).hexdigest()[:16]


def _marker(settings: Settings, dedupe_key: str) -> Path:
    return settings.home / "alerts-sent" / f"{dedupe_key}.json"


def _delivered_where(settings: Settings, dedupe_key: str | None, digest: str) -> str | None:
    if dedupe_key is None:
        return None
    marker = _marker(settings, dedupe_key)
    if not marker.exists():
        return None
    record = json.loads(marker.read_text())
    return str(record["where"]) if record.get("digest") == digest else None


def _mark_delivered(settings: Settings, dedupe_key: str | None, digest: str, where: str) -> None:
    if dedupe_key is not None:
        write_json_atomic(
            _marker(settings, dedupe_key), {"digest": digest, "where": where, "at": datetime.now(UTC).isoformat()}
        )


def _queue(message: EmailMessage, settings: Settings, dedupe_key: str | None, digest: str) -> Path:
    """Keep ``message`` for redelivery; the same key and content are queued once."""
    if dedupe_key is not None:
        del message[KEY_HEADER]
        message[KEY_HEADER] = dedupe_key
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in (dedupe_key or "message"))[:100]
    path = undelivered_dir(settings) / f"{name}-{digest}.eml"
    write_bytes_atomic(path, bytes(message))
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
            try:
                where = _send_smtp(queued, smtp)
            except (OSError, smtplib.SMTPException) as exc:
                os.replace(claimed, original)
                log.error(
                    "queued email %s still not accepted by smtp://%s:%s (%s: %s); it stays queued",
                    original,
                    smtp.host,
                    smtp.port,
                    type(exc).__name__,
                    exc,
                )
                break
            _mark_delivered(settings, key, digest, where)
            sent += 1
            log.info("redelivered queued email %r through %s", queued["Subject"], where)
        claimed.unlink()
    return sent


def _send_smtp(message: EmailMessage, smtp: SmtpConfig) -> str:
    if not message["From"]:
        message["From"] = smtp.sender
    client_cls = smtplib.SMTP_SSL if smtp.use_ssl else smtplib.SMTP
    with client_cls(smtp.host, smtp.port, timeout=30) as client:
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
    return path


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no sample rows)"
    return frame.to_string(index=False, max_colwidth=24)


def quality_alert(
    spec: VerticalSpec,
    report: QualityReport,
    sample_rows: pd.DataFrame,
    settings: Settings,
) -> EmailMessage:
    """The data-quality alert: what broke, where the data is, how to rerun."""
    layout = Layout(settings, spec.name)
    lines = [
        f"Data-quality check failed for vertical '{spec.name}', logical date {report.ds}.",
        "",
        f"Suite: {report.suite} ({report.evaluated} expectations, {len(report.failed)} failed)",
        f"Rows checked: {report.rows} over {len(report.days)} day(s) ({report.days[0]} .. {report.days[-1]})"
        if report.days
        else f"Rows checked: {report.rows}",
        "Training was stopped; the deployed model is unchanged.",
        "",
        "Failed expectations:",
    ]
    for f in report.failed:
        lines.append(f"  - {f.expectation} on {f.column or 'the table'}")
        lines.append(f"      expected: {json.dumps(f.expected, default=str)}")
        observed = f.observed if f.observed is not None else f"{f.unexpected_count} unexpected rows"
        if f.unexpected_percent is not None:
            observed = f"{observed} ({f.unexpected_percent:.2f}% of rows)"
        lines.append(f"      observed: {observed}")
        if f.sample_values:
            lines.append(f"      sample values: {json.dumps(f.sample_values, default=str)}")
        if f.notes:
            lines.append(f"      why it matters: {f.notes}")
    lines += [
        "",
        f"Sample failing rows (PII columns masked: {', '.join(spec.pii) or 'none'}):",
        _table(sample_rows),
        "",
        "Quarantined partitions:",
        *[f"  {layout.quarantine(day)}" for day in report.days],
        f"Quality report: {layout.report_dir(report.ds) / 'quality.json'}",
        f"Data docs: {report.data_docs or 'not built'}",
        "",
        "To rerun once the source is fixed:",
        f"  python -m pipelines run {spec.name} --date {report.ds}",
        f"  or clear the '{spec.name}' DAG run for {report.ds} in the Airflow UI.",
    ]
    message = EmailMessage()
    message["Subject"] = f"[data quality] {spec.name} {report.ds}: {len(report.failed)} expectation(s) failed"
    message["To"] = ", ".join(spec.alerts.emails)
    message.set_content("\n".join(lines))
    return message


def summary_email(spec: VerticalSpec, ds: str, summary_text: str, *, outcome: str) -> EmailMessage:
    """The run summary (decision, metrics vs thresholds vs champion)."""
    message = EmailMessage()
    message["Subject"] = f"[retrain] {spec.name} {ds}: {outcome}"
    message["To"] = ", ".join(spec.alerts.emails)
    message.set_content(summary_text)
    return message
