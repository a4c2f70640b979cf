"""The deployment bucket on a real S3 server (SeaweedFS on loopback).

Deploy, re-deploy, crashes between upload and pointer, rollback (bucket and
the whole use case with registry and notice), serving with checksum
verification, and credentials from an Airflow connection.  Timings print
with ``-s``.  A whole nightly run that deploys to S3 (the version folder a
real night ships, its card, serving it) is checked on test_state_s3.py's
first night, which already runs every stage with the bucket on S3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import s3fs

from pipelines.config import Settings
from pipelines.errors import DeployError
from pipelines.release import deploy
from pipelines.release.bucket import Bucket
from pipelines.release.deploy import (
    DeployResult,
    deploy_version,
    load_production,
    read_pointer,
    rollback,
    verify_version,
)

from .conftest import S3Server

VERTICAL = "finance"
VERSION_FILES = {
    "weights.pt",
    "preprocessing.json",
    "model.json",
    "metrics.json",
    "lineage.json",
    "model_card.md",
    "model_card.json",
    "confusion_matrix.svg",
    "checksums.json",
}
#: S3 operations that change the bucket.
WRITES = {"put_object", "delete_object", "delete_objects", "copy_object", "create_multipart_upload"}


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The standard AWS environment pointing at the loopback server (no connection id)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "PIPELINES_BUCKET_CONN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket_url(s3_env: S3Server) -> str:
    """A fresh prefix of the test bucket per test: tests never see each other's objects."""
    return f"s3://{s3_env.bucket}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def model_dirs(tmp_path: Path) -> dict[str, Path]:
    """Three real model directories (tiny MLPs, different seeds)."""
    return {f"v{seed}": _train_tiny(tmp_path / f"model-{seed}", seed) for seed in (1, 2, 3)}


def _rows() -> pd.DataFrame:
    return pd.DataFrame({"amount": [1.0, 5.0, 2.5, None, 9.0], "kind": ["a", "b", "a", "c", "b"]})


def _train_tiny(path: Path, seed: int) -> Path:
    import torch

    from pipelines.config import Features
    from pipelines.model.features import Preprocessor
    from pipelines.model.modeling import TabularMLP, save_model_dir

    preprocessor = Preprocessor.fit(_rows(), Features(numeric=["amount"], categorical=["kind"]))
    torch.manual_seed(seed)
    width = len(preprocessor.output_names)
    hparams = {"input_dim": width, "hidden": [8], "dropout": 0.0}
    save_model_dir(path, TabularMLP(width, [8], 0.0), preprocessor, hparams=hparams, decision_threshold=0.5)
    return path


def _deploy(bucket_url: str, model_dir: Path, version: str, ds: str = "2024-01-01") -> DeployResult:
    return deploy_version(
        bucket_url=bucket_url,
        vertical=VERTICAL,
        model_version=version,
        model_dir=model_dir,
        metrics={"challenger": {"accuracy": 0.9, "f1": 0.8, "confusion_matrix": [[40, 4], [6, 30]]}},
        lineage={"data_version": f"data-{version}", "dag_run_id": "scheduled__x"},
        model_card=f"# Model card: {VERTICAL} {version}\n",
        ds=ds,
    )


def _fs(bucket_url: str) -> Any:
    return Bucket.open(bucket_url).fs


def _listing(bucket_url: str) -> dict[str, tuple[str, Any, int]]:
    """Every object under the prefix: key -> (ETag, LastModified, size), read fresh."""
    fs = _fs(bucket_url)
    prefix = bucket_url.removeprefix("s3://")
    fs.invalidate_cache()
    found = fs.find(prefix, detail=True)
    return {
        key.removeprefix(prefix + "/"): (info["ETag"], info["LastModified"], info["size"])
        for key, info in found.items()
    }


