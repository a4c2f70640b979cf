"""Alert emails: what the data-quality alert says, and delivery (real SMTP on loopback, outbox, no duplicates)."""

from __future__ import annotations

import json
from dataclasses import replace
from email.message import EmailMessage

import pandas as pd

from pipelines.config import Settings, VerticalSpec
from pipelines.data.data_docs import docs_url
from pipelines.data.quality import FailedExpectation, QualityReport, mask_pii
from pipelines.notify.alerts import SmtpConfig, configured_smtp, deliver, quality_alert
from pipelines.notify.run_context import RunContext
from pipelines.state import open_state

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
DAY1, DAY2 = "2026-11-26", "2026-11-27"
AGE = FailedExpectation(
    expectation="expect_column_values_to_be_between",
    column="x",
    expected={"min_value": 0, "max_value": 10},
    observed=None,
    unexpected_count=2,
    unexpected_percent=100 * 2 / 23,
    sample_values=[-4.0, 99.0],
    sample_keys=[{"id": 7, "x": -4.0}, {"id": 9, "x": 99.0}],
    notes="x is a percentage-like score",
    element_count=23,
)
UNIQUE = FailedExpectation(
    expectation="expect_column_values_to_be_unique",
    column="id",
    expected={},
    observed=None,
    unexpected_count=2,
    unexpected_percent=100 * 2 / 23,
    sample_values=[31, 31],
    sample_keys=[{"id": 31}, {"id": 31}],
    notes=None,
    element_count=23,
)
# Two days checked (a backfill), one of them bad: 23 rows each.
REPORT = QualityReport(
    vertical="demo",
    ds=DAY2,
    suite="demo",
    days=[DAY1, DAY2],
    rows=46,
    success=False,
    evaluated=9,
    failed=[AGE, UNIQUE],
    data_docs="https://airflow.example.com/models/docs/demo/index.html",
    data_docs_page="https://airflow.example.com/models/docs/demo/validations/demo/demo-2026-11-27/t/demo-demo.html",
    rows_per_day={DAY1: 23, DAY2: 23},
    failed_days=[DAY2],
)
AIRFLOW_RUN = RunContext(
    origin="airflow",
    dag_id="demo",
    run_id="scheduled__2026-11-27T02:00:00+00:00",
    task_id="validate",
    try_number=1,
    run_url="https://airflow.example.com/dags/demo/runs/scheduled__2026-11-27T02%3A00%3A00%2B00%3A00",
    log_url="https://airflow.example.com/dags/demo/runs/scheduled__2026-11-27T02%3A00%3A00%2B00%3A00/tasks/validate?try_number=1",
)


def samples() -> list[pd.DataFrame]:
    """Each failed expectation's own rows, PII masked (what `failing_samples` hands over)."""
    out_of_range = pd.DataFrame({"id": [7, 9], "x": [-4.0, 99.0], "name": ["Alice Smith", None]})
    duplicates = pd.DataFrame({"id": [31, 31], "x": [5.5, 6.5], "name": ["Bob <b>Jones</b>", "Carol"]})
    return [mask_pii(out_of_range, SPEC.pii), mask_pii(duplicates, SPEC.pii)]


def parts(msg: EmailMessage) -> tuple[str, str]:
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None, "the alert must be HTML with a plain-text alternative"
    return plain.get_content(), html.get_content()


