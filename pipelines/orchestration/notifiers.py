"""Failure emails for tasks, through Airflow's own notifiers.

`FailureNotifier` is every task's ``on_failure_callback`` (it fires once the
retries are spent).  It decides *at callback time* where the message goes, so
parsing a DAG never looks a connection up:

* the ``smtp_default`` connection exists -> Airflow's `SmtpNotifier`
  (apache-airflow-providers-smtp) sends it;
* no connection -> `OutboxNotifier` writes it to ``<PIPELINES_HOME>/outbox``
  (the same folder `pipelines.notify.alerts` uses) and logs where.

Callbacks are task-level on purpose: a DAG-level `SmtpNotifier` fails under
``dag.test()`` (docs/airflow.md).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier

from pipelines.orchestration.tasks import DataQualityFailure, run_ds

log = logging.getLogger(__name__)
SMTP_CONN_ID = "smtp_default"
OUTBOX_SENDER = "nightly-retrain@localhost"


def connection_exists(conn_id: str) -> bool:
    """Whether Airflow resolves ``conn_id`` (env var, secrets backend or DB); call at run time only."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        Connection.get(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def failure_message(vertical: str, context: dict[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body: what failed, the error, and how to rerun."""
    ti = context["ti"]
    ds = run_ds(context)
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}" if exc is not None else "(no exception recorded; see the task log)"
    subject = f"[retrain failed] {vertical} {ds}: task {ti.task_id}"
    lines = [
        f"The nightly retraining of vertical '{vertical}' failed for {ds}, the UTC day it processes "
        f"(logical date {ds}; data interval {ds} 00:00 UTC to the next day 00:00 UTC).",
        "",
        f"DAG run:  {ti.dag_id} / {context.get('run_id')}",
        f"Task:     {ti.task_id} (try {ti.try_number}; retries are exhausted)",
        f"Error:    {error}",
        f"Log:      {_log_url(ti)}",
        "",
        _production_line(vertical, ds, ti.task_id),
        "",
        "To rerun once the cause is fixed:",
        f"  - clear task '{ti.task_id}' (with downstream) of this run in the Airflow UI, or",
        f"  - airflow tasks clear {ti.dag_id} -t '^{ti.task_id}$' -d -s {ds} -e {ds} --yes",
        f"  - python -m pipelines run {vertical} --date {ds}   (the same stages, without Airflow)",
    ]
    return subject, "\n".join(lines)


def _production_line(vertical: str, ds: str, task_id: str) -> str:
    """What production serves now, read at callback time (never assumed)."""
    from pipelines.config import Settings
    from pipelines.errors import PipelineError
    from pipelines.release.deploy import read_pointer

    try:
        pointer = read_pointer(Settings.from_env().bucket_url, vertical)
    except (PipelineError, OSError) as exc:
        return f"Production could not be read ({exc}); check the deployment bucket."
    if pointer is None:
        return "No model is in production for this vertical yet."
    if task_id in ("extract", "validate", "snapshot", "train", "evaluate", "gate") or pointer.get("ds") != ds:
        deployed_for = pointer.get("ds")
        return f"Production still serves {pointer['version']} (deployed for {deployed_for}); this run changed nothing."
    return f"Production serves {pointer['version']}, deployed by this run before '{task_id}' failed."


def _log_url(ti: Any) -> str:
    try:
        return str(ti.log_url)
    except AttributeError:  # not every TaskInstance flavour (dag.test, callbacks) carries one
        return "see the task's log in the Airflow UI"


class OutboxNotifier(BaseNotifier):
    """Write an email to ``<PIPELINES_HOME>/outbox`` instead of sending it."""

    def __init__(self, *, to: Sequence[str], subject: str, body: str, outbox: Path | None = None) -> None:
        super().__init__()
        self.to = list(to)
        self.subject = subject
        self.body = body
        self.outbox = outbox

    def notify(self, context: Any) -> None:
        from pipelines.config import Settings
        from pipelines.layout import write_bytes_atomic

        outbox = self.outbox or Settings.from_env().home / "outbox"
        message = EmailMessage()
        message["Subject"] = self.subject
        message["From"] = OUTBOX_SENDER
        message["To"] = ", ".join(self.to)
        message.set_content(self.body)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        slug = "".join(c if c.isalnum() else "-" for c in self.subject)[:60].strip("-")
        path = outbox / f"{stamp}-{slug}.eml"
        write_bytes_atomic(path, bytes(message))
        log.warning("no %s connection configured; failure email written to %s", SMTP_CONN_ID, path)


class FailureNotifier(BaseNotifier):
    """``on_failure_callback`` for every task of a vertical's DAG.

    Built at parse time with plain values only (the vertical and its
    recipients); the connection lookup and the sending happen in `notify`.
    """

    def __init__(self, *, vertical: str, to: Sequence[str], smtp_conn_id: str = SMTP_CONN_ID) -> None:
        super().__init__()
        self.vertical = vertical
        self.to = list(to)
        self.smtp_conn_id = smtp_conn_id

    def notify(self, context: Any) -> None:
        exc = context.get("exception")
        if isinstance(exc, DataQualityFailure):
            # validate already mailed the data-quality alert (deduplicated per vertical,
            # date and content): a second, vaguer email would only be noise.
            log.info("data-quality failure: the stage's own alert was sent; no task-failure email")
            return
        subject, body = failure_message(self.vertical, context)
        if connection_exists(self.smtp_conn_id):
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            notifier = SmtpNotifier(
                to=self.to,
                subject=subject,
                html_content=f"<pre>{html.escape(body)}</pre>",
                smtp_conn_id=self.smtp_conn_id,
            )
            # notify(), not __call__: our text is final and must not go through Jinja
            # (an error message may contain "{{").
            notifier.notify(context)
            log.info("failure email sent through %s to %s", self.smtp_conn_id, ", ".join(self.to))
        else:
            OutboxNotifier(to=self.to, subject=subject, body=body).notify(context)