@contextlib.contextmanager
def _s3_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str | None]]]:
    """Record every S3 API call s3fs makes: (operation, key)."""
    calls: list[tuple[str, str | None]] = []
    original = s3fs.S3FileSystem._call_s3

    async def recording(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append((method, kwargs.get("Key")))
        return await original(self, method, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(s3fs.S3FileSystem, "_call_s3", recording)
        yield calls


def _report(what: str, seconds: float, extra: str = "") -> None:
    print(f"\n[s3 figures] {what}: {seconds * 1000:.0f} ms{extra}")


# -- deploy -------------------------------------------------------------------------------


def test_deploy_uploads_the_folder_then_writes_the_pointer_last(
    bucket_url: str, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_pointer = deploy._write_pointer
    seen_at_flip: dict[str, Any] = {}

    def checked_write_pointer(bucket: Bucket, vertical: str, pointer: dict) -> None:
        # At the flip: no pointer object yet, and the folder already verifies on S3.
        seen_at_flip["pointer"] = read_pointer(bucket_url, vertical)
        seen_at_flip["verified"] = verify_version(bucket_url, vertical, pointer["version"])
        real_write_pointer(bucket, vertical, pointer)

    monkeypatch.setattr(deploy, "_write_pointer", checked_write_pointer)
    with _s3_calls(monkeypatch) as calls:
        started = time.perf_counter()
        result = _deploy(bucket_url, model_dirs["v1"], "v1")
        elapsed = time.perf_counter() - started

    assert result.changed and result.previous_version is None
    assert result.uri == f"{bucket_url}/{VERTICAL}/versions/v1"
    assert seen_at_flip["pointer"] is None and set(seen_at_flip["verified"]) == VERSION_FILES - {"checksums.json"}
    puts = [key.rsplit("/", 1)[-1] for op, key in calls if op == "put_object" and key]
    assert puts[-2:] == ["checksums.json", "production.json"]
    assert set(puts[:-2]) == VERSION_FILES - {"checksums.json"}

    listing = _listing(bucket_url)
    assert set(listing) == {f"{VERTICAL}/production.json"} | {f"{VERTICAL}/versions/v1/{n}" for n in VERSION_FILES}
    size = sum(size for key, (_, _, size) in listing.items() if "/versions/v1/" in key)
    assert result.bytes_uploaded == size
    pointer = read_pointer(bucket_url, VERTICAL)
    assert pointer is not None and pointer["version"] == "v1" and pointer["uri"] == result.uri
    _report("deploy of a new version (upload, read-back verify, pointer)", elapsed, f"; {size} bytes, {len(puts)} PUTs")


def test_redeploy_of_the_same_version_writes_nothing(
    bucket_url: str, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _deploy(bucket_url, model_dirs["v1"], "v1")
    before = _listing(bucket_url)
    with _s3_calls(monkeypatch) as calls:
        started = time.perf_counter()
        again = _deploy(bucket_url, model_dirs["v1"], "v1")
        elapsed = time.perf_counter() - started
    assert not again.changed and again.bytes_uploaded == 0
    assert not [call for call in calls if call[0] in WRITES], calls
    assert _listing(bucket_url) == before  # same keys, ETags and LastModified
    _report("re-deploy of the production version (verify only, no PUT)", elapsed)


def test_crash_between_upload_and_pointer_write_keeps_production(
    bucket_url: str, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _deploy(bucket_url, model_dirs["v1"], "v1")
    fs = _fs(bucket_url)
    pointer_key = f"{bucket_url.removeprefix('s3://')}/{VERTICAL}/production.json"
    pointer_before = fs.cat_file(pointer_key)

    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt("worker killed before the pointer write")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(deploy, "_write_pointer", killed)
        _deploy(bucket_url, model_dirs["v2"], "v2")

    assert fs.cat_file(pointer_key) == pointer_before
    verify_version(bucket_url, VERTICAL, "v2")  # uploaded completely, just not pointed at
    served = load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache")
    assert served.version == "v1" and len(served.predict_proba(_rows())) == 5

    # The retry finds the complete folder, uploads nothing and flips the pointer.
    result = _deploy(bucket_url, model_dirs["v2"], "v2")
    assert result.changed and result.bytes_uploaded == 0 and result.previous_version == "v1"
    assert load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache").version == "v2"


def test_crash_mid_upload_keeps_production_and_a_later_deploy_repairs(
    bucket_url: str, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _deploy(bucket_url, model_dirs["v1"], "v1")
    original = s3fs.S3FileSystem._call_s3
    puts = {"n": 0}

    async def dying_call(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        # The connection drops on the second object of the upload.
        if method == "put_object":
            puts["n"] += 1
            if puts["n"] == 2:
                raise ConnectionResetError("connection reset by peer")
        return await original(self, method, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(ConnectionResetError):
        patch.setattr(s3fs.S3FileSystem, "_call_s3", dying_call)
        _deploy(bucket_url, model_dirs["v2"], "v2")
    # One object made it; no checksums.json, so the folder reads as incomplete.
    assert len([k for k in _listing(bucket_url) if "/versions/v2/" in k]) == 1

    assert read_pointer(bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]
    with pytest.raises(DeployError, match=r"no checksums\.json"):
        verify_version(bucket_url, VERTICAL, "v2")
    with pytest.raises(DeployError, match="refusing to roll back to v2"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v2")
    assert load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache").version == "v1"

    result = _deploy(bucket_url, model_dirs["v2"], "v2")
    assert result.changed and result.bytes_uploaded > 0
    assert {k.rsplit("/", 1)[-1] for k in _listing(bucket_url) if "/versions/v2/" in k} == VERSION_FILES


# -- rollback -------------------------------------------------------------------------------


def test_rollback_to_previous_and_to_a_named_version(bucket_url: str, model_dirs: dict[str, Path]) -> None:
    for version, path in model_dirs.items():
        _deploy(bucket_url, path, version)
    started = time.perf_counter()
    back = rollback(bucket_url=bucket_url, vertical=VERTICAL)
    elapsed = time.perf_counter() - started
    assert back.changed and (back.model_version, back.previous_version) == ("v2", "v3")
    named = rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v1")
    assert named.changed and (named.model_version, named.previous_version) == ("v1", "v2")
    pointer = read_pointer(bucket_url, VERTICAL)
    assert pointer is not None and (pointer["version"], pointer["action"]) == ("v1", "rollback")
    _report("bucket rollback (verify target, pointer PUT)", elapsed)


def _register(settings: Settings, version: str, *, approved: bool = True) -> None:
    from pipelines.registry.store import Registry

    registry = Registry.from_settings(settings)
    ds = f"2024-01-0{version[-1]}"
    metrics = {"accuracy": 0.8 + int(version[-1]) / 100, "f1": 0.7}
    registry.record_model(
        vertical=VERTICAL, model_version=version, data_version=f"d-{version}", ds=ds, metrics=metrics, lineage={}
    )
    registry.record_decision(vertical=VERTICAL, ds=ds, model_version=version, approved=approved, reasons=[])
    if approved:
        registry.record_deployment(vertical=VERTICAL, model_version=version, actor="test", ds=ds)


def test_rollback_use_case_moves_pointer_records_and_mails(
    bucket_url: str, model_dirs: dict[str, Path], settings: Settings, smtp_server: Any, tmp_path: Path
) -> None:
    from pipelines.registry.store import Registry
    from pipelines.release.rollout import rollback_vertical

    s3_settings = dataclasses.replace(settings, bucket_url=bucket_url)
    for version in ("v3", "v1", "v2"):  # v3 reached the bucket (by hand) without the gate's approval
        _register(s3_settings, version, approved=version != "v3")
        _deploy(bucket_url, model_dirs[version], version)

    with pytest.raises(DeployError, match="refusing to roll back to v3: no gate decision approved it"):
        rollback_vertical(VERTICAL, settings=s3_settings, to_version="v3", actor="test", reason="r")
    with pytest.raises(DeployError, match="refusing to roll back to v9: it is not in the model registry"):
        rollback_vertical(VERTICAL, settings=s3_settings, to_version="v9", actor="test", reason="r")
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]

    started = time.perf_counter()
    result = rollback_vertical(VERTICAL, settings=s3_settings, actor="cli:alice", reason="v2 misroutes loans")
    elapsed = time.perf_counter() - started

    assert result["changed"] and result["recorded"] and result["model_version"] == "v1"
    assert result["previous_version"] == "v2" and result["notice"].startswith("smtp://")
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]
    row = Registry.from_settings(s3_settings).deployments(VERTICAL, limit=1)[0]
    assert (row.action, row.model_version, row.previous_version, row.actor) == ("rollback", "v1", "v2", "cli:alice")
    (mail,) = smtp_server.messages
    assert mail["Subject"] == f"[rollback] {VERTICAL}: v2 -> v1"
    body = mail.get_content()
    assert "cli:alice" in body and "v2 misroutes loans" in body and "0.8100" in body and "0.8200" in body
    assert "--to v2" in body  # how to undo
    assert load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache").version == "v1"

    # A retried task changes nothing and mails nobody twice.
    again = rollback_vertical(
        VERTICAL, settings=s3_settings, to_version="v1", actor="cli:alice", reason="v2 misroutes loans"
    )
    assert not again["changed"] and not again["recorded"] and len(smtp_server.messages) == 1
    _report("rollback use case (registry check, verify, pointer, registry row, SMTP notice)", elapsed)


# -- serving --------------------------------------------------------------------------------


def test_load_production_verifies_and_scores_and_refuses_a_tampered_object(
    bucket_url: str, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from pipelines.model.modeling import load_model_dir

    _deploy(bucket_url, model_dirs["v1"], "v1")
    started = time.perf_counter()
    served = load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cold")
    elapsed = time.perf_counter() - started
    expected = load_model_dir(model_dirs["v1"]).predict_proba(_rows())
    assert served.predict_proba(_rows()).tolist() == pytest.approx(expected.tolist())
    assert served.metrics()["challenger"]["f1"] == 0.8

    # Someone overwrites the weights object in the bucket.
    fs = _fs(bucket_url)
    weights = f"{bucket_url.removeprefix('s3://')}/{VERTICAL}/versions/v1/weights.pt"
    data = bytearray(fs.cat_file(weights))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(weights, bytes(data))
    with pytest.raises(DeployError, match=r"weights\.pt.*refusing to load a corrupted model"):
        load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh" / VERTICAL / "v1").exists()
    with pytest.raises(DeployError, match=r"weights\.pt: expected sha256"):
        verify_version(bucket_url, VERTICAL, "v1")
    _report("load_production, cold cache (pointer, manifest, download, verify, torch.load)", elapsed)


# -- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["env-conn-id", "url-userinfo"])
def test_credentials_from_an_airflow_connection(
    s3_server: S3Server, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    conn = {
        "conn_type": "aws",
        "login": s3_server.access_key,
        "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_BUCKET_TEST", json.dumps(conn))
    prefix = uuid.uuid4().hex[:12]
    if form == "env-conn-id":
        monkeypatch.setenv("PIPELINES_BUCKET_CONN_ID", "bucket_test")
        url = f"s3://{s3_server.bucket}/{prefix}"
    else:
        monkeypatch.delenv("PIPELINES_BUCKET_CONN_ID", raising=False)
        url = f"s3://bucket_test@{s3_server.bucket}/{prefix}"  # ObjectStoragePath's spelling
    result = _deploy(url, model_dirs["v1"], "v1")
    assert result.changed and result.uri == f"s3://{s3_server.bucket}/{prefix}/{VERTICAL}/versions/v1"
    assert read_pointer(url, VERTICAL)["version"] == "v1"  # type: ignore[index]

    monkeypatch.setenv("AIRFLOW_CONN_BUCKET_TEST", json.dumps({**conn, "password": "wrong"}))
    with pytest.raises(DeployError, match=r"denied access .*PermissionError.*check PIPELINES_BUCKET_URL"):
        read_pointer(url, VERTICAL)