def message(text: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "subject"
    msg["To"] = "owner@example.com"
    msg.set_content(text)
    return msg


def test_quality_alert_says_what_broke_and_masks_pii(settings):
    msg = quality_alert(SPEC, REPORT, samples(), settings)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = parts(msg)
    assert msg["To"] == "owner@example.com, oncall@example.com"
    assert "demo 2026-11-27" in msg["Subject"] and "2 expectation(s) failed" in msg["Subject"]
    for body in (text, html):
        assert "expect_column_values_to_be_between" in body and "expect_column_values_to_be_unique" in body
        assert "Alice" not in body and "Bob" not in body and "Carol" not in body and "***" in body
        assert "x is a percentage-like score" in body
    assert "expect_column_values_to_be_between on x" in text
    assert 'expected: {"max_value": 10, "min_value": 0}' in text
    # A check without arguments is said in words, never "expected: {}".
    assert "expected: {}" not in text and "expected: id: column values to be unique" in text


def test_quality_alert_states_each_day_checked_with_its_rows(settings):
    text, html = parts(quality_alert(SPEC, REPORT, samples(), settings))
    assert "Rows checked: 46 over 2 day(s); 1 day(s) quarantined" in text
    day_lines = [line.split() for line in text.splitlines() if line.strip().startswith(("2026-11-26", "2026-11-27"))]
    assert [(d[0], d[1], d[3]) for d in day_lines] == [(DAY1, "23", "passed,"), (DAY2, "23", "FAILED,")]
    assert str(settings.home / "data" / "demo" / "validated" / f"{DAY1}.parquet") in text
    assert str(settings.home / "data" / "demo" / "quarantine" / f"{DAY2}.parquet") in text
    # Percentages are of the rows the expectation checked, and say so.
    assert "2 of 23 rows checked unexpected (8.70%)" in text
    assert "2 of 23 rows checked unexpected (8.70%)" in html
    assert html.count("failed, quarantined") == 1 and html.count("passed, validated") == 1
    assert f'<td style="padding:4px 10px;border-bottom:1px solid #eef0f3;">{DAY1}</td>' in html


def test_every_failing_expectation_shows_its_own_sample_rows(settings):
    text, html = parts(quality_alert(SPEC, REPORT, samples(), settings))
    first, second = text.split("2. expect_column_values_to_be_unique")
    assert "-4.0" in first and "99.0" in first and "31" not in first.split("1. expect_column")[1]
    assert "31" in second and "5.5" in second and "6.5" in second
    # The HTML part lists the second check's rows too, escaped, as cells.
    assert '<td style="padding:3px 8px;border:1px solid #d9dde3;">6.5</td>' in html
    assert "<b>" not in html


def test_airflow_run_links_its_run_log_and_data_docs_and_says_clear_the_task(settings):
    text, html = parts(quality_alert(SPEC, REPORT, samples(), settings, AIRFLOW_RUN))
    for body in (text, html):
        assert AIRFLOW_RUN.run_url in body and AIRFLOW_RUN.log_url.replace("&", "&amp;") in body.replace("&", "&amp;")
        assert REPORT.data_docs_page in body and REPORT.data_docs in body
        assert "file://" not in body
        assert "python -m pipelines run" not in body  # there is no CLI run to repeat
    assert f'href="{AIRFLOW_RUN.run_url}"' in html and f'href="{AIRFLOW_RUN.log_url}"' in html
    assert f'href="{REPORT.data_docs_page}"' in html
    assert "clear the 'validate' task (with downstream) of this run in the Airflow UI" in text
    assert "airflow tasks clear demo -t '^validate$' -d -s 2026-11-27 -e 2026-11-27 --yes" in text
    assert "Airflow run: demo / scheduled__2026-11-27T02:00:00+00:00 (task validate, try 1)" in text


def test_cli_run_gets_the_cli_rerun_hint_and_no_airflow_links(settings):
    text, html = parts(quality_alert(SPEC, REPORT, samples(), settings))
    for body in (text, html):
        assert "python -m pipelines run demo --date 2026-11-27" in body
        assert "Airflow UI" not in body and "Task log" not in body
    assert "Started from the command line (no Airflow run)." in text


def test_data_docs_links_use_the_configured_public_url(settings, monkeypatch):
    monkeypatch.setenv("PIPELINES_PUBLIC_URL", "https://ml.example.org/airflow")
    assert Settings.from_env().public_url == "https://ml.example.org/airflow"
    configured = Settings.from_env()
    url = docs_url(configured, "demo", "validations/demo/demo-2026-11-27/t/demo-demo.html")
    assert url == "https://ml.example.org/airflow/models/docs/demo/validations/demo/demo-2026-11-27/t/demo-demo.html"
    monkeypatch.delenv("PIPELINES_PUBLIC_URL")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.corp:8443")
    assert Settings.from_env().public_url == "https://airflow.corp:8443"  # Airflow's own base URL otherwise


def test_html_alert_is_delivered_through_a_real_smtp_server_once(settings, smtp_server):
    deliver(quality_alert(SPEC, REPORT, samples(), settings, AIRFLOW_RUN), settings, dedupe_key="demo-q")
    retry = replace(AIRFLOW_RUN, try_number=2, log_url=AIRFLOW_RUN.log_url.replace("=1", "=2"))
    deliver(quality_alert(SPEC, REPORT, samples(), settings, retry), settings, dedupe_key="demo-q")
    [received] = smtp_server.messages  # the same failure, retried, is not mailed twice
    text, html = parts(received)
    assert "expect_column_values_to_be_unique" in text and AIRFLOW_RUN.log_url in text
    assert html.lstrip().startswith("<!DOCTYPE html>") and "***" in html


def test_quality_json_is_strict_json():
    nan_failure = replace(AGE, observed=float("nan"), unexpected_percent=float("nan"), sample_values=[float("inf")])
    text = replace(REPORT, failed=[nan_failure]).to_json()

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in quality.json")

    loaded = json.loads(text, parse_constant=refuse)
    assert loaded["failed"][0]["observed"] is None and loaded["failed"][0]["sample_values"] == [None]
    assert loaded["rows_per_day"] == {DAY1: 23, DAY2: 23} and loaded["failed_days"] == [DAY2]


def test_without_smtp_mail_goes_to_the_outbox(settings):
    where = deliver(message(), settings)
    assert where.startswith(str(settings.home / "outbox"))
    assert "Subject: subject" in open_state(settings).local(where).read_text()


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
    config = configured_smtp()
    assert config == SmtpConfig(
        host="relay", port=465, login="u", password="p", use_ssl=True, starttls=False, sender="ml@corp"
    )


def test_smtp_connection_defaults_follow_airflow_ssl_on(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", '{"conn_type": "smtp", "host": "relay", "port": 465}')
    config = configured_smtp()
    assert config is not None and config.use_ssl and config.starttls


def test_smtp_uri_form_means_what_the_json_form_means(monkeypatch):
    """The same relay in both forms: same host, credentials, TLS and sender (the provider's reading)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        '{"conn_type": "smtp", "host": "relay", "port": 2525, "login": "u@x", "password": "p/w",'
        ' "extra": {"disable_ssl": true, "disable_tls": true, "from_email": "ml@corp"}}',
    )
    from_json = configured_smtp()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        "smtp://u%40x:p%2Fw@relay:2525?disable_ssl=true&disable_tls=true&from_email=ml%40corp",
    )
    assert configured_smtp() == from_json
    assert from_json is not None and not from_json.use_ssl and not from_json.starttls


def test_a_year_long_backfill_lists_the_bad_day_and_sums_up_the_rest(settings):
    days = [f"2026-{m:02d}-{d:02d}" for m in (1, 2, 3) for d in range(1, 29)]  # 84 days
    year = replace(REPORT, days=days, rows=84 * 10, rows_per_day=dict.fromkeys(days, 10), failed_days=["2026-01-15"])
    text, html = parts(quality_alert(SPEC, year, samples(), settings))
    assert "Rows checked: 840 over 84 day(s); 1 day(s) quarantined" in text
    assert "2026-01-15       10 rows  FAILED, quarantined" in text
    assert "2026-01-01 .. 2026-02-25: 52 more day(s), 520 rows, all passed, validated" in text
    assert text.count("passed, validated  ") == 31  # the last month, day by day
    assert "(52 days)" in html


# -- warnings (GX severity warning/info) and drift against the champion's data -------------------------


def test_a_warning_only_report_mails_a_warning_that_says_the_run_continues(settings):
    warned = replace(AGE, severity="warning")
    report = replace(REPORT, success=True, failed=[], failed_days=[], warnings=[warned])
    msg = quality_alert(SPEC, report, [], settings)
    text, html = parts(msg)
    assert msg["Subject"] == "[data quality warning] demo 2026-11-27: 1 expectation(s) warned; the run continues"
    for body in (text, html):
        assert "the run continues" in body and "expect_column_values_to_be_between" in body
        assert "Training was stopped" not in body and "quarantined" not in body.replace("0 day(s) quarantined", "")
    assert "W1. expect_column_values_to_be_between on x (warning)" in text
    assert "Failed expectations:" not in text and "Nothing to rerun" in text


def test_a_blocking_alert_lists_the_warnings_beside_the_failures(settings):
    report = replace(REPORT, warnings=[replace(UNIQUE, severity="info", column="name")])
    text, _ = parts(quality_alert(SPEC, report, samples(), settings))
    assert "Failed expectations:" in text and "Warnings (severity warning/info" in text
    assert "W1. expect_column_values_to_be_unique on name (info)" in text


def test_drift_alert_blocking_and_warning(settings):
    import numpy as np

    from pipelines.data.drift import compare_to_champion
    from pipelines.notify.alerts import drift_alert

    spec = VerticalSpec.model_validate(
        {**SPEC.model_dump(), "pii": [], "quality": {"drift": {"recent_days": 5, "min_rows": 50}}}
    )
    rng = np.random.default_rng(0)
    days = [f"2026-11-{d:02d}" for d in range(13, 28)]
    reference = pd.DataFrame({"x": rng.normal(0, 1, 1500), "event_date": np.repeat(days, 100)})
    shifted = reference.assign(x=np.where(reference["event_date"] >= "2026-11-23", reference["x"] + 2, reference["x"]))
    report = compare_to_champion(
        reference, shifted, spec, ds=DAY2, champion_version="mv-1", reference_data_version="dv-1"
    )
    msg = drift_alert(spec, report, settings)
    text, html = parts(msg)
    assert msg["Subject"] == "[data drift] demo 2026-11-27: 1 feature(s) beyond the block threshold"
    assert "Nothing was snapshotted or trained" in text and "champion mv-1, trained on data version dv-1" in text
    assert "BLOCK" in text and "python -m pipelines run demo --date 2026-11-27" in text
    assert "Data drift stopped the run" in html
    calm = compare_to_champion(
        reference,
        reference,
        spec.model_copy(update={}),
        ds=DAY2,
        champion_version="mv-1",
        reference_data_version="dv-1",
    )
    assert not calm.blocking and not calm.warnings


def test_queue_in_a_shared_state_is_flushed_once_by_racing_hosts(tmp_path, smtp_server):
    """Six hosts (own homes, one shared state folder standing in for S3) flush the same queue at once."""
    import threading

    from pipelines.notify.alerts import AlertDeliveryError, flush_undelivered, undelivered

    from ..conftest import make_settings

    shared = tmp_path / "shared-state"
    shared.mkdir()

    def host(name: str) -> Settings:
        (tmp_path / name).mkdir()
        return replace(make_settings(tmp_path / name), state_url=shared.as_uri())

    worker = host("worker")
    dead = SmtpConfig(host="127.0.0.1", port=9, use_ssl=False, starttls=False, timeout=2)
    for n in range(5):
        message = EmailMessage()
        message["Subject"], message["To"] = f"alert {n}", "owner@example.com"
        message.set_content(f"day {n} failed")
        try:
            deliver(message, worker, dedupe_key=f"finance-{n}", smtp=dead)
        except AlertDeliveryError:
            pass
        else:
            raise AssertionError("a refused email must raise")
    assert len(undelivered(worker)) == 5
    assert sorted(p.name for p in (shared / "outbox" / "undelivered").iterdir())[0].startswith("finance-0-")
    hosts = [host(f"flusher-{i}") for i in range(6)]
    start = threading.Barrier(len(hosts))
    results: list[tuple[int, int]] = []

    def flush(settings: Settings) -> None:
        start.wait()
        results.append(flush_undelivered(settings))

    threads = [threading.Thread(target=flush, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(str(m["Subject"]) for m in smtp_server.messages) == [f"alert {n}" for n in range(5)]
    assert sum(sent for sent, _ in results) == 5 and len(results) == 6
    assert undelivered(worker) == []
    assert not [p for p in (shared / "outbox" / "claims").rglob("*") if p.is_file()]
