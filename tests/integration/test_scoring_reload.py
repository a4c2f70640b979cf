"""Hot reload: a running server follows the production pointer under load, and refuses bad versions.

Clients keep scoring while the pointer flips (a rollback to the newer model,
then back): no request may fail, every answer must come wholly from the
version it names, and each flip must reach the server within the documented
bound (`pipelines.scoring.store`: poll interval + load time, ≤ 5 s; the test
polls every 0.5 s).  A corrupted or half-written version is refused while
the old model keeps serving.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pipelines.layout import write_bytes_atomic
from pipelines.release.bucket import CHECKSUMS_FILE, sha256_bytes
from pipelines.release.deploy import read_pointer, rollback
from pipelines.scoring.runtime import load_model

from .scoring_support import VERTICAL, deploy, running_server, synthetic_frame, train_tiny_model

#: The bound the service documents for a flip to reach it.
FLIP_BOUND_S = 5.0
CLIENTS = 4


def _expected(bucket: Path, version: str, frame: Any) -> np.ndarray:
    folder = bucket / VERTICAL / "versions" / version
    return load_model(VERTICAL, version, folder, "onnx").predict_proba(frame)


def _write_pointer(bucket: Path, version: str) -> None:
    """Point production at ``version`` by hand, as a buggy or hostile writer could."""
    manifest = (bucket / VERTICAL / "versions" / version / CHECKSUMS_FILE).read_bytes()
    pointer = {"vertical": VERTICAL, "version": version, "checksums_sha256": sha256_bytes(manifest)}
    write_bytes_atomic(bucket / VERTICAL / "production.json", json.dumps(pointer).encode())


def _served_version(base: str) -> str | None:
    models = httpx.get(f"{base}/v1/models", timeout=5).json()
    return models["models"].get(VERTICAL, {}).get("version")


def _wait_for(base: str, version: str, since: float) -> float:
    while time.monotonic() - since < FLIP_BOUND_S + 5:
        if _served_version(base) == version:
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(f"the server never switched to {version}")


@pytest.mark.slow
def test_pointer_flips_reach_the_server_under_load_without_failures_or_mixed_versions(tmp_path: Path):
    bucket = tmp_path / "bucket"
    bucket_url = bucket.as_uri()
    deploy(bucket_url, train_tiny_model(tmp_path / "m1", seed=1), "v1")
    deploy(bucket_url, train_tiny_model(tmp_path / "m2", seed=2, hidden=(12, 6)), "v2")
    rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v1")

    frame = synthetic_frame(20, seed=11).drop(columns="status")
    body = {"records": json.loads(frame.to_json(orient="records"))}
    expected = {v: _expected(bucket, v, frame) for v in ("v1", "v2")}
    # Otherwise a mixed answer could pass for either version.
    assert (np.abs(expected["v1"] - expected["v2"]) > 1e-3).all()

    with running_server(tmp_path, bucket_url) as base:
        assert _served_version(base) == "v1"
        stop = threading.Event()
        outcomes: list[tuple[str, str]] = []  # (problem or "ok", version)
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    try:
                        response = http.post(f"{base}/v1/{VERTICAL}/predict", json=body)
                    except httpx.HTTPError as exc:
                        outcome = (f"transport: {exc}", "-")
                    else:
                        if response.status_code != 200:
                            outcome = (f"status {response.status_code}: {response.text[:200]}", "-")
                        else:
                            answer = response.json()
                            prob = np.array([p["probability"] for p in answer["predictions"]])
                            version = answer["model_version"]
                            ok = np.allclose(prob, expected[version], atol=1e-6)
                            outcome = ("ok" if ok else "mixed", version)
                    with lock:
                        outcomes.append(outcome)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            flipped = time.monotonic()
            rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v2")  # promotion of the newer model
            to_v2 = _wait_for(base, "v2", flipped)
            time.sleep(1.0)
            flipped = time.monotonic()
            rollback(bucket_url=bucket_url, vertical=VERTICAL)  # back to the pointer's previous version
            to_v1 = _wait_for(base, "v1", flipped)
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    problems = [o for o in outcomes if o[0] != "ok"]
    assert not problems, problems[:5]
    versions = [v for _, v in outcomes]
    assert {"v1", "v2"} <= set(versions)
    assert len(outcomes) > 50
    # Requests answered in order per client is not tracked; what matters: v2 answered, then v1 again.
    assert versions[-1] == "v1"
    assert to_v2 <= FLIP_BOUND_S and to_v1 <= FLIP_BOUND_S, (to_v2, to_v1)
    print(f"flip reached the server in {to_v2:.2f} s and {to_v1:.2f} s; {len(outcomes)} requests, none failed")


@pytest.mark.slow
def test_corrupted_and_half_written_versions_are_refused_while_the_old_model_serves(tmp_path: Path):
    bucket = tmp_path / "bucket"
    bucket_url = bucket.as_uri()
    deploy(bucket_url, train_tiny_model(tmp_path / "m1", seed=1), "v1")
    frame = synthetic_frame(5, seed=3).drop(columns="status")
    body = {"records": json.loads(frame.to_json(orient="records"))}
    versions = bucket / VERTICAL / "versions"

    with running_server(tmp_path, bucket_url) as base:

        def predict() -> dict[str, Any]:
            response = httpx.post(f"{base}/v1/{VERTICAL}/predict", json=body, timeout=10)
            assert response.status_code == 200, response.text
            return dict(response.json())

        before = predict()
        # A version whose ONNX file was altered after its checksums were written.
        shutil.copytree(versions / "v1", versions / "v3")
        onnx = versions / "v3" / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
        _write_pointer(bucket, "v3")
        deadline = time.monotonic() + FLIP_BOUND_S
        refused: dict[str, Any] = {}
        while time.monotonic() < deadline and "v3" not in json.dumps(refused):
            refused = httpx.get(f"{base}/v1/models", timeout=5).json()["refused"]
            time.sleep(0.1)
        assert refused[VERTICAL]["version"] == "v3"
        assert "expected sha256" in refused[VERTICAL]["problem"]
        assert predict() == before  # still v1, same answers

        # A half-written folder: files but no checksums.json (the deploy writes it last).
        shutil.copytree(versions / "v1", versions / "v4")
        _write_pointer(bucket, "v4")
        (versions / "v4" / CHECKSUMS_FILE).unlink()
        deadline = time.monotonic() + FLIP_BOUND_S
        while time.monotonic() < deadline:
            refused = httpx.get(f"{base}/v1/models", timeout=5).json()["refused"]
            if refused.get(VERTICAL, {}).get("version") == "v4":
                break
            time.sleep(0.1)
        assert refused[VERTICAL]["version"] == "v4"
        assert "never completely deployed" in refused[VERTICAL]["problem"]
        assert predict() == before
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'scoring_reload_failures_total{vertical="finance"} 2.0' in metrics
        assert 'scoring_model_info{format="onnx",version="v1",vertical="finance"} 1.0' in metrics

        # A good version again: served, and the refusal is cleared.
        deploy(bucket_url, train_tiny_model(tmp_path / "m5", seed=5), "v5")
        assert read_pointer(bucket_url, VERTICAL)["version"] == "v5"
        _wait_for(base, "v5", time.monotonic())
        assert predict()["model_version"] == "v5"
        assert httpx.get(f"{base}/v1/models", timeout=5).json()["refused"] == {}
