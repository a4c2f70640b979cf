"""The bad-input catalogue: each kind of broken day is stopped before training.

For every case the source is corrupted for one day after a good run, and the
nightly stages must: raise a specific `DataQualityError` naming the failed
expectation, quarantine that day, keep every validated day, and leave the
deployed model untouched.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from pipelines import stages
from pipelines.config import Settings
from pipelines.errors import DataQualityError
from pipelines.layout import Layout

pytestmark = pytest.mark.slow

GOOD_DS = "2026-11-27"
BAD_DS = "2026-11-28"


def _sql(statement: str) -> Callable[[sqlite3.Connection], None]:
    return lambda db: db.execute(statement, {"ds": BAD_DS})


def _drop_day(db: sqlite3.Connection) -> None:
    db.execute("delete from finance_loans where event_date = :ds", {"ds": BAD_DS})


def _duplicate_day(db: sqlite3.Connection) -> None:
    # A re-delivered extract: every row of the day twice (same keys).
    db.execute("create temp table dup as select * from finance_loans where event_date = :ds", {"ds": BAD_DS})
    names = db.execute("select name from sqlite_master where type='index' and tbl_name='finance_loans'").fetchall()
    for (name,) in names:  # the warehouse's unique key index would refuse the duplicates
        db.execute(f'drop index "{name}"')
    db.execute("insert into finance_loans select * from dup")


def _drop_column(db: sqlite3.Connection) -> None:
    db.execute("alter table finance_loans drop column income")


CASES: dict[str, tuple[Callable[[sqlite3.Connection], None], set[str]]] = {
    "silent source (no rows)": (_drop_day, {"expect_table_row_count_to_be_between"}),
    "null keys": (
        _sql("update finance_loans set loan_id = null where event_date = :ds"),
        {"expect_column_values_to_not_be_null"},
    ),
    "duplicated delivery": (_duplicate_day, {"expect_column_values_to_be_unique"}),
    "out-of-range values": (
        _sql("update finance_loans set age = -3 where event_date = :ds"),
        {"expect_column_values_to_be_between"},
    ),
    "unknown category": (
        _sql("update finance_loans set job_type = 'astronaut' where event_date = :ds"),
        {"expect_column_values_to_be_in_set"},
    ),
    "unknown label value": (
        _sql("update finance_loans set status = 'maybe' where event_date = :ds"),
        {"expect_column_values_to_be_in_set"},
    ),
    "schema drift (column dropped)": (_drop_column, {"expect_table_columns_to_match_set"}),
    "inconsistent pair (loan above price)": (
        _sql("update finance_loans set loan_amount = purchase_price + 1000 where event_date = :ds"),
        {"expect_column_pair_values_a_to_be_greater_than_b"},
    ),
}


@pytest.fixture(scope="module")
def good_home(tmp_path_factory: pytest.TempPathFactory, seeded_warehouse: Path) -> Path:
    """A data root where finance ran successfully for GOOD_DS (a champion is deployed)."""
    import os

    home = tmp_path_factory.mktemp("good") / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    old = os.environ.get("PIPELINES_HOME")
    os.environ["PIPELINES_HOME"] = str(home)
    try:
        stages.run_all("finance", GOOD_DS)
    finally:
        if old is None:
            os.environ.pop("PIPELINES_HOME", None)
        else:
            os.environ["PIPELINES_HOME"] = old
    return home


@pytest.mark.parametrize("case", list(CASES))
def test_bad_day_is_quarantined_and_never_trained(case: str, good_home: Path, tmp_path: Path, monkeypatch):
    corrupt, expected_failures = CASES[case]
    home = tmp_path / "home"
    shutil.copytree(good_home, home, symlinks=True)
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    with sqlite3.connect(home / "warehouse.db") as db:
        corrupt(db)
    layout = Layout(Settings.from_env(), "finance")
    pointer = (home / "bucket" / "finance" / "production.json").read_bytes()
    validated_before = sorted(p.name for p in layout.validated(GOOD_DS).parent.iterdir())

    stages.extract("finance", BAD_DS)
    with pytest.raises(DataQualityError) as caught:
        stages.validate("finance", BAD_DS)

    report = json.loads((layout.report_dir(BAD_DS) / "quality.json").read_text())
    failed = {f["expectation"] for f in report["failed"]}
    assert expected_failures <= failed, str(caught.value)
    assert caught.value.report_path == str(layout.report_dir(BAD_DS) / "quality.json")
    assert layout.quarantine(BAD_DS).exists() and not layout.raw(BAD_DS).exists()
    assert sorted(p.name for p in layout.validated(GOOD_DS).parent.iterdir()) == validated_before
    with pytest.raises(Exception, match="validation"):
        stages.snapshot("finance", BAD_DS)  # the run cannot go on to training
    assert not layout.has_record(BAD_DS, "train")
    assert (home / "bucket" / "finance" / "production.json").read_bytes() == pointer
    assert len(list((home / "outbox").glob("*data-quality*"))) == 1


def test_one_bad_day_in_a_first_backfill_quarantines_only_that_day(tmp_path, seeded_warehouse, monkeypatch):
    """The first run validates a year at once; a single bad day must not cost the other 364."""
    home = tmp_path / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    bad_day = "2026-06-01"
    with sqlite3.connect(home / "warehouse.db") as db:
        db.execute("update finance_loans set age = -3 where event_date = ?", (bad_day,))

    stages.extract("finance", GOOD_DS)
    with pytest.raises(DataQualityError, match="Quarantined 1 of 365 day"):
        stages.validate("finance", GOOD_DS)

    layout = Layout(Settings.from_env(), "finance")
    assert layout.quarantine(bad_day).exists() and not layout.validated(bad_day).exists()
    assert len(list(layout.validated(GOOD_DS).parent.glob("*.parquet"))) == 364
    mail = message_from_bytes(next((home / "outbox").glob("*data-quality*")).read_bytes(), policy=policy.default)
    body = mail.get_body(("plain",)).get_content()
    assert "Rows checked:" in body and "365 day(s); 1 day(s) quarantined" in body
    assert f"quarantine/{bad_day}.parquet" in body and f"quarantine/{GOOD_DS}.parquet" not in body

    # The next run does not pull the quarantined day again and trains on the rest of the window.
    stages.extract("finance", GOOD_DS)
    assert stages.validate("finance", GOOD_DS)["success"]
    assert stages.snapshot("finance", GOOD_DS)["missing_days"] == 1


def test_an_undeliverable_alert_still_stops_the_run_as_bad_data(good_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(good_home, home, symlinks=True)
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {"disable_ssl": True, "disable_tls": True},
            }
        ),
    )
    with sqlite3.connect(home / "warehouse.db") as db:
        db.execute("update finance_loans set age = -3 where event_date = ?", (BAD_DS,))

    stages.extract("finance", BAD_DS)
    with pytest.raises(DataQualityError, match="alert: NOT SENT"):
        stages.validate("finance", BAD_DS)
    # A retry of the task reports the same data-quality failure, not a confusing source error.
    with pytest.raises(DataQualityError):
        stages.validate("finance", BAD_DS)
