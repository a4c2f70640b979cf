"""The serving contract: load the deployed model, verified, and score raw rows.

A consuming service needs only this::

    from pipelines.release.serving import load_production

    model = load_production("finance")            # reads production.json, verifies, caches
    proba = model.predict_proba(raw_rows)          # a pandas DataFrame of the spec's raw columns
    labels = model.predict(raw_rows)               # 0/1 at the deployed decision threshold

`load_production` reads the pointer, checks that the version's
``checksums.json`` is the one the pointer was written for, downloads every
file into a local cache and verifies its sha256 before anything is
deserialised; weights are loaded with ``torch.load(weights_only=True)`` and
the stored preprocessing turns raw rows into model inputs.  Any mismatch
raises `DeployError` and loads nothing.  Imports stay light: fsspec here,
torch/numpy/pandas only when a model is actually loaded (`pipelines.model.modeling`).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import DeployError
from pipelines.release.bucket import (
    CHECKSUMS_FILE,
    METRICS_FILE,
    Bucket,
    check_name,
    read_manifest,
    read_pointer,
    sha256_bytes,
    sha256_stream,
    store_errors,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.model.modeling import ScoringModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProductionModel:
    """A verified, locally cached version folder, loaded for scoring."""

    vertical: str
    version: str
    path: Path
    #: The pointer it was loaded through (None for `load_version`).
    pointer: dict[str, Any] | None
    model: ScoringModel

    @property
    def decision_threshold(self) -> float:
        return self.model.decision_threshold

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probability per raw row (the model does its own preprocessing)."""
        return self.model.predict_proba(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """0/1 per raw row at the deployed decision threshold."""
        return self.model.predict(frame)

    def metrics(self) -> dict[str, Any]:
        """The metrics the version was deployed with."""
        return dict(json.loads((self.path / METRICS_FILE).read_text()))


def load_production(vertical: str, *, bucket_url: str | None = None, cache_dir: Path | None = None) -> ProductionModel:
    """Load the version the pointer names, verified byte for byte.

    ``bucket_url`` defaults to ``PIPELINES_BUCKET_URL``; ``cache_dir`` to
    ``<PIPELINES_HOME>/cache/deployed``.
    """
    bucket_url = bucket_url or _default_bucket_url()
    pointer = read_pointer(bucket_url, vertical)
    if pointer is None:
        raise DeployError(f"no production model in {bucket_url}: deploy one first", vertical=vertical)
    return _load(vertical, pointer["version"], bucket_url, cache_dir, pointer)


def load_version(
    vertical: str, model_version: str, *, bucket_url: str | None = None, cache_dir: Path | None = None
) -> ProductionModel:
    """Load one named version folder, verified (champion re-scoring, A/B checks)."""
    return _load(vertical, model_version, bucket_url or _default_bucket_url(), cache_dir, None)


def check_production(vertical: str, *, bucket_url: str | None = None) -> dict[str, Any]:
    """Whether what the pointer names would load: ``{"version", "ok", "problem"}``.

    Verifies every file of the version folder against its ``checksums.json``
    and that manifest against the digest the pointer was written with (what
    `load_production` checks before deserialising anything), without
    downloading or loading the model.  Nothing deployed is ``ok`` with no
    version.  ``status`` shows it, so a corrupted artefact is visible before
    a scoring service or the next champion re-scoring trips over it.
    """
    from pipelines.release.bucket import verify_version

    bucket_url = bucket_url or _default_bucket_url()
    try:
        pointer = read_pointer(bucket_url, vertical)
    except DeployError as exc:
        return {"version": None, "ok": False, "problem": str(exc)}
    if pointer is None:
        return {"version": None, "ok": True, "problem": None}
    version = str(pointer["version"])
    try:
        verify_version(bucket_url, vertical, version)
        with store_errors(bucket_url, vertical=vertical):
            manifest = read_manifest(Bucket.open(bucket_url), vertical, version)
    except DeployError as exc:
        return {"version": version, "ok": False, "problem": str(exc)}
    expected = pointer.get("checksums_sha256")
    if manifest is not None and expected and sha256_bytes(manifest[0]) != expected:
        problem = (
            f"{CHECKSUMS_FILE} of {version} was rewritten after deployment (the pointer expects sha256 "
            f"{expected}); serving refuses it: roll back or redeploy"
        )
        return {"version": version, "ok": False, "problem": problem}
    return {"version": version, "ok": True, "problem": None}


def fetch_verified(
    vertical: str,
    model_version: str,
    *,
    bucket_url: str,
    cache_dir: Path | None = None,
    pointer: dict[str, Any] | None = None,
) -> Path:
    """A local copy of the version folder whose every file matches its checksums, without loading it.

    With ``pointer``, the folder's ``checksums.json`` must also be the one the
    pointer was written for.  The scoring service loads its own format from it.
    """
    check_name(vertical, "vertical")
    check_name(model_version, "model version")
    with store_errors(bucket_url, vertical=vertical):
        return _fetch(vertical, model_version, bucket_url, cache_dir, pointer)


def _default_bucket_url() -> str:
    from pipelines.config import Settings

    return Settings.from_env().bucket_url


def _default_cache_dir() -> Path:
    from pipelines.config import Settings

    return Settings.from_env().home / "cache" / "deployed"


def _load(
    vertical: str, model_version: str, bucket_url: str, cache_dir: Path | None, pointer: dict[str, Any] | None
) -> ProductionModel:
    check_name(vertical, "vertical")
    check_name(model_version, "model version")
    with store_errors(bucket_url, vertical=vertical):
        local = _fetch(vertical, model_version, bucket_url, cache_dir, pointer)

    from pipelines.model.modeling import load_model_dir

    return ProductionModel(
        vertical=vertical, version=model_version, path=local, pointer=pointer, model=load_model_dir(local)
    )


def _fetch(
    vertical: str, model_version: str, bucket_url: str, cache_dir: Path | None, pointer: dict[str, Any] | None
) -> Path:
    """A verified local copy of the version folder (downloaded only when the cache is not intact)."""
    bucket = Bucket.open(bucket_url)
    folder = bucket.version(vertical, model_version)
    manifest = read_manifest(bucket, vertical, model_version)
    if manifest is None:
        raise DeployError(
            f"{bucket.uri(folder)} has no {CHECKSUMS_FILE}: it was never completely deployed", vertical=vertical
        )
    manifest_bytes, files = manifest
    expected_digest = (pointer or {}).get("checksums_sha256")
    if expected_digest and sha256_bytes(manifest_bytes) != expected_digest:
        raise DeployError(
            f"{CHECKSUMS_FILE} of {bucket.uri(folder)} has sha256 {sha256_bytes(manifest_bytes)} but the pointer "
            f"expects {expected_digest}: the folder was rewritten after deployment; roll back or redeploy",
            vertical=vertical,
        )
    target = (cache_dir or _default_cache_dir()) / vertical / model_version
    return _cached_copy(bucket, folder, files, manifest_bytes, target)


# -- the local cache ------------------------------------------------------------


def _sha256_local(path: Path) -> str:
    with path.open("rb") as fh:
        return sha256_stream(fh)


def _local_intact(path: Path, files: dict[str, str], manifest_bytes: bytes) -> bool:
    checksums = path / CHECKSUMS_FILE
    if not checksums.is_file() or checksums.read_bytes() != manifest_bytes:
        return False
    return all((path / name).is_file() and _sha256_local(path / name) == sha for name, sha in files.items())


def _cached_copy(bucket: Bucket, folder: str, files: dict[str, str], manifest_bytes: bytes, target: Path) -> Path:
    """A local copy of ``folder`` at ``target`` whose every file matches ``files``.

    The cache is only a copy: an intact one is reused, anything else is
    downloaded afresh into a temp dir, verified, and swapped in whole.
    """
    if _local_intact(target, files, manifest_bytes):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        for name, expected in sorted(files.items()):
            _download_verified(bucket, folder, name, expected, staging / name)
        (staging / CHECKSUMS_FILE).write_bytes(manifest_bytes)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _local_intact(target, files, manifest_bytes):
        raise DeployError(f"local cache {target} changed while loading; retry")
    return target


def _download_verified(bucket: Bucket, folder: str, name: str, expected: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        bucket.fs.get_file(posixpath.join(folder, name), str(dest))
    except FileNotFoundError as exc:
        raise DeployError(f"{bucket.uri(folder)} lacks {name}; refusing to load it; redeploy or roll back") from exc
    actual = _sha256_local(dest)
    if actual != expected:
        raise DeployError(
            f"{name} of {bucket.uri(folder)}: expected sha256 {expected}, found {actual}; "
            "refusing to load a corrupted model; redeploy or roll back"
        )


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` with ``staging`` by renames, so no reader sees a half-filled dir."""
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    if target.exists():
        os.replace(target, stale)
    try:
        os.replace(staging, target)
    except OSError:
        # Another loader swapped its own verified copy in first; the caller rechecks it.
        log.info("cache %s was filled concurrently", target)
    shutil.rmtree(stale, ignore_errors=True)
