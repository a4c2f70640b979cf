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
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd

from pipelines.config import Settings, VerticalSpec
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


def deliver(message: EmailMessage, settings: Settings, *, dedupe_key: str | None = None) -> str:
    """Send ``message`` and return where it went ("smtp://host:port" or the outbox path).

    ``dedupe_key`` names a marker under the data root; a message whose content
    was already delivered under that key is not sent again.
    """
    digest = hashlib.sha256(message.get_content().encode()).hexdigest()[:16]
    marker = settings.home / "alerts-sent" / f"{dedupe_key}.json" if dedupe_key else None
    if marker is not None and marker.exists() and json.loads(marker.read_text()).get("digest") == digest:
        log.info("alert %s already delivered (%s); not sending it twice", dedupe_key, digest)
        return json.loads(marker.read_text())["where"]
    # The experiment profile (dvc repro / dvc exp run) never mails anyone, whatever SMTP is configured.
    smtp = SmtpConfig.from_env() if settings.sends_email else None
    if smtp is None:
        where = str(_write_outbox(message, settings))
        why = "no SMTP configured (AIRFLOW_CONN_SMTP_DEFAULT)" if settings.sends_email else "experiment profile"
        log.warning("%s; email written to %s, not sent", why, where)
    else:
        where = _send_smtp(message, smtp)
        log.info("email %r sent through %s to %s", message["Subject"], where, message["To"])
    if marker is not None:
        write_json_atomic(marker, {"digest": digest, "where": where, "at": datetime.now(UTC).isoformat()})
    return where


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
