"""The bad-input catalogue: each kind of broken day is stopped before training.

For every case the source is corrupted for one day after a good run, and the
nightly stages must: raise a specific error naming the vertical, the date and
the cause, quarantine that day (when it has data) without deleting it, send
exactly one data-quality alert, keep every validated day byte for byte, and
leave the deployed model untouched.  docs/bad-input.md lists what happens for
each kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines import stages
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.errors import DataQualityError, PipelineError, SourceError
from pipelines.layout import Layout

from ..conftest import short_window_specs

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


def _rename_column(db: sqlite3.Connection) -> None:
    db.execute("alter table finance_loans rename column income to monthly_income")


def _extra_column(db: sqlite3.Connection) -> None:
    db.execute("alter table finance_loans add column promo_code text")
    db.execute("update finance_loans set promo_code = 'WINTER' || (loan_id % 3)")


def _leaked_label(db: sqlite3.Connection) -> None:
    # Upstream joins the maintenance log in: the outcome arrives with the reading.
    db.execute("alter table manufacturing_sensor_readings add column repair_ticket integer")
    db.execute(
        "update manufacturing_sensor_readings set repair_ticket = case machine_failure when 'failure' then 1 else 0 end"
    )


def _missing_table(db: sqlite3.Connection) -> None:
    db.execute("alter table finance_loans rename to finance_loans_v2")


@dataclass(frozen=True)
class Case:
    """One kind of bad input: how to break BAD_DS, and how the run must stop."""

    corrupt: Callable[[Path], None]
    #: Expectations (or checks beyond the suite) the quality report must name as failed.
    failed: set[str] = field(default_factory=set)
    #: Words the error message must contain (besides vertical and date): the cause.
    cause: tuple[str, ...] = ()
    vertical: str = "finance"
    #: The stage that stops the run, and with which error.
    stage: str = "validate"
    error: type[PipelineError] = DataQualityError
    #: A file source instead of the warehouse table: "csv" or "parquet".
    file_format: str | None = None


def _db(change: Callable[[sqlite3.Connection], None]) -> Callable[[Path], None]:
    def corrupt(home: Path) -> None:
        with sqlite3.connect(home / "warehouse.db") as db:
            change(db)

    return corrupt


def _day_rows(home: Path, table: str = "finance_loans", ds: str = BAD_DS) -> pd.DataFrame:
    with sqlite3.connect(home / "warehouse.db") as db:
        return pd.read_sql("select * from " + table + " where event_date = ?", db, params=(ds,))


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _file(make: Callable[[Path], bytes]) -> Callable[[Path], None]:
    """Deliver BAD_DS as a file under <home>/drop (the spec's file source reads it)."""

    def corrupt(home: Path) -> None:
        data = make(home)
        (home / "drop").mkdir(exist_ok=True)
        suffix = "parquet" if data[:4] == b"PAR1" else "csv"
        (home / "drop" / f"{BAD_DS}.{suffix}").write_bytes(data)

    return corrupt


def _undecodable_csv(home: Path) -> bytes:
    data = _csv(_day_rows(home))
    return data.replace(b"owner", b"own\xff\xfer", 1).replace(b"rent", b"r\xe9nt\xff", 1) + b"\xc3\x28\n"


def _truncated_csv(home: Path) -> bytes:
    data = _csv(_day_rows(home))
    return data[: len(data) - 17]  # cut inside the last row


def _truncated_parquet(home: Path) -> bytes:
    data = _parquet(_day_rows(home))
    return data[: len(data) // 2]


def _rows_of_another_day(home: Path) -> bytes:
    # The file for BAD_DS also carries two applications dated a week earlier.
    stray = _day_rows(home, ds="2026-11-21").head(2).assign(loan_id=lambda f: f["loan_id"] + 900_000)
    return _csv(pd.concat([_day_rows(home), stray], ignore_index=True))


def _unparseable_date(home: Path) -> bytes:
    rows = _day_rows(home)
    rows["event_date"] = rows["event_date"].astype(object)
    rows.loc[0, "event_date"] = "28/11/2026 (approx)"
    return _csv(rows)


def _manufacturing(statement: str) -> Callable[[Path], None]:
    return _db(lambda db: db.execute(statement, {"ds": BAD_DS}))


CASES: dict[str, Case] = {
    "silent source (no rows)": Case(_db(_drop_day), {"expect_table_row_count_to_be_between"}),
    "null keys": Case(
        _db(_sql("update finance_loans set loan_id = null where event_date = :ds")),
        {"expect_column_values_to_not_be_null"},
    ),
    "duplicated delivery": Case(_db(_duplicate_day), {"expect_column_values_to_be_unique"}),
    "out-of-range values": Case(
        _db(_sql("update finance_loans set age = -3 where event_date = :ds")),
        {"expect_column_values_to_be_between"},
    ),
    "unknown category": Case(
        _db(_sql("update finance_loans set job_type = 'astronaut' where event_date = :ds")),
        {"expect_column_values_to_be_in_set"},
    ),
    "unknown label value": Case(
        _db(_sql("update finance_loans set status = 'maybe' where event_date = :ds")),
        {"expect_column_values_to_be_in_set"},
    ),
    "schema drift (column dropped)": Case(_db(_drop_column), {"expect_table_columns_to_match_set"}),
    "inconsistent pair (loan above price)": Case(
        _db(_sql("update finance_loans set loan_amount = purchase_price + 1000 where event_date = :ds")),
        {"expect_column_pair_values_a_to_be_greater_than_b"},
    ),
    "renamed column": Case(
        _db(_rename_column),
        {"expect_table_columns_to_match_set", "expect_table_columns_to_be_declared"},
        ("expect_table_columns_to_be_declared(monthly_income)",),
    ),
    "extra column": Case(
        _db(_extra_column),
        {"expect_table_columns_to_be_declared"},
        ("expect_table_columns_to_be_declared(promo_code)",),
    ),
    "type change (numbers as text)": Case(
        _db(_sql("update finance_loans set age = 'age ' || age where event_date = :ds")),
        {"expect_column_values_to_be_numeric"},
        ("expect_column_values_to_be_numeric(age)",),
    ),
    "leaked label column": Case(
        _db(_leaked_label),
        {"expect_table_columns_to_be_declared", "expect_column_to_not_determine_the_label"},
        ("expect_column_to_not_determine_the_label(repair_ticket)",),
        vertical="manufacturing",
    ),
    "unit change at normal volume (expenses x10)": Case(
        _db(_sql("update finance_loans set expenses = expenses * 10 where event_date = :ds")),
        {"expect_column_mean_to_match_reference"},
        ("expect_column_mean_to_match_reference(expenses)",),
    ),
    "label-mix flip (every label positive)": Case(
        _manufacturing("update manufacturing_sensor_readings set machine_failure = 'failure' where event_date = :ds"),
        {"expect_label_share_to_match_reference"},
        ("expect_label_share_to_match_reference(machine_failure)",),
        vertical="manufacturing",
    ),
    "distribution shift at normal volume (sensor gain x3)": Case(
        _manufacturing(
            "update manufacturing_sensor_readings set vibration_mm_s = vibration_mm_s * 3 where event_date = :ds"
        ),
        {"expect_column_mean_to_match_reference"},
        ("expect_column_mean_to_match_reference(vibration_mm_s)",),
        vertical="manufacturing",
    ),
    "category mix shift (one machine type only)": Case(
        _manufacturing("update manufacturing_sensor_readings set machine_type = 'H' where event_date = :ds"),
        {"expect_column_category_shares_to_match_reference"},
        ("expect_column_category_shares_to_match_reference(machine_type)",),
        vertical="manufacturing",
    ),
    "source table does not exist": Case(
        _db(_missing_table), cause=("no such table: finance_loans",), stage="extract", error=SourceError
    ),
    "undecodable bytes in a CSV file": Case(
        _file(_undecodable_csv), {"expect_file_to_be_readable"}, ("not valid csv", "utf-8"), stage="extract",
        file_format="csv",
    ),
    "truncated CSV file": Case(
        _file(_truncated_csv), {"expect_file_to_be_readable"}, ("truncated",), stage="extract", file_format="csv"
    ),
    "truncated Parquet file": Case(
        _file(_truncated_parquet), {"expect_file_to_be_readable"}, ("not valid parquet",), stage="extract",
        file_format="parquet",
    ),
    "timestamps outside the interval": Case(
        _file(_rows_of_another_day),
        {"expect_column_values_to_be_in_set"},
        ("expect_column_values_to_be_in_set(event_date)",),
        file_format="csv",
    ),
    "unparseable event time": Case(
        _file(_unparseable_date),
        {"expect_column_values_to_not_be_null"},
        ("expect_column_values_to_not_be_null(event_date)",),
        file_format="csv",
    ),
}  # fmt: skip


def _two_trial_specs(folder: Path) -> Path:
    """The repo's specs with finance sweeping 2 trials instead of 12 (same window, suite, gate)."""
    tuning = yaml.safe_load((PROJECT_ROOT / "verticals" / "finance.yaml").read_text())["model"]["tuning"]
    return short_window_specs(folder, "finance", model={"tuning": {**tuning, "trials": 2}})


@pytest.fixture(scope="module")
def good_home(tmp_path_factory: pytest.TempPathFactory, seeded_warehouse: Path) -> Path:
    """A data root where finance ran successfully for GOOD_DS (a champion is deployed).

    Manufacturing's window is extracted and validated too (no model): its
    ~60 readings a day are what a label-mix or distribution test needs to be
    meaningful on a single day.  Finance's first run sweeps 2 trials instead of
    12 (`_two_trial_specs`, kept at ``<good_home>/../specs``): the catalogue is
    about what stops a bad day, and needs a deployed champion, not a tuned one.
    The full year of validated days (the reference the distribution checks
    compare with) is the repo spec's.
    """
    home = tmp_path_factory.mktemp("good") / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINES_HOME", str(home))
        mp.setenv("PIPELINES_SPECS_DIR", str(_two_trial_specs(home.parent / "specs")))
        mp.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
        stages.run_all("finance", GOOD_DS)
        stages.extract("manufacturing", GOOD_DS)
        stages.validate("manufacturing", GOOD_DS)
    return home


def _use(good_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of ``good_home``; the environment points at it and at its specs."""
    home = tmp_path / "home"
    shutil.copytree(good_home, home, symlinks=True)
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(good_home.parent / "specs"))
    return home


def _file_source_specs(home: Path, file_format: str, specs: Path) -> Path:
    """``specs``' finance spec, reading one file per day from <home>/drop instead of the warehouse."""
    raw = yaml.safe_load((specs / "finance.yaml").read_text())
    raw["source"] = {"kind": "files", "url": f"file://{home}/drop/{{ds}}.{file_format}", "format": file_format}
    folder = home / "specs"
    folder.mkdir()
    (folder / "finance.yaml").write_text(yaml.safe_dump(raw))
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_day_is_quarantined_and_never_trained(name: str, good_home: Path, tmp_path: Path, monkeypatch):
    case = CASES[name]
    home = _use(good_home, tmp_path, monkeypatch)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    if case.file_format:
        specs = _file_source_specs(home, case.file_format, good_home.parent / "specs")
        monkeypatch.setenv("PIPELINES_SPECS_DIR", str(specs))
    case.corrupt(home)
    layout = Layout(Settings.from_env(), case.vertical)
    pointers = {p: p.read_bytes() for p in (home / "bucket").glob("*/production.json")}
    assert pointers, "the good run deployed a champion"
    validated = {
        v: _digests(Layout(Settings.from_env(), v).validated(GOOD_DS).parent) for v in ("finance", "manufacturing")
    }

    with pytest.raises(case.error) as caught:
        stages.extract(case.vertical, BAD_DS)
        stages.validate(case.vertical, BAD_DS)

    message = str(caught.value)
    assert f"[{case.vertical}, {BAD_DS}]" in message  # names vertical and date
    for word in case.cause:
        assert word in message, message
    alerts = list((home / "outbox").glob("*data-quality*")) if (home / "outbox").exists() else []
    if case.error is DataQualityError:
        report = json.loads((layout.report_dir(BAD_DS) / "quality.json").read_text())
        failed = {f["expectation"] for f in report["failed"]}
        assert case.failed <= failed, message
        assert caught.value.report_path == str(layout.report_dir(BAD_DS) / "quality.json")
        # Quarantined, not deleted: the day's rows (or the undecodable file's bytes) are kept for triage.
        kept = sorted(layout.quarantine(BAD_DS).parent.glob(f"{BAD_DS}.*"))
        assert kept, "nothing was quarantined"
        if case.file_format and case.stage == "extract":
            assert kept[0].read_bytes() == (home / "drop" / kept[0].name).read_bytes()
        assert len(alerts) == 1
        assert f"{case.vertical} {BAD_DS}" in alerts[0].read_text()
    else:
        # No data to quarantine; no data-quality alert from the stage: the task fails (retried),
        # and Airflow's failure notifier mails the owners once the retries are spent.
        assert not layout.quarantine(BAD_DS).parent.exists() or not list(
            layout.quarantine(BAD_DS).parent.glob(f"{BAD_DS}.*")
        )
        assert alerts == []
    assert not layout.raw(BAD_DS).exists() and not layout.validated(BAD_DS).exists()
    for vertical, before in validated.items():
        assert _digests(Layout(Settings.from_env(), vertical).validated(GOOD_DS).parent) == before
    with pytest.raises(PipelineError):
        stages.snapshot(case.vertical, BAD_DS)  # the run cannot go on to training
    assert not layout.has_record(BAD_DS, "train")
    assert {p: p.read_bytes() for p in (home / "bucket").glob("*/production.json")} == pointers


def test_the_catalogue_covers_at_least_twenty_kinds():
    assert len(CASES) >= 20


def test_one_bad_day_in_a_first_backfill_quarantines_only_that_day(tmp_path, seeded_warehouse, monkeypatch):
    """The first run validates its whole window at once; a single bad day must not cost the other 59.

    A 60-day window (the year's logic, a sixth of its per-day re-checks): each day of a
    failed backfill is re-validated on its own, which is what this test is about.
    """
    home = tmp_path / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    specs = short_window_specs(
        tmp_path / "specs", "finance", window={"train_days": 60, "holdout_days": 20, "validation_days": 15}
    )
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(specs))
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    bad_day = "2026-10-15"
    with sqlite3.connect(home / "warehouse.db") as db:
        db.execute("update finance_loans set age = -3 where event_date = ?", (bad_day,))

    stages.extract("finance", GOOD_DS)
    with pytest.raises(DataQualityError, match="Quarantined 1 of 60 day"):
        stages.validate("finance", GOOD_DS)

    layout = Layout(Settings.from_env(), "finance")
    assert layout.quarantine(bad_day).exists() and not layout.validated(bad_day).exists()
    assert len(list(layout.validated(GOOD_DS).parent.glob("*.parquet"))) == 59
    # The good days' profiles (the next night's reference: finance reaches back 97 days) were stored
    # from the frame in memory, each as the next night would compute it from its partition.
    from pipelines.config import load_spec
    from pipelines.data.profiles import stored_profile

    profiles = home / "data" / "finance" / "profiles"
    good_days = sorted(p.stem for p in layout.validated(GOOD_DS).parent.glob("*.parquet"))
    assert sorted(p.stem for p in profiles.glob("*.json")) == good_days
    spec = load_spec("finance")
    for day in good_days[-3:] + good_days[:1]:
        kept = (profiles / f"{day}.json").read_text()
        (profiles / f"{day}.json").unlink()
        stored_profile(layout.validated(day), profiles / f"{day}.json", spec, day)
        assert json.loads((profiles / f"{day}.json").read_text()) == json.loads(kept), day
    mail = message_from_bytes(next((home / "outbox").glob("*data-quality*")).read_bytes(), policy=policy.default)
    body = mail.get_body(("plain",)).get_content()
    assert "Rows checked:" in body and "60 day(s); 1 day(s) quarantined" in body
    assert f"quarantine/{bad_day}.parquet" in body and f"quarantine/{GOOD_DS}.parquet" not in body

    # The next run does not pull the quarantined day again and trains on the rest of the window.
    stages.extract("finance", GOOD_DS)
    assert stages.validate("finance", GOOD_DS)["success"]
    assert stages.snapshot("finance", GOOD_DS)["missing_days"] == 1


def test_an_undeliverable_alert_still_stops_the_run_as_bad_data(good_home, tmp_path, monkeypatch):
    home = _use(good_home, tmp_path, monkeypatch)
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
