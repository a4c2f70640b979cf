"""The deployment bucket: immutable folders, pointer last, verification, rollback, loading."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import DeployError
from pipelines.release import deploy
from pipelines.release.bucket import storage_options
from pipelines.release.deploy import (
    DeployResult,
    deploy_version,
    list_versions,
    load_production,
    load_version,
    read_pointer,
    rollback,
    verify_version,
)

VERTICAL = "finance"
MODEL_FILES = {"weights.pt", "preprocessing.json", "model.json"}
CARD_FILES = {"metrics.json", "model_card.md", "model_card.json", "confusion_matrix.svg", "lineage.json"}
BUCKET_FILES = MODEL_FILES | CARD_FILES | {"checksums.json"}
METRICS = {"challenger": {"f1": 0.8, "confusion_matrix": [[50, 5], [7, 38]]}, "holdout_rows": 100}


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def bucket_url(bucket: Path) -> str:
    return bucket.as_uri()


def make_model_dir(root: Path, seed: int) -> Path:
    """A model dir of arbitrary bytes: deploy never looks inside the files."""
    path = root / f"model-{seed}"
    path.mkdir(parents=True)
    (path / "weights.pt").write_bytes(bytes(range(256)) * 4 + seed.to_bytes(4, "big"))
    (path / "preprocessing.json").write_text(json.dumps({"seed": seed}))
    (path / "model.json").write_text(json.dumps({"format_version": 1, "seed": seed}))
    return path


def do_deploy(bucket_url: str, model_dir: Path, version: str, ds: str = "2024-01-01") -> DeployResult:
    return deploy_version(
        bucket_url=bucket_url,
        vertical=VERTICAL,
        model_version=version,
        model_dir=model_dir,
        metrics=METRICS,
        lineage={"data_version": f"data-{version}", "dag_run_id": "scheduled__x"},
        model_card=f"# {version}\n",
        ds=ds,
    )


def version_dir(bucket: Path, version: str) -> Path:
    return bucket / VERTICAL / "versions" / version


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


# -- deploy -----------------------------------------------------------------------------


def test_deploy_writes_every_file_then_checksums_then_pointer(
    tmp_path: Path, bucket: Path, bucket_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    for name in ("pipe_file", "put_file"):
        original = getattr(LocalFileSystem, name)

        def spy(self: Any, path: Any, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
            target = args[0] if _original.__name__ == "put_file" else path
            writes.append(Path(str(target)).name)
            return _original(self, path, *args, **kwargs)

        monkeypatch.setattr(LocalFileSystem, name, spy)
    real_write_pointer = deploy._write_pointer

    def checked_write_pointer(b: Any, vertical: str, pointer: dict) -> None:
        # The folder must already verify when the pointer is written.
        assert verify_version(bucket_url, vertical, pointer["version"])
        writes.append("production.json")
        real_write_pointer(b, vertical, pointer)

    monkeypatch.setattr(deploy, "_write_pointer", checked_write_pointer)

    result = do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")

    assert result.changed and result.previous_version is None and result.model_version == "v1"
    assert result.uri == version_dir(bucket, "v1").as_uri()
    assert writes[-2:] == ["checksums.json", "production.json"]
    assert set(writes[:-2]) == BUCKET_FILES - {"checksums.json"}
    folder = version_dir(bucket, "v1")
    assert {p.name for p in folder.iterdir()} == BUCKET_FILES
    assert result.bytes_uploaded == sum(p.stat().st_size for p in folder.iterdir())
    manifest = json.loads((folder / "checksums.json").read_text())
    assert set(manifest["files"]) == BUCKET_FILES - {"checksums.json"}
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
    pointer = read_pointer(bucket_url, VERTICAL)
    assert pointer is not None
    assert pointer["version"] == "v1" and pointer["ds"] == "2024-01-01" and pointer["previous_version"] is None
    assert pointer["checksums_sha256"] == hashlib.sha256((folder / "checksums.json").read_bytes()).hexdigest()
    assert pointer["deployed_at"]
    # Atomic pointer write leaves no temp file behind.
    assert sorted(p.name for p in (bucket / VERTICAL).iterdir()) == ["production.json", "versions"]


def test_redeploy_of_the_production_version_writes_nothing(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    model_dir = make_model_dir(tmp_path, 1)
    do_deploy(bucket_url, model_dir, "v1")
    before = snapshot(bucket)
    again = do_deploy(bucket_url, model_dir, "v1")
    assert not again.changed and again.bytes_uploaded == 0
    assert snapshot(bucket) == before


def test_second_version_moves_the_pointer_and_keeps_the_first(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    first = snapshot(version_dir(bucket, "v1"))
    result = do_deploy(bucket_url, make_model_dir(tmp_path, 2), "v2", ds="2024-01-02")
    assert result.changed and result.previous_version == "v1"
    assert read_pointer(bucket_url, VERTICAL)["previous_version"] == "v1"  # type: ignore[index]
    assert snapshot(version_dir(bucket, "v1")) == first
    assert list_versions(bucket_url, VERTICAL) == ["v1", "v2"]


def test_complete_folder_is_immutable(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    before = snapshot(version_dir(bucket, "v1"))
    # Same version id, different bytes (e.g. a rerun on another machine): the first upload wins.
    do_deploy(bucket_url, make_model_dir(tmp_path, 9), "v1")
    assert snapshot(version_dir(bucket, "v1")) == before


def test_read_pointer_without_deployments_is_none(bucket_url: str) -> None:
    assert read_pointer(bucket_url, VERTICAL) is None
    assert list_versions(bucket_url, VERTICAL) == []


def test_unreadable_pointer_is_a_clear_error(bucket: Path, bucket_url: str) -> None:
    (bucket / VERTICAL).mkdir(parents=True)
    (bucket / VERTICAL / "production.json").write_text("{not json")
    with pytest.raises(DeployError, match="not valid JSON"):
        read_pointer(bucket_url, VERTICAL)


@pytest.mark.parametrize("version", ["../escape", "a/b", "", ".hidden"])
def test_unsafe_version_names_are_refused(tmp_path: Path, bucket_url: str, version: str) -> None:
    with pytest.raises(DeployError, match="safe path segment"):
        do_deploy(bucket_url, make_model_dir(tmp_path, 1), version)


def test_model_dir_must_exist_and_not_shadow_generated_files(tmp_path: Path, bucket_url: str) -> None:
    with pytest.raises(DeployError, match="does not exist"):
        do_deploy(bucket_url, tmp_path / "missing", "v1")
    model_dir = make_model_dir(tmp_path, 1)
    (model_dir / "metrics.json").write_text("{}")
    with pytest.raises(DeployError, match=r"metrics\.json"):
        do_deploy(bucket_url, model_dir, "v1")


# -- verification and corruption ----------------------------------------------------------


def test_verify_returns_the_checksums(tmp_path: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    assert set(verify_version(bucket_url, VERTICAL, "v1")) == BUCKET_FILES - {"checksums.json"}


def test_flipped_byte_fails_verify_and_load(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    weights = version_dir(bucket, "v1") / "weights.pt"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    flip_byte(weights)
    with pytest.raises(DeployError, match=rf"weights\.pt: expected sha256 {expected}, found [0-9a-f]{{64}}"):
        verify_version(bucket_url, VERTICAL, "v1")
    with pytest.raises(DeployError, match=r"weights\.pt.*refusing to load"):
        load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / VERTICAL / "v1").exists()


def test_missing_file_names_the_file(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    (version_dir(bucket, "v1") / "model.json").unlink()
    with pytest.raises(DeployError, match=r"model\.json is missing"):
        verify_version(bucket_url, VERTICAL, "v1")


def test_rewritten_manifest_no_longer_matches_the_pointer(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    folder = version_dir(bucket, "v1")
    # Tamper consistently: the folder verifies on its own, but not against the pointer.
    (folder / "weights.pt").write_bytes(b"other weights")
    manifest = json.loads((folder / "checksums.json").read_text())
    manifest["files"]["weights.pt"] = hashlib.sha256(b"other weights").hexdigest()
    (folder / "checksums.json").write_text(json.dumps(manifest))
    verify_version(bucket_url, VERTICAL, "v1")
    with pytest.raises(DeployError, match="pointer expects"):
        load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache")


def test_redeploy_repairs_a_corrupted_production_folder(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    model_dir = make_model_dir(tmp_path, 1)
    do_deploy(bucket_url, model_dir, "v1")
    flip_byte(version_dir(bucket, "v1") / "weights.pt")
    result = do_deploy(bucket_url, model_dir, "v1")
    assert not result.changed and result.bytes_uploaded > 0
    verify_version(bucket_url, VERTICAL, "v1")


# -- crashes mid-deploy ------------------------------------------------------------------------


def test_crash_mid_upload_keeps_production_and_a_later_deploy_repairs(
    tmp_path: Path, bucket: Path, bucket_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    pointer_before = (bucket / VERTICAL / "production.json").read_bytes()
    original = LocalFileSystem.put_file
    calls = {"n": 0}

    def dying_put(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("connection reset by peer")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "put_file", dying_put)
    model_dir = make_model_dir(tmp_path, 2)
    with pytest.raises(OSError, match="connection reset"):
        do_deploy(bucket_url, model_dir, "v2")
    monkeypatch.setattr(LocalFileSystem, "put_file", original)

    assert (bucket / VERTICAL / "production.json").read_bytes() == pointer_before
    assert not (version_dir(bucket, "v2") / "checksums.json").exists()
    with pytest.raises(DeployError, match=r"no checksums\.json"):
        verify_version(bucket_url, VERTICAL, "v2")
    with pytest.raises(DeployError, match="refusing to roll back to v2"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v2")

    result = do_deploy(bucket_url, model_dir, "v2")
    assert result.changed and result.previous_version == "v1"
    assert set(verify_version(bucket_url, VERTICAL, "v2")) == BUCKET_FILES - {"checksums.json"}


def test_partial_folder_copied_by_hand_is_rewritten(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    model_dir = make_model_dir(tmp_path, 2)
    partial = version_dir(bucket, "v2")
    partial.mkdir(parents=True)
    (partial / "weights.pt").write_bytes((model_dir / "weights.pt").read_bytes()[:100])  # truncated
    (partial / "stray.tmp").write_bytes(b"junk")
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]

    result = do_deploy(bucket_url, model_dir, "v2")
    assert result.changed
    assert {p.name for p in partial.iterdir()} == BUCKET_FILES  # stray file gone
    assert (partial / "weights.pt").read_bytes() == (model_dir / "weights.pt").read_bytes()


# -- rollback ------------------------------------------------------------------------------------


def test_rollback_to_previous_and_back(tmp_path: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    do_deploy(bucket_url, make_model_dir(tmp_path, 2), "v2", ds="2024-01-02")
    back = rollback(bucket_url=bucket_url, vertical=VERTICAL)
    assert back.changed and back.model_version == "v1" and back.previous_version == "v2"
    pointer = read_pointer(bucket_url, VERTICAL)
    assert pointer is not None
    assert (pointer["version"], pointer["previous_version"], pointer["action"]) == ("v1", "v2", "rollback")
    assert pointer["ds"] == "2024-01-01"  # the logical date v1 was trained for
    # A second rollback undoes the first.
    assert rollback(bucket_url=bucket_url, vertical=VERTICAL).model_version == "v2"


def test_rollback_to_a_named_version(tmp_path: Path, bucket_url: str) -> None:
    for i in (1, 2, 3):
        do_deploy(bucket_url, make_model_dir(tmp_path, i), f"v{i}")
    result = rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v1")
    assert result.changed and result.previous_version == "v3"
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]
    same = rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v1")
    assert not same.changed


def test_rollback_with_nothing_previous_is_a_clear_error(tmp_path: Path, bucket_url: str) -> None:
    with pytest.raises(DeployError, match="nothing is deployed"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL)
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    with pytest.raises(DeployError, match="nothing to roll back to"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL)
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]


def test_rollback_refuses_a_corrupted_target(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    do_deploy(bucket_url, make_model_dir(tmp_path, 2), "v2")
    flip_byte(version_dir(bucket, "v1") / "weights.pt")
    with pytest.raises(DeployError, match=r"refusing to roll back to v1: .*weights\.pt.*production stays v2"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL)
    with pytest.raises(DeployError, match="refusing to roll back to nope"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="nope")
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]


# -- loading (the serving contract) -------------------------------------------------------------------


def test_load_without_a_deployment_is_a_clear_error(tmp_path: Path, bucket_url: str) -> None:
    with pytest.raises(DeployError, match="deploy one first"):
        load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache")
    with pytest.raises(DeployError, match="never completely deployed"):
        load_version(VERTICAL, "v9", bucket_url=bucket_url, cache_dir=tmp_path / "cache")


@pytest.fixture
def trained_model_dir(tmp_path: Path) -> tuple[Path, Any]:
    """A real model directory from `pipelines.model.modeling` (tiny MLP) and a frame to score."""
    import pandas as pd
    import torch

    from pipelines.config import Features
    from pipelines.model.features import Preprocessor
    from pipelines.model.modeling import TabularMLP, save_model_dir

    frame = pd.DataFrame({"amount": [1.0, 5.0, 2.5, None], "kind": ["a", "b", "a", "c"]})
    preprocessor = Preprocessor.fit(frame, Features(numeric=["amount"], categorical=["kind"]))
    torch.manual_seed(0)
    width = len(preprocessor.output_names)
    module = TabularMLP(width, [4], 0.0)
    path = tmp_path / "trained"
    save_model_dir(
        path, module, preprocessor, hparams={"input_dim": width, "hidden": [4], "dropout": 0.0}, decision_threshold=0.4
    )
    return path, frame


def test_load_production_scores_like_the_trained_model(
    tmp_path: Path, bucket_url: str, trained_model_dir: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.model.modeling import load_model_dir

    path, frame = trained_model_dir
    do_deploy(bucket_url, path, "v1")
    cache = tmp_path / "cache"
    served = load_production(VERTICAL, bucket_url=bucket_url, cache_dir=cache)
    expected = load_model_dir(path).predict_proba(frame)
    assert served.version == "v1" and served.pointer is not None and served.pointer["version"] == "v1"
    assert served.path == cache / VERTICAL / "v1"
    assert served.predict_proba(frame).tolist() == pytest.approx(expected.tolist())
    assert served.predict(frame).tolist() == (expected >= 0.4).astype(int).tolist()
    assert served.decision_threshold == 0.4
    assert served.metrics() == METRICS

    # An intact cache is reused without downloading again ...
    def no_download(*_a: Any, **_k: Any) -> None:
        raise AssertionError("downloaded although the cache was intact")

    monkeypatch.setattr(LocalFileSystem, "get_file", no_download)
    assert load_version(VERTICAL, "v1", bucket_url=bucket_url, cache_dir=cache).pointer is None
    monkeypatch.undo()
    # ... and a damaged cache is replaced by a fresh, verified copy.
    flip_byte(cache / VERTICAL / "v1" / "weights.pt")
    again = load_production(VERTICAL, bucket_url=bucket_url, cache_dir=cache)
    assert again.predict_proba(frame).tolist() == pytest.approx(expected.tolist())


def test_load_production_defaults_to_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_model_dir: tuple[Path, Any]
) -> None:
    path, frame = trained_model_dir
    home = tmp_path / "home"
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    monkeypatch.delenv("PIPELINES_BUCKET_URL", raising=False)
    do_deploy((home / "bucket").as_uri(), path, "v1")
    served = load_production(VERTICAL)
    assert served.path == home / "cache" / "deployed" / VERTICAL / "v1"
    assert len(served.predict_proba(frame)) == len(frame)


def test_loader_refuses_tampered_weights_before_deserialising(
    tmp_path: Path, bucket: Path, bucket_url: str, trained_model_dir: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    path, _ = trained_model_dir
    do_deploy(bucket_url, path, "v1")
    flip_byte(version_dir(bucket, "v1") / "weights.pt", offset=100)

    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("deserialised bytes that failed their checksum")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(DeployError, match=r"weights\.pt of .* expected sha256 .* refusing to load a corrupted model"):
        load_production(VERTICAL, bucket_url=bucket_url, cache_dir=tmp_path / "cache")
    with pytest.raises(DeployError, match="refusing to load"):
        load_version(VERTICAL, "v1", bucket_url=bucket_url, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / VERTICAL / "v1").exists()


# -- model card files -----------------------------------------------------------------------------


def test_version_folder_holds_json_card_and_confusion_image(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    import xml.etree.ElementTree as ET

    model_dir = make_model_dir(tmp_path, 1)
    (model_dir / "model.json").write_text(json.dumps({"label": {"column": "status", "positive": "bad"}}))
    do_deploy(bucket_url, model_dir, "v1")
    folder = version_dir(bucket, "v1")

    card = json.loads((folder / "model_card.json").read_text())
    assert (card["vertical"], card["model_version"], card["logical_date"]) == (VERTICAL, "v1", "2024-01-01")
    assert card["metrics"]["challenger"] == {"f1": 0.8}
    assert card["confusion_matrix"]["matrix"] == [[50, 5], [7, 38]]
    assert card["confusion_matrix"]["image"] == "confusion_matrix.svg"
    assert card["lineage"]["data_version"] == "data-v1" and card["holdout"] == {"rows": 100}

    svg = ET.fromstring((folder / "confusion_matrix.svg").read_bytes())  # well-formed XML
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert {"50", "5", "7", "38", "not bad", "bad"} <= set(texts)
    assert "![Confusion matrix on the holdout](confusion_matrix.svg)" in (folder / "model_card.md").read_text()


def test_same_inputs_give_byte_identical_version_folders(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, 1)
    first, second = tmp_path / "b1", tmp_path / "b2"
    do_deploy(first.as_uri(), model_dir, "v1")
    do_deploy(second.as_uri(), model_dir, "v1")
    assert _folder_bytes(first) == _folder_bytes(second)


def _folder_bytes(bucket_root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in version_dir(bucket_root, "v1").iterdir()}


def test_card_without_confusion_matrix_and_with_extra_json(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    deploy_version(
        bucket_url=bucket_url,
        vertical=VERTICAL,
        model_version="v1",
        model_dir=make_model_dir(tmp_path, 1),
        metrics={"challenger": {"f1": 0.8}},
        lineage={},
        model_card="# v1\n",
        ds="2024-01-01",
        model_card_json={"owner": "finance-ml", "vertical": "finance"},
    )
    folder = version_dir(bucket, "v1")
    assert not (folder / "confusion_matrix.svg").exists()
    assert (folder / "model_card.md").read_text() == "# v1\n"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["owner"] == "finance-ml" and "confusion_matrix" not in card


# -- rollback guard and a damaged pointer --------------------------------------------------------------


def test_rollback_guard_refuses_before_anything_moves(tmp_path: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    do_deploy(bucket_url, make_model_dir(tmp_path, 2), "v2")
    seen: list[str] = []

    def guard(target: str) -> None:
        seen.append(target)
        raise DeployError(f"{target} is not approved")

    with pytest.raises(DeployError, match="v1 is not approved"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL, guard=guard)
    assert seen == ["v1"] and read_pointer(bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]


def test_named_rollback_repairs_an_unreadable_pointer(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    (bucket / VERTICAL / "production.json").write_text("{truncated")
    with pytest.raises(DeployError, match="not valid JSON"):
        rollback(bucket_url=bucket_url, vertical=VERTICAL)
    result = rollback(bucket_url=bucket_url, vertical=VERTICAL, to_version="v1")
    assert result.changed and result.previous_version is None
    assert read_pointer(bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]


# -- credentials ---------------------------------------------------------------------------------------


@pytest.fixture
def no_bucket_conn(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("PIPELINES_BUCKET_CONN_ID", raising=False)
    return monkeypatch


def test_local_and_plain_s3_urls_take_no_options(no_bucket_conn: pytest.MonkeyPatch) -> None:
    assert storage_options("file:///tmp/bucket") == ("file:///tmp/bucket", {})
    # botocore's own chain (AWS_* variables, profile, instance role) decides.
    assert storage_options("s3://models/prod") == ("s3://models/prod", {})


def test_s3_options_from_a_json_connection(no_bucket_conn: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "aws",
        "login": "AKID",
        "password": "s3cr3t",
        "extra": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
    }
    no_bucket_conn.setenv("AIRFLOW_CONN_MODELS_S3", json.dumps(conn))
    no_bucket_conn.setenv("PIPELINES_BUCKET_CONN_ID", "models_s3")
    url, options = storage_options("s3://models/prod")
    assert url == "s3://models/prod"
    assert options == {
        "key": "AKID",
        "secret": "s3cr3t",
        "endpoint_url": "http://minio:9000",
        "client_kwargs": {"region_name": "eu-west-1"},
    }


def test_s3_options_from_a_uri_connection_named_in_the_url(no_bucket_conn: pytest.MonkeyPatch) -> None:
    no_bucket_conn.setenv("AIRFLOW_CONN_AWS_DEFAULT", "aws://AK%2FID:p%40ss@/?endpoint_url=http%3A%2F%2Fs3%3A8333")
    url, options = storage_options("s3://aws_default@models/prod")
    assert url == "s3://models/prod"
    assert options == {"key": "AK/ID", "secret": "p@ss", "endpoint_url": "http://s3:8333"}


def test_missing_connection_says_what_to_set(no_bucket_conn: pytest.MonkeyPatch) -> None:
    no_bucket_conn.setenv("PIPELINES_BUCKET_CONN_ID", "nope")
    no_bucket_conn.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(DeployError, match=r"set AIRFLOW_CONN_NOPE .* or unset PIPELINES_BUCKET_CONN_ID"):
        read_pointer("s3://models/prod", VERTICAL)


def test_denied_access_says_what_to_check(bucket_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_a: Any, **_k: Any) -> bytes:
        raise PermissionError("Forbidden")

    monkeypatch.setattr(LocalFileSystem, "cat_file", denied)
    with pytest.raises(DeployError, match=r"denied access .*AWS_ACCESS_KEY_ID"):
        read_pointer(bucket_url, VERTICAL)
    with pytest.raises(DeployError, match="denied access"):
        load_production(VERTICAL, bucket_url=bucket_url, cache_dir=Path("/nonexistent"))


def test_serving_imports_stay_light() -> None:
    import subprocess
    import sys

    heavy = ("torch", "airflow", "sqlalchemy", "lightning", "great_expectations", "dvc")
    code = f"import sys, pipelines.release.serving; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version_folder_holds_reliability_diagram_with_a_point_per_non_empty_bin(
    tmp_path: Path, bucket: Path, bucket_url: str
) -> None:
    import xml.etree.ElementTree as ET

    import numpy as np

    from pipelines.model.thresholds import reliability_bins

    # Scores only in 3 of the 10 bins: 0.05 (observed 0/4), 0.45 (2/4), 0.95 (4/4 -> also 1.0 in the last bin).
    prob = np.array([0.05] * 4 + [0.45] * 4 + [0.95] * 3 + [1.0])
    y = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    bins = reliability_bins(y, prob)
    assert [b["count"] for b in bins] == [4, 0, 0, 0, 4, 0, 0, 0, 0, 4]
    assert (bins[4]["observed_rate"], bins[9]["observed_rate"], bins[1]["mean_predicted"]) == (0.5, 1.0, None)

    model_dir = make_model_dir(tmp_path, 1)
    record = {"split": "validation", "calibration": "platt", "bins": bins}
    (model_dir / "model.json").write_text(json.dumps({"reliability": record}))
    do_deploy(bucket_url, model_dir, "v1")
    folder = version_dir(bucket, "v1")

    assert "![Reliability on the validation split](reliability.svg)" in (folder / "model_card.md").read_text()
    card = json.loads((folder / "model_card.json").read_text())
    assert card["reliability"]["image"] == "reliability.svg" and card["reliability"]["bins"] == bins
    svg = ET.fromstring((folder / "reliability.svg").read_bytes())
    points = list(svg.iter("{http://www.w3.org/2000/svg}circle"))
    assert len(points) == 3
    # Points sit where observed vs predicted says: the 0.45 bin's point is at half height of the plot.
    ys = sorted(float(p.get("cy") or 0) for p in points)
    assert ys[0] < ys[1] < ys[2]
    assert "reliability.svg" in json.loads((folder / "checksums.json").read_text())["files"]


def test_no_reliability_diagram_without_validation_bins(tmp_path: Path, bucket: Path, bucket_url: str) -> None:
    do_deploy(bucket_url, make_model_dir(tmp_path, 1), "v1")
    folder = version_dir(bucket, "v1")
    assert not (folder / "reliability.svg").exists()
    assert "reliability" not in (folder / "model_card.md").read_text()
