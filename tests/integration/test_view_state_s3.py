"""What the API server host shows and sends when the state lives on S3 (SeaweedFS on loopback).

The Models view and the undelivered-email queue run on a host whose
``PIPELINES_HOME`` is empty: everything they need was written to the state
store by workers (other homes), as with Celery workers and ``PIPELINES_STATE_URL``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.connections import SmtpConfig
from pipelines.models_view.overview import data_docs_root
from pipelines.notify.alerts import AlertDeliveryError, deliver, undelivered
from pipelines.state import open_state

from .conftest import S3Server
from .test_models_view import BLOCKED_DS, CHAMPION, VALIDATION_PAGE, _client, _settings, populate_registry

pytestmark = pytest.mark.slow


@pytest.fixture
def state_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix of the S3 server as ``PIPELINES_STATE_URL``, its credentials in the AWS environment."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "PIPELINES_STATE_CONN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}/state"


def _on(home: Path, state_url: str) -> Settings:
    home.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(_settings(home), state_url=state_url)


def test_view_on_an_empty_home_shows_what_a_worker_wrote_to_the_state(tmp_path: Path, state_url: str) -> None:
    worker = _on(tmp_path / "worker", state_url)
    # The worker's validate stage: data docs, a failed day's record and report, the day in quarantine.
    docs = data_docs_root(worker, "finance")
    (docs / VALIDATION_PAGE).parent.mkdir(parents=True)
    (docs / VALIDATION_PAGE).write_text("<html><body>validation result from the worker</body></html>")
    (docs / "index.html").write_text("<html><body>Data docs: finance (worker)</body></html>")
    (docs / "static" / "styles").mkdir(parents=True)
    (docs / "static" / "styles" / "site.css").write_text("body { margin: 0 } /* worker */")
    run = worker.home / "runs" / "finance" / BLOCKED_DS
    run.mkdir(parents=True)
    validate = run / "validate.json"
    validate.write_text(
        json.dumps(
            {
                "success": False,
                "summary": "finance: 1 of 23 expectations failed: expect_column_values_to_be_between(age)",
                "quarantined": [BLOCKED_DS],
                "alert": "finance-ml@example.com",
            }
        )
    )
    report = worker.home / "reports" / "finance" / BLOCKED_DS / "quality.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"success": False, "ds": BLOCKED_DS}))
    quarantined = worker.home / "data" / "finance" / "quarantine" / f"{BLOCKED_DS}.parquet"
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(b"PAR1")
    store = open_state(worker)
    assert not store.is_home
    store.push(docs.parent.parent.parent.parent, run, report.parent, quarantined)

    view = _on(tmp_path / "api-server", state_url)  # another host: nothing of the worker's home
    populate_registry(view)
    client = _client(view)
    page = client.get("/models/verticals/finance").text
    assert "Data-quality blocked days" in page and "expect_column_values_to_be_between(age)" in page
    assert f'href="/models/docs/finance/{VALIDATION_PAGE}"' in page  # the champion's date, validated on the worker
    data = client.get("/models/api/verticals/finance").json()
    assert data["blocked"][0]["still_quarantined"] == [BLOCKED_DS]
    assert data["champion_validation_page"] == VALIDATION_PAGE
    assert data["has_data_docs"] and data["links"]["data_docs"] is not None
    assert "from the worker" in client.get(f"/models/docs/finance/{VALIDATION_PAGE}").text
    assert "Data docs: finance (worker)" in client.get("/models/docs/finance/").text
    assert client.get("/models/docs/finance/runs/2026-11-28", follow_redirects=False).status_code == 307
    assert client.get("/models/docs/finance/validations/absent.html").status_code == 404
    assert "/* worker */" in client.get("/models/docs/finance/static/styles/site.css").text  # fetched on request
    assert CHAMPION in page

    # The worker reruns the day, which passes now: the partition leaves quarantine, the record says success.
    validate.write_text('{"success": true}')
    store.push(validate)
    store.remove(quarantined)
    assert "Data-quality blocked days" not in client.get("/models/verticals/finance").text


def _alert(n: int) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[pipelines] finance: data-quality alert {n}"
    message["To"] = "finance-ml@example.com"
    message.set_content(f"day {n} failed the suite")
    return message


def test_queued_emails_on_the_state_are_sent_once_by_concurrent_flushes(
    tmp_path: Path, state_url: str, smtp_server, s3_server: S3Server
) -> None:
    worker = _on(tmp_path / "worker", state_url)
    dead = SmtpConfig(host="127.0.0.1", port=9, use_ssl=False, starttls=False, timeout=2)  # nothing listens on 9
    for n in range(4):
        with pytest.raises(AlertDeliveryError, match=r"kept at s3://"):
            deliver(_alert(n), worker, dedupe_key=f"finance-2026-11-29-{n}", smtp=dead)
    # The same alert failing again (a retried task) is queued once: the object is keyed by its digest.
    with pytest.raises(AlertDeliveryError):
        deliver(_alert(0), worker, dedupe_key="finance-2026-11-29-0", smtp=dead)
    assert len(undelivered(worker)) == 4
    assert len(undelivered(_on(tmp_path / "other", state_url))) == 4  # any host sees the queue

    # Two hosts flush at once, each with its own empty home.
    env = {
        **os.environ,
        "PIPELINES_STATE_URL": state_url,
        "PIPELINES_SPECS_DIR": str(PROJECT_ROOT / "verticals"),
    }
    flushes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipelines", "alerts", "flush"],
            env={**env, "PIPELINES_HOME": str(tmp_path / f"flusher-{i}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in flushes]
    assert [p.returncode for p in flushes] == [0, 0], outputs
    counts = [int(m.group(1)) for out in outputs for m in re.finditer(r"sent (\d+) queued", out)]
    assert sum(counts) == 4, outputs
    subjects = sorted(str(m["Subject"]) for m in smtp_server.messages)
    assert subjects == [str(_alert(n)["Subject"]) for n in range(4)], outputs  # each exactly once
    assert undelivered(worker) == []
    store = open_state(worker)
    assert store.fs is not None
    store.fs.invalidate_cache()
    claims = f"{store.root}/outbox/claims"
    left = [key for key in store.fs.find(claims, withdirs=False) if key.rstrip("/") != claims]
    assert left == []  # every claim marker removed after its send (SeaweedFS may list the emptied folder)
    # Delivered: a new delivery of the same alert is recognised from the shared marker, not sent again.
    deliver(_alert(1), _on(tmp_path / "late", state_url), dedupe_key="finance-2026-11-29-1")
    assert len(smtp_server.messages) == 4
