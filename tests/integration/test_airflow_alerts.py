"""Alerts through Airflow: bad data, and task failures, reach the owners exactly once.

A corrupted partition must fail the run at ``validate`` without retries, mail
one data-quality alert (and nothing else), never reach training and leave the
champion alone.  Any other task failure mails a task-failure email through
the `smtp_default` relay (`pipelines.notify.alerts.deliver`); the same notifier's outbox,
when no SMTP is configured, is checked without Airflow (tests/dags/test_task_semantics.py).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest

from pipelines.config import PROJECT_ROOT

from .airflow_support import bucket_listing, pointer, record, registry_counts, run_nightly, seed_home
from .conftest import DS, airflow_nightly, airflow_nightly_specs

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VERTICAL = "healthcare"  # its spec lists PII columns, which the alert must mask
BAD_DS = "2026-11-28"  # the night after the golden first night (DS)
TASK_IDS = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")


def corrupt_day(warehouse, ds: str) -> list[str]:
    """Give two of the day's tests an impossible age; return those patients' (fake) first names."""
    with sqlite3.connect(warehouse) as db:
        rows = db.execute(
            "select test_id, fake_first_name from healthcare_covid_tests where event_date = ? order by test_id limit 2",
            (ds,),
        ).fetchall()
        assert len(rows) == 2, f"the demo warehouse has no {VERTICAL} rows on {ds}"
        db.executemany("update healthcare_covid_tests set age = 250 where test_id = ?", [(r[0],) for r in rows])
    return [r[1] for r in rows]


def test_bad_partition_fails_validate_once_mails_one_alert_and_keeps_the_champion(golden, smtp_server):
    home = airflow_nightly(golden)  # the first night (DS) ran through Airflow: a champion is deployed
    warehouse = home / "warehouse.db"
    champion = pointer(home, VERTICAL)
    assert champion is not None
    before = (bucket_listing(home), registry_counts(home))
    smtp_server.messages.clear()  # the first night's summary email is not what this test is about
    names = corrupt_day(warehouse, BAD_DS)

    result = run_nightly(home, VERTICAL, "--date", BAD_DS, specs_dir=airflow_nightly_specs(golden))

    assert result.returncode == 1
    row = result.rows[VERTICAL]
    assert row["blocked"] == "data quality"
    assert "expect_column_values_to_be_between" in row["error"] or "age" in row["error"]
    tasks = row["tasks"]
    assert tasks["extract"]["state"] == "success"
    assert tasks["validate"] == {"state": "failed", "try_number": 1}  # no retries for bad data
    assert {tasks[t]["state"] for t in TASK_IDS[2:]} == {"upstream_failed"}
    assert not (home / "runs" / VERTICAL / BAD_DS / "train.json").exists()  # training never ran
    assert "BLOCKED (data quality)" in result.stdout

    [alert] = smtp_server.messages  # exactly one email: the data-quality alert, no task-failure email
    assert alert["Subject"].startswith(f"[data quality] {VERTICAL} {BAD_DS}:")
    body = alert.get_body(("plain",)).get_content()
    html = alert.get_body(("html",)).get_content()  # the HTML part, beside its text alternative
    assert f"vertical '{VERTICAL}', logical date {BAD_DS}" in body
    assert "expect_column_values_to_be_between on age" in body
    assert '"max_value": 120' in body and "observed:" in body and "250" in body
    assert "PII columns masked: subject_id, fake_first_name, fake_last_name" in body and "***" in body
    assert not any(name and name in body for name in names)
    quarantined = home / "data" / VERTICAL / "quarantine" / f"{BAD_DS}.parquet"
    assert str(quarantined) in body and quarantined.exists()
    # An Airflow run links its run, its task log and the data docs (over HTTP), and says to clear the task.
    run_url = re.search(rf"Airflow run:  (http\S+/dags/{VERTICAL}/runs/\S+)", body)
    assert run_url, body
    base = run_url.group(1).split("/dags/")[0]
    assert re.search(rf"Task log: +{re.escape(base)}/dags/{VERTICAL}/runs/\S+/tasks/validate", body)
    docs = re.search(
        rf"Data docs \(this validation\): ({re.escape(base)}/models/docs/{VERTICAL}/validations/\S+)", body
    )
    assert docs and "file://" not in body
    assert "clear the 'validate' task (with downstream) of this run in the Airflow UI" in body
    assert "python -m pipelines run" not in body
    assert f'href="{run_url.group(1)}"' in html and "***" in html
    assert not any(name and name in html for name in names)

    assert pointer(home, VERTICAL) == champion
    assert (bucket_listing(home), registry_counts(home)) == before


BAD_PARAMS = json.dumps({"force_promotion": True, "force_reason": ""})


def test_task_failure_mails_the_owners_through_smtp_default_and_says_what_failed(settings, smtp_server):
    """A task failure through Airflow: one email through `smtp_default`, and a console that says what broke.

    Without SMTP the same notifier writes the outbox instead (tests/dags/test_task_semantics.py
    calls it both ways); one Airflow run covers the wiring, the relay and the console.
    """
    seed_home(settings.home)

    result = run_nightly(settings.home, "finance", "--date", DS, "--conf", BAD_PARAMS)

    assert result.returncode == 1
    tasks = result.rows["finance"]["tasks"]
    assert tasks["extract"] == {"state": "failed", "try_number": 1}  # contradictory params: no retry
    assert {tasks[t]["state"] for t in TASK_IDS[1:]} == {"upstream_failed"}
    [message] = smtp_server.messages
    assert message["Subject"] == f"[retrain failed] finance {DS}: task extract"
    assert message["To"] == "finance-ml@example.com"
    html = message.get_body(("html",)).get_content()
    assert "InvalidRunParams" in html and "force_reason is empty" in html
    assert f"python -m pipelines run finance --date {DS}" in html
    assert not (settings.home / "outbox").exists()
    # The console says which stage failed, why, and where the full log is; the notifier logs where the email went.
    lines = result.stderr.splitlines()
    [stage_line] = [line for line in lines if line.startswith("finance ") and "FAILED" in line]
    assert "extract FAILED" in stage_line and "validate not run" in stage_line, stage_line
    assert any(line.startswith("  ✗ extract: ") and "force_reason is empty" in line for line in lines), lines
    [log] = re.findall(r"the full log is (\S+\.log)", result.stderr)
    conn = json.loads(os.environ["AIRFLOW_CONN_SMTP_DEFAULT"])  # the smtp_server fixture's relay
    relay = f"smtp://{conn['host']}:{conn['port']}"
    assert f"went to {relay}" in (PROJECT_ROOT / log).read_text() and relay not in result.stdout
    assert len((result.stdout + result.stderr).splitlines()) < 15
    assert record(settings.home, "finance", DS, "airflow_failure")["task_id"] == "extract"
    assert result.rows["finance"]["blocked"] == "extract: InvalidRunParams"
