"""Alert delivery: a real SMTP server on loopback, the outbox fallback, no duplicates."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pandas as pd

from pipelines.alerts import SmtpConfig, deliver, quality_alert
from pipelines.config import VerticalSpec
from pipelines.quality import FailedExpectation, QualityReport, mask_pii

SPEC = VerticalSpec.model_validate(
    {
        "name": "demo",
        "description": "test vertical",
        "owner": "tests",
        "source": {"kind": "sql", "table": "t"},
        "key": "id",
        "label": {"column": "y", "positive": 1},
        "features": {"numeric": ["x"]},
        "pii": ["name"],
        "window": {"train_days": 10, "holdout_days": 3},
        "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
        "alerts": {"emails": ["owner@example.com", "oncall@example.com"]},
    }
)
REPORT = QualityReport(
    vertical="demo",
    ds="2026-11-27",
    suite="demo",
    days=["2026-11-27"],
    rows=40,
    success=False,
    evaluated=9,
    failed=[
        FailedExpectation(
            expectation="expect_column_values_to_be_between",
            column="x",
            expected={"min_value": 0, "max_value": 10},
            observed=None,
            unexpected_count=2,
            unexpected_percent=5.0,
            sample_values=[-4.0, 99.0],
            sample_keys=[{"id": 7, "x": -4.0}, {"id": 9, "x": 99.0}],
            notes="x is a percentage-like score",
        )
    ],
    data_docs="file:///tmp/docs/index.html",
)


def message(text: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "subject"
    msg["To"] = "owner@example.com"
    msg.set_content(text)
    return msg


def test_quality_alert_says_what_broke_and_masks_pii(settings):
    rows = pd.DataFrame({"id": [7, 9], "x": [-4.0, 99.0], "name": ["Alice Smith", None]})
    sample = mask_pii(rows, SPEC.pii)
    msg = quality_alert(SPEC, REPORT, sample, settings)
    body = msg.get_content()
    assert msg["To"] == "owner@example.com, oncall@example.com"
    assert "demo 2026-11-27" in msg["Subject"]
    assert "expect_column_values_to_be_between on x" in body
    assert '"max_value": 10' in body and "2 unexpected rows (5.00% of rows)" in body
    assert "Alice" not in body and "***" in body
    assert "quarantine/2026-11-27.parquet" in body
    assert "python -m pipelines run demo --date 2026-11-27" in body
    assert "file:///tmp/docs/index.html" in body


def test_without_smtp_mail_goes_to_the_outbox(settings):
    where = deliver(message(), settings)
    assert where.startswith(str(settings.home / "outbox"))
    assert "Subject: subject" in Path(where).read_text()


def test_smtp_delivery_to_a_real_server(settings, smtp_server):
    where = deliver(message("body text"), settings)
    assert where.startswith("smtp://127.0.0.1:")
    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received["From"] == "airflow@example.com"
    assert "body text" in received.get_content()


def test_same_alert_is_not_sent_twice_but_a_new_one_is(settings, smtp_server):
    deliver(message("first"), settings, dedupe_key="demo-2026-11-27-quality")
    deliver(message("first"), settings, dedupe_key="demo-2026-11-27-quality")
    assert len(smtp_server.messages) == 1
    deliver(message("different failure"), settings, dedupe_key="demo-2026-11-27-quality")
    assert len(smtp_server.messages) == 2


def test_smtp_connection_json_flags_are_read_like_airflow(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        '{"conn_type": "smtp", "host": "relay", "port": 465, "login": "u", "password": "p",'
        ' "extra": {"disable_ssl": false, "disable_tls": true, "from_email": "ml@corp"}}',
    )
    config = SmtpConfig.from_env()
    assert config == SmtpConfig(host="relay", port=465, login="u", password="p", use_ssl=True, sender="ml@corp")


def test_smtp_connection_defaults_follow_airflow_ssl_on(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", '{"conn_type": "smtp", "host": "relay", "port": 465}')
    config = SmtpConfig.from_env()
    assert config is not None and config.use_ssl and config.starttls
