"""The experiment profile (``dvc repro`` / ``dvc exp run``): chosen by configuration, never production's state."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.errors import SpecError
from pipelines.experiment import seed_if_missing
from pipelines.notify import alerts

PRODUCTION_ENV = {
    "PIPELINES_REGISTRY_URL": "postgresql+psycopg://airflow@prod-db:5432/registry",
    "PIPELINES_BUCKET_URL": "s3://prod-models",
    "PIPELINES_DVC_REMOTE": "s3://prod-dvc/remote",
}


@pytest.fixture
def production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A production environment: its own data root and production URLs in the environment."""
    home = tmp_path / "prod"
    home.mkdir()
    for name in [n for n in os.environ if n.startswith(("PIPELINES_", "AIRFLOW_CONN_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    return home


def test_experiment_profile_uses_none_of_productions_stores(production: Path, monkeypatch: pytest.MonkeyPatch):
    assert Settings.from_env().registry_url == PRODUCTION_ENV["PIPELINES_REGISTRY_URL"]
    monkeypatch.setenv("PIPELINES_PROFILE", "experiment")
    settings = Settings.from_env()

    home = production / "experiments"
    assert settings.profile == "experiment" and settings.home == home
    assert settings.registry_url == f"sqlite:///{home / 'registry.db'}"
    assert settings.bucket_url == (home / "bucket").as_uri()
    assert settings.dvc_remote == str(home / "dvc-remote")
    assert not settings.sends_email
    assert str(production / "warehouse.db") in settings.warehouse_url and "mode=ro" in settings.warehouse_url


def test_experiment_stores_are_configurable_but_never_productions(production: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIPELINES_EXPERIMENT_HOME", str(production.parent / "exp"))
    monkeypatch.setenv("PIPELINES_EXPERIMENT_REGISTRY_URL", "postgresql+psycopg://airflow@prod-db:5432/experiments")
    settings = Settings.from_env(profile="experiment")
    assert settings.home == production.parent / "exp"
    assert settings.registry_url.endswith("/experiments")

    monkeypatch.setenv("PIPELINES_EXPERIMENT_REGISTRY_URL", PRODUCTION_ENV["PIPELINES_REGISTRY_URL"])
    monkeypatch.setenv("PIPELINES_EXPERIMENT_BUCKET_URL", PRODUCTION_ENV["PIPELINES_BUCKET_URL"])
    with pytest.raises(SpecError, match=r"PIPELINES_EXPERIMENT_REGISTRY_URL.*PIPELINES_EXPERIMENT_BUCKET_URL"):
        Settings.from_env(profile="experiment")


def test_unknown_profile_is_refused(production: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIPELINES_PROFILE", "staging")
    with pytest.raises(SpecError, match="unknown PIPELINES_PROFILE 'staging'"):
        Settings.from_env()


def test_experiment_reads_the_warehouse_but_cannot_write_it(production: Path):
    warehouse = production / "warehouse.db"
    with sqlite3.connect(warehouse) as db:
        db.execute("create table finance_loans (loan_id integer)")
        db.execute("insert into finance_loans values (1)")
    before = warehouse.read_bytes()
    engine = sa.create_engine(Settings.from_env(profile="experiment").warehouse_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from finance_loans")).scalar() == 1
            with pytest.raises(sa.exc.OperationalError, match="readonly"):
                conn.execute(sa.text("insert into finance_loans values (2)"))
    finally:
        engine.dispose()
    assert warehouse.read_bytes() == before


def test_experiment_never_emails_even_with_smtp_configured(production: Path, smtp_server):
    message = EmailMessage()
    message["Subject"] = "[retrain] finance 2026-11-27: approved"
    message["To"] = "finance-ml@example.com"
    message.set_content("summary")
    settings = Settings.from_env(profile="experiment")

    where = alerts.deliver(message, settings, dedupe_key="finance-2026-11-27-report")

    assert smtp_server.messages == []
    assert Path(where).parent == settings.home / "outbox" and Path(where).exists()
    assert not (production / "outbox").exists()


def test_seed_if_missing_never_seeds_over_a_warehouse(production: Path, monkeypatch: pytest.MonkeyPatch):
    warehouse = production / "warehouse.db"
    warehouse.write_bytes(b"an existing warehouse")
    assert "nothing seeded" in seed_if_missing(Settings.from_env(profile="experiment"))
    assert warehouse.read_bytes() == b"an existing warehouse"

    warehouse.unlink()
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", "postgresql://reader@warehouse:5432/dw")
    assert "nothing seeded" in seed_if_missing(Settings.from_env(profile="experiment"))
    assert not warehouse.exists()


def test_dvc_outputs_sit_at_stable_paths_that_git_tracks():
    """`dvc metrics diff` / `dvc exp show` compare files across commits: no date in the path, not git-ignored."""
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    declared = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in pipeline["stages"].values()
        for kind in ("outs", "metrics", "plots")
        for entry in stage["do"].get(kind, [])
    ]
    assert declared and all(path.startswith("results/${item}/") and "${date}" not in path for path in declared)
    for path in declared:
        concrete = path.replace("${item}", "finance")
        ignored = subprocess.run(["git", "check-ignore", "-q", concrete], cwd=PROJECT_ROOT).returncode == 0
        assert not ignored, f"{concrete} is git-ignored: DVC experiments could not record it"
