"""`Settings.from_env` (pydantic-settings): the same variables and defaults as the hand-written reader it replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import DEFAULT_PUBLIC_URL, PROJECT_ROOT, Settings
from pipelines.errors import SpecError

VARIABLES = (
    "PIPELINES_HOME",
    "PIPELINES_SPECS_DIR",
    "PIPELINES_EXPECTATIONS_DIR",
    "PIPELINES_BUCKET_URL",
    "PIPELINES_REGISTRY_URL",
    "PIPELINES_DVC_REMOTE",
    "PIPELINES_PUBLIC_URL",
    "AIRFLOW__API__BASE_URL",
)


def old_from_env() -> Settings:
    """The production half of the os.environ reader `Settings.from_env` was before pydantic-settings."""
    home = Path(os.environ.get("PIPELINES_HOME", PROJECT_ROOT / ".state")).resolve()
    return Settings(
        home=home,
        specs_dir=Path(os.environ.get("PIPELINES_SPECS_DIR", PROJECT_ROOT / "verticals")),
        expectations_dir=Path(os.environ.get("PIPELINES_EXPECTATIONS_DIR", PROJECT_ROOT / "expectations")),
        bucket_url=os.environ.get("PIPELINES_BUCKET_URL", (home / "bucket").as_uri()),
        registry_url=os.environ.get("PIPELINES_REGISTRY_URL", f"sqlite:///{home / 'registry.db'}"),
        dvc_remote=os.environ.get("PIPELINES_DVC_REMOTE", str(home / "dvc-remote")),
        public_url=os.environ.get("PIPELINES_PUBLIC_URL")
        or os.environ.get("AIRFLOW__API__BASE_URL")
        or DEFAULT_PUBLIC_URL,
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("PIPELINES_") or n == "AIRFLOW__API__BASE_URL"]:
        monkeypatch.delenv(name)


def test_defaults_without_any_variable() -> None:
    settings = Settings.from_env()
    home = (PROJECT_ROOT / ".state").resolve()
    assert settings == old_from_env()
    assert settings.home == home and settings.specs_dir == PROJECT_ROOT / "verticals"
    assert settings.registry_url == f"sqlite:///{home / 'registry.db'}"
    assert (settings.public_url, settings.profile) == (DEFAULT_PUBLIC_URL, "production")


@pytest.mark.parametrize(
    "chosen", [VARIABLES[:1], VARIABLES[1:3], VARIABLES[3:6], VARIABLES[6:7], VARIABLES[7:], VARIABLES]
)
def test_every_variable_reads_as_before(chosen: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in chosen:
        value = str(tmp_path / name.lower()) if name.endswith(("HOME", "_DIR")) else f"s3://{name.lower()}/x"
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == old_from_env()


def test_public_url_prefers_its_own_variable_over_airflows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    assert Settings.from_env().public_url == "https://airflow.example.com"
    monkeypatch.setenv("PIPELINES_PUBLIC_URL", "")  # empty: as unset, Airflow's still applies
    assert Settings.from_env().public_url == "https://airflow.example.com"
    monkeypatch.setenv("PIPELINES_PUBLIC_URL", "https://proxy.example.com")
    assert Settings.from_env().public_url == "https://proxy.example.com"


def test_an_empty_variable_takes_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # (The old reader took "" literally: an empty registry URL, a home at the working directory.)
    monkeypatch.setenv("PIPELINES_REGISTRY_URL", "")
    monkeypatch.setenv("PIPELINES_HOME", "")
    settings = Settings.from_env()
    assert settings.home == (PROJECT_ROOT / ".state").resolve()
    assert settings.registry_url == f"sqlite:///{settings.home / 'registry.db'}"


def test_profile_from_the_argument_or_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIPELINES_HOME", str(tmp_path))
    assert Settings.from_env(profile="experiment").home == tmp_path / "experiments"
    monkeypatch.setenv("PIPELINES_PROFILE", "experiment")
    assert Settings.from_env().profile == "experiment"
    assert Settings.from_env(profile="production").profile == "production"
    monkeypatch.setenv("PIPELINES_PROFILE", "Staging")
    with pytest.raises(SpecError, match="unknown PIPELINES_PROFILE 'Staging'; use one of production, experiment"):
        Settings.from_env()
