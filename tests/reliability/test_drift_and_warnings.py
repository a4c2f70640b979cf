"""Drift against the champion's training data, and warn-severity expectations, through the real stages.

Manufacturing (simulated sensors, ~60 readings a day) on a short window: a
forced first model is the champion, then a normal night and a night whose
last 30 days were shifted in the warehouse.  A shift beyond the block
threshold stops the run at snapshot like a failed suite: an alert, a clear
error, nothing versioned or trained, every validated day kept.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from pipelines import stages
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.errors import DataQualityError
from pipelines.layout import Layout

pytestmark = pytest.mark.slow

VERTICAL = "manufacturing"
CHAMPION_DS = "2026-06-30"
NORMAL_DS = "2026-07-01"
SHIFTED_DS = "2026-07-31"  # 31 days on: its extract pulls the 30 shifted days it compares


def _days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _short_spec(folder: Path) -> Path:
    """The manufacturing spec on a 120-day window, quick to train; the rolling checks off (drift alone)."""
    spec = yaml.safe_load((PROJECT_ROOT / "verticals" / f"{VERTICAL}.yaml").read_text())
    spec["window"] = {"train_days": 120, "holdout_days": 20, "validation_days": 20}
    spec["model"].update(epochs=2, tuning={"enabled": False}, warm_start={"enabled": False})
    spec["quality"]["distribution"] = {"enabled": False}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{VERTICAL}.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="module")
def champion_home(tmp_path_factory: pytest.TempPathFactory, seeded_warehouse: Path):
    """A data root where a (forced) manufacturing champion trained on the window ending CHAMPION_DS is deployed."""
    root = tmp_path_factory.mktemp("drift")
    home = root / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("PIPELINES_", "AIRFLOW_CONN_")):
            del os.environ[name]
    os.environ["PIPELINES_HOME"] = str(home)
    os.environ["PIPELINES_SPECS_DIR"] = str(_short_spec(root / "specs"))
    try:
        stages.run_all(VERTICAL, CHAMPION_DS, force_reason="test: a champion to compare with")
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _shift(warehouse: Path, days: list[str]) -> None:
    """Vibration half as high again on ``days``: still inside the suite's physical range."""
    with sqlite3.connect(warehouse) as db:
        db.executemany(
            "update manufacturing_sensor_readings set vibration_mm_s = vibration_mm_s * 1.5 where event_date = ?",
            [(d,) for d in days],
        )


def test_normal_night_then_a_shifted_one_blocks_before_training(champion_home: Path, capsys):
    settings = Settings.from_env()
    layout = Layout(settings, VERTICAL)
    pointer = (champion_home / "bucket" / VERTICAL / "production.json").read_text()
    first = json.loads(layout.record_path(CHAMPION_DS, "drift").read_text())
    assert first["skipped"] == "no champion yet (first run): nothing to compare with"

    stages.extract(VERTICAL, NORMAL_DS)
    stages.validate(VERTICAL, NORMAL_DS)
    normal = stages.snapshot(VERTICAL, NORMAL_DS)
    normal_drift = json.loads(layout.record_path(NORMAL_DS, "drift").read_text())
    assert not normal_drift["blocking"] and normal_drift["max_psi"] < 0.1, normal_drift
    assert normal["id"].startswith("dv-")

    shifted_days = _days("2026-07-02", SHIFTED_DS)
    _shift(champion_home / "warehouse.db", shifted_days)
    stages.extract(VERTICAL, SHIFTED_DS)
    stages.validate(VERTICAL, SHIFTED_DS)  # every value is plausible: the suite passes
    with pytest.raises(DataQualityError) as caught:
        stages.snapshot(VERTICAL, SHIFTED_DS)

    message = str(caught.value)
    assert "vibration_mm_s PSI" in message and "Nothing was snapshotted or trained" in message
    assert "quality.drift" in message and "production is unchanged" in message
    shifted_drift = json.loads(layout.record_path(SHIFTED_DS, "drift").read_text())
    assert shifted_drift["blocking"] == ["vibration_mm_s"]
    assert not layout.has_record(SHIFTED_DS, "snapshot")  # nothing versioned, so nothing can train
    assert all(layout.validated(d).exists() for d in shifted_days)  # nothing valid lost
    assert (champion_home / "bucket" / VERTICAL / "production.json").read_text() == pointer
    [alert] = [p for p in (champion_home / "outbox").glob("*.eml") if "data-drift" in p.name]
    body = alert.read_text()
    assert "beyond the block threshold" in body and "vibration_mm_s" in body
    with capsys.disabled():  # the figures the issue asks for: `pytest ... -s` prints them
        for label, record in (("normal", normal_drift), ("shifted", shifted_drift)):
            top = sorted(record["psi"].items(), key=lambda kv: -kv[1])[:4]
            print(f"\n{label:8} {record['summary']}\n         " + ", ".join(f"{f} {v:.3f}" for f, v in top))


def test_a_warning_expectation_is_recorded_mailed_and_does_not_stop_the_run(champion_home: Path, tmp_path, monkeypatch):
    suite = json.loads((PROJECT_ROOT / "expectations" / f"{VERTICAL}.json").read_text())
    suite["expectations"].append(
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "torque_nm", "min_value": 0, "max_value": 1},
            "severity": "warning",
            "meta": {"notes": "a deliberately impossible band: the warning must fire"},
        }
    )
    (tmp_path / f"{VERTICAL}.json").write_text(json.dumps(suite))
    monkeypatch.setenv("PIPELINES_EXPECTATIONS_DIR", str(tmp_path))
    ds = "2026-08-01"

    stages.extract(VERTICAL, ds)
    record = stages.validate(VERTICAL, ds)

    assert record["success"] is True
    [warning] = record["warnings"]
    assert warning["expectation"] == "expect_column_mean_to_be_between" and warning["severity"] == "warning"
    layout = Layout(Settings.from_env(), VERTICAL)
    assert layout.validated(ds).exists() and not layout.quarantine(ds).exists()
    report = json.loads((layout.report_dir(ds) / "quality.json").read_text())
    assert report["success"] is True and report["failed"] == [] and len(report["warnings"]) == 1
    mail = Path(record["warning_alert"]).read_text()
    assert "[data quality warning]" in mail and "the run continues" in mail and "torque_nm" in mail
