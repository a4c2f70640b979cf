"""Failure emails for tasks, through Airflow's own notifiers.

`FailureNotifier` is every task's ``on_failure_callback`` (it fires once the
retries are spent).  It decides *at callback time* where the message goes, so
parsing a DAG never looks a connection up:

* the ``smtp_default`` connection resolves (env var, secrets backend or the
  metadata DB, through Airflow) -> sent through that relay;
* no connection -> written to ``<PIPELINES_HOME>/outbox`` and logged.

Either way through `pipelines.notify.alerts.deliver`, the one email path of
the platform (the same SMTP client, outbox and undelivered-queue as the
data-quality alerts); only the connection lookup is Airflow's.

Callbacks are task-level on purpose: a DAG-level notifier fails under
``dag.test()`` (docs/airflow.md).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from pipelines.orchestration.tasks import DataQualityFailure, RunInterrupted, run_ds

if TYPE_CHECKING:  # alerts pulls in pandas: imported when a callback fires, never at DAG parse time
    from pipelines.connections import SmtpConfig

log = logging.getLogger(__name__)
SMTP_CONN_ID = "smtp_default"


def smtp_connection(conn_id: str) -> SmtpConfig | None:
    """The relay ``conn_id`` names, resolved by Airflow (env var, secrets backend or DB); call at run time only."""
    from pipelines import connections
    from pipelines.orchestration.connections import airflow_lookup

    conn = airflow_lookup(conn_id)
    return None if conn is None else connections.smtp_config(conn)


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
        if isinstance(exc, RunInterrupted):
            log.info("interrupted by the operator at the console: no task-failure email")
            return
        from pipelines.config import Settings
        from pipelines.notify.alerts import deliver

        subject, body = failure_message(self.vertical, context)
        message = EmailMessage()
        message["Subject"] = subject
        message["To"] = ", ".join(self.to)
        message.set_content(body)
        # Our text is final: never rendered as a template (an error message may contain "{{").
        message.add_alternative(f"<pre>{html.escape(body)}</pre>", subtype="html")
        where = deliver(message, Settings.from_env(), smtp=smtp_connection(self.smtp_conn_id))
        log.info("failure email for %s went to %s (%s)", self.vertical, where, ", ".join(self.to))
