"""The scoring service on a real S3 bucket (SeaweedFS on loopback): it loads, verifies and follows the pointer."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pipelines.release.deploy import rollback

from .conftest import S3Server
from .scoring_support import VERTICAL, deploy, running_server, synthetic_frame, train_tiny_model

pytestmark = pytest.mark.slow


def _version(base: str) -> str | None:
    return httpx.get(f"{base}/v1/models", timeout=5).json()["models"].get(VERTICAL, {}).get("version")


def test_server_follows_promotion_and_rollback_on_s3(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "PIPELINES_BUCKET_CONN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket_url = f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}"
    deploy(bucket_url, train_tiny_model(tmp_path / "m1", seed=1), "v1")
    body = {"records": json.loads(synthetic_frame(3, seed=4).drop(columns="status").to_json(orient="records"))}

    with running_server(tmp_path, bucket_url) as base:
        first = httpx.post(f"{base}/v1/{VERTICAL}/predict", json=body, timeout=10).json()
        assert first["model_version"] == "v1"

        deploy(bucket_url, train_tiny_model(tmp_path / "m2", seed=2), "v2")
        flipped = time.monotonic()
        while _version(base) != "v2":
            assert time.monotonic() - flipped < 5, "promotion did not reach the server within 5 s"
            time.sleep(0.05)
        promoted = time.monotonic() - flipped

        rollback(bucket_url=bucket_url, vertical=VERTICAL)
        flipped = time.monotonic()
        while _version(base) != "v1":
            assert time.monotonic() - flipped < 5, "rollback did not reach the server within 5 s"
            time.sleep(0.05)
        again = httpx.post(f"{base}/v1/{VERTICAL}/predict", json=body, timeout=10).json()
        assert again == first  # the same version gives the same answers
    print(f"S3: promotion reached the server in {promoted:.2f} s, rollback in {time.monotonic() - flipped:.2f} s")
