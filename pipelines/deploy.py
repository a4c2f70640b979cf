"""The deployment bucket: immutable version folders and one pointer flipped last.

Any fsspec URL works (``file://…`` embedded, ``s3://…`` in production; the
filesystem package is found by fsspec, never imported here)::

    <bucket>/<vertical>/versions/<model_version>/   immutable once complete
        weights.pt, preprocessing.json, model.json   every file of the model dir
        metrics.json, model_card.md, lineage.json
        checksums.json                               written last: sha256 of every other file
    <bucket>/<vertical>/production.json              the pointer, written after the folder verifies

A folder without ``checksums.json`` (or whose files no longer match it) is an
interrupted upload: a later deploy rewrites it; a complete one is never
rewritten.  The pointer is one small object, replaced atomically (temp file +
rename locally; a single PUT on object stores), so a reader sees the old model
or the new one, never half of either.  Serving (`load_production`) verifies
every byte it loads against the checksums and the pointer's digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import DeployError
from pipelines.layout import write_bytes_atomic

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.modeling import ScoringModel

log = logging.getLogger(__name__)

POINTER_FILE = "production.json"
CHECKSUMS_FILE = "checksums.json"
METRICS_FILE = "metrics.json"
MODEL_CARD_FILE = "model_card.md"
LINEAGE_FILE = "lineage.json"
#: Names the deploy writes itself; a model dir holding one would be shadowed.
RESERVED_FILES = frozenset({CHECKSUMS_FILE, METRICS_FILE, MODEL_CARD_FILE, LINEAGE_FILE})
#: Vertical and version names become path segments: no separators, no "..".
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DeployResult:
    """What a deploy or rollback did.

    ``changed`` is True when the pointer moved; ``bytes_uploaded`` counts the
    version folder's bytes written (0 when it was already complete).
    """

    uri: str
    model_version: str
    previous_version: str | None
    changed: bool
    bytes_uploaded: int


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
        return self.model.predict(frame)

    def metrics(self) -> dict[str, Any]:
        """The metrics the version was deployed with."""
        return json.loads((self.path / METRICS_FILE).read_text())


# -- bucket paths and hashing -------------------------------------------------


@dataclass(frozen=True)
class _Bucket:
    fs: AbstractFileSystem
    root: str

    @classmethod
    def open(cls, bucket_url: str) -> _Bucket:
        fs, root = url_to_fs(bucket_url)
        return cls(fs, root.rstrip("/"))

    def pointer(self, vertical: str) -> str:
        return posixpath.join(self.root, vertical, POINTER_FILE)

    def versions(self, vertical: str) -> str:
        return posixpath.join(self.root, vertical, "versions")

    def version(self, vertical: str, model_version: str) -> str:
        return posixpath.join(self.versions(vertical), model_version)

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)


def _check_name(value: str, what: str) -> None:
    if not _SAFE_NAME.match(value):
        raise DeployError(f"{what} {value!r} is not a safe path segment (letters, digits, '.', '_', '-')")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_stream(fh: Any) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _sha256_local(path: Path) -> str:
    with path.open("rb") as fh:
        return _sha256_stream(fh)


def _sha256_remote(fs: AbstractFileSystem, path: str) -> str:
    with fs.open(path, "rb") as fh:
        return _sha256_stream(fh)


def _json_bytes(payload: Any) -> bytes:
    # Sorted keys: the same content always gives the same bytes (and digest).
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()


# -- the manifest (checksums.json) ---------------------------------------------


def _parse_manifest(data: bytes, where: str) -> dict[str, str]:
    """The ``files`` map of a checksums.json, rejecting names that escape the folder."""
    try:
        files = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(f"{where} is not a valid checksums manifest ({exc}); redeploy the version") from exc
    for name in files:
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or name in ("", CHECKSUMS_FILE):
            raise DeployError(f"{where} lists an unsafe file name {name!r}; redeploy the version")
    return dict(files)


def _read_manifest(bucket: _Bucket, vertical: str, model_version: str) -> tuple[bytes, dict[str, str]] | None:
    path = posixpath.join(bucket.version(vertical, model_version), CHECKSUMS_FILE)
    try:
        data = bucket.fs.cat_file(path)
    except FileNotFoundError:
        return None
    return data, _parse_manifest(data, bucket.uri(path))


def _remote_problems(bucket: _Bucket, folder: str, files: dict[str, str]) -> list[str]:
    """One line per file of ``folder`` that is missing or differs from its checksum."""
    problems = []
    for name, expected in sorted(files.items()):
        try:
            actual = _sha256_remote(bucket.fs, posixpath.join(folder, name))
        except FileNotFoundError:
            problems.append(f"{name} is missing (expected sha256 {expected})")
            continue
        if actual != expected:
            problems.append(f"{name}: expected sha256 {expected}, found {actual}")
    return problems


@dataclass(frozen=True)
class _FolderState:
    """What a version folder holds: its manifest and, if it is not intact, why."""

    manifest: bytes | None
    files: dict[str, str]
    failure: str | None


def _inspect(bucket: _Bucket, vertical: str, model_version: str) -> _FolderState:
    """Hash every file of the version folder against its ``checksums.json``."""
    folder = bucket.version(vertical, model_version)
    bucket.fs.invalidate_cache(folder)  # object stores cache listings; read fresh
    manifest = _read_manifest(bucket, vertical, model_version)
    if manifest is None:
        failure = f"{bucket.uri(folder)} has no {CHECKSUMS_FILE} (never deployed, or the upload was interrupted)"
        return _FolderState(None, {}, failure)
    data, files = manifest
    problems = _remote_problems(bucket, folder, files)
    failure = f"{bucket.uri(folder)} does not match its {CHECKSUMS_FILE}: " + "; ".join(problems)
    return _FolderState(data, files, failure if problems else None)


def verify_version(bucket_url: str, vertical: str, model_version: str) -> dict[str, str]:
    """Check every file of a version folder; return ``{file: sha256}`` or raise `DeployError`."""
    _check_name(vertical, "vertical")
    _check_name(model_version, "model version")
    state = _inspect(_Bucket.open(bucket_url), vertical, model_version)
    if state.failure:
        raise DeployError(f"{state.failure}. Redeploy the version or roll back to another.", vertical=vertical)
    return state.files


def list_versions(bucket_url: str, vertical: str) -> list[str]:
    """Version folders present in the bucket (complete or not), sorted by name."""
    bucket = _Bucket.open(bucket_url)
    try:
        entries = bucket.fs.ls(bucket.versions(vertical), detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(str(entry).rstrip("/")) for entry in entries)


# -- the pointer ---------------------------------------------------------------


def read_pointer(bucket_url: str, vertical: str) -> dict[str, Any] | None:
    """The vertical's ``production.json`` (``version``, ``previous_version``, ...), or None."""
    _check_name(vertical, "vertical")
    bucket = _Bucket.open(bucket_url)
    path = bucket.pointer(vertical)
    try:
        data = bucket.fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        pointer = json.loads(data)
    except ValueError as exc:
        raise DeployError(
            f"pointer {bucket.uri(path)} is not valid JSON ({exc}); restore it with a rollback to a named version",
            vertical=vertical,
        ) from exc
    if not isinstance(pointer, dict) or not pointer.get("version"):
        raise DeployError(
            f"pointer {bucket.uri(path)} names no version; roll back to a named version", vertical=vertical
        )
    return pointer


def _write_pointer(bucket: _Bucket, vertical: str, pointer: dict[str, Any]) -> None:
    path = bucket.pointer(vertical)
    data = _json_bytes(pointer)
    if isinstance(bucket.fs, LocalFileSystem):
        # A plain write can be seen half-done; rename is atomic on one filesystem.
        write_bytes_atomic(Path(path), data)
    else:
        # An object store's single PUT is atomic: readers get old or new, whole.
        bucket.fs.pipe_file(path, data)
    bucket.fs.invalidate_cache(posixpath.dirname(path))


def _new_pointer(
    bucket: _Bucket,
    vertical: str,
    state: _FolderState,
    *,
    version: str,
    ds: str | None,
    previous: str | None,
    action: str,
) -> dict[str, Any]:
    assert state.manifest is not None  # callers point only at verified folders
    return {
        "vertical": vertical,
        "version": version,
        "ds": ds,
        "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # Lets a loader detect a folder rewritten after the pointer was set.
        "checksums_sha256": _sha256(state.manifest),
        "previous_version": previous,
        "action": action,
        "uri": bucket.uri(bucket.version(vertical, version)),
    }


# -- deploy --------------------------------------------------------------------


def _collect_files(model_dir: Path, extra: dict[str, bytes]) -> dict[str, Path | bytes]:
    """Every file to upload: the model dir's (recursively, hidden temp files skipped) plus ``extra``."""
    if not model_dir.is_dir():
        raise DeployError(f"model directory {model_dir} does not exist; run the train stage first")
    files: dict[str, Path | bytes] = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        # Dot-files are leftovers of interrupted atomic writes, never model content.
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = path
    if not files:
        raise DeployError(f"model directory {model_dir} holds no files; run the train stage first")
    clash = sorted(RESERVED_FILES & set(files))
    if clash:
        raise DeployError(f"model directory {model_dir} holds {clash}, names the deploy writes itself; rename them")
    return {**files, **extra}


def _digest(item: Path | bytes) -> str:
    return _sha256(item) if isinstance(item, bytes) else _sha256_local(item)


def _upload(bucket: _Bucket, folder: str, files: dict[str, Path | bytes], manifest: bytes) -> int:
    """Write ``files`` then ``checksums.json`` into a fresh ``folder``; return bytes written."""
    fs = bucket.fs
    if fs.exists(folder):
        # Leftovers of an interrupted upload; start clean so no stray file survives.
        fs.rm(folder, recursive=True)
    written = 0
    for name, item in files.items():
        target = posixpath.join(folder, name)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if isinstance(item, bytes):
            fs.pipe_file(target, item)
            written += len(item)
        else:
            fs.put_file(str(item), target)
            written += item.stat().st_size
    # Last: its presence is what marks the folder complete.
    fs.pipe_file(posixpath.join(folder, CHECKSUMS_FILE), manifest)
    fs.invalidate_cache(folder)
    return written + len(manifest)


def deploy_version(
    *,
    bucket_url: str,
    vertical: str,
    model_version: str,
    model_dir: Path,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    model_card: str,
    ds: str,
) -> DeployResult:
    """Upload ``model_dir`` as an immutable version folder, verify it, then flip the pointer.

    Idempotent: a complete, intact folder is never rewritten, an interrupted
    one is rewritten, and a pointer already naming the version is left alone
    (``changed=False``).  Any failure before the pointer write leaves
    production exactly as it was.
    """
    _check_name(vertical, "vertical")
    _check_name(model_version, "model version")
    bucket = _Bucket.open(bucket_url)
    folder = bucket.version(vertical, model_version)
    files = _collect_files(
        model_dir,
        {
            METRICS_FILE: _json_bytes(metrics),
            LINEAGE_FILE: _json_bytes(lineage),
            MODEL_CARD_FILE: model_card.encode(),
        },
    )
    checksums = {name: _digest(item) for name, item in files.items()}
    state, uploaded = _ensure_folder(
        bucket, vertical=vertical, model_version=model_version, ds=ds, files=files, checksums=checksums
    )

    pointer = read_pointer(bucket_url, vertical)
    if pointer is not None and pointer["version"] == model_version:
        if pointer.get("checksums_sha256") != _sha256(state.manifest or b""):
            # The folder production points at was repaired just now: same version,
            # new manifest bytes; refresh the digest or serving would refuse it.
            refreshed = {**pointer, "checksums_sha256": _sha256(state.manifest or b"")}
            _write_pointer(bucket, vertical, refreshed)
            log.warning("%s: repaired %s in place; pointer digest refreshed", vertical, model_version)
        else:
            log.info("%s: %s is already in production; pointer unchanged", vertical, model_version)
        return DeployResult(bucket.uri(folder), model_version, pointer.get("previous_version"), False, uploaded)
    previous = pointer["version"] if pointer else None
    new = _new_pointer(bucket, vertical, state, version=model_version, ds=ds, previous=previous, action="deploy")
    _write_pointer(bucket, vertical, new)
    log.info("%s: production %s -> %s", vertical, previous, model_version)
    return DeployResult(bucket.uri(folder), model_version, previous, True, uploaded)


def _ensure_folder(
    bucket: _Bucket,
    *,
    vertical: str,
    model_version: str,
    ds: str,
    files: dict[str, Path | bytes],
    checksums: dict[str, str],
) -> tuple[_FolderState, int]:
    """Make the version folder complete and intact; return its state and the bytes uploaded."""
    state = _inspect(bucket, vertical, model_version)
    if state.failure is None:
        differing = sorted(n for n in checksums.keys() | state.files.keys() if checksums.get(n) != state.files.get(n))
        if differing:
            # Immutable means the first complete upload wins; say so rather than hide it.
            log.warning("%s: %s already deployed; keeping it although %s differ", vertical, model_version, differing)
        return state, 0
    folder = bucket.version(vertical, model_version)
    if state.manifest is not None or bucket.fs.exists(folder):
        log.warning("%s: rewriting incomplete version folder: %s", vertical, state.failure)
    manifest = {"algorithm": "sha256", "vertical": vertical, "model_version": model_version, "ds": ds}
    uploaded = _upload(bucket, folder, files, _json_bytes({**manifest, "files": checksums}))
    # Read back what the store now holds before anything may point at it.
    state = _inspect(bucket, vertical, model_version)
    if state.failure or state.files != checksums:
        raise DeployError(
            f"read-back after upload failed ({state.failure or 'checksums changed: another writer?'}); "
            "production is unchanged; retry the deploy",
            vertical=vertical,
            ds=ds,
        )
    return state, uploaded


# -- rollback ------------------------------------------------------------------


def rollback(*, bucket_url: str, vertical: str, to_version: str | None = None) -> DeployResult:
    """Point production at ``to_version`` or at the pointer's ``previous_version``.

    Refuses with `DeployError` when nothing is deployed, there is no previous
    version, or the target folder does not verify.  Rolling back to the
    version already in production changes nothing.
    """
    _check_name(vertical, "vertical")
    bucket = _Bucket.open(bucket_url)
    pointer = read_pointer(bucket_url, vertical)
    if pointer is None:
        raise DeployError(
            f"nothing is deployed at {bucket.uri(bucket.pointer(vertical))}: there is nothing to roll back",
            vertical=vertical,
        )
    current = pointer["version"]
    target = to_version or pointer.get("previous_version")
    if target is None:
        known = ", ".join(v for v in list_versions(bucket_url, vertical) if v != current) or "none"
        raise DeployError(
            f"production is {current} and the pointer records no previous version: nothing to roll back to; "
            f"name a version explicitly (other versions in the bucket: {known})",
            vertical=vertical,
        )
    _check_name(target, "model version")
    folder = bucket.version(vertical, target)
    if target == current:
        return DeployResult(bucket.uri(folder), target, pointer.get("previous_version"), False, 0)
    state = _inspect(bucket, vertical, target)
    if state.failure or state.manifest is None:
        raise DeployError(
            f"refusing to roll back to {target}: {state.failure}; production stays {current}", vertical=vertical
        )
    ds = json.loads(state.manifest).get("ds")
    new = _new_pointer(bucket, vertical, state, version=target, ds=ds, previous=current, action="rollback")
    _write_pointer(bucket, vertical, new)
    log.info("%s: rolled back production %s -> %s", vertical, current, target)
    return DeployResult(bucket.uri(folder), target, current, True, 0)


# -- serving: load what is deployed ----------------------------------------------


def load_production(vertical: str, *, bucket_url: str | None = None, cache_dir: Path | None = None) -> ProductionModel:
    """Load the version the pointer names, verified byte for byte (the serving contract)."""
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


def _default_bucket_url() -> str:
    from pipelines.config import Settings

    return Settings.from_env().bucket_url


def _default_cache_dir() -> Path:
    from pipelines.config import Settings

    return Settings.from_env().home / "cache" / "deployed"


def _load(
    vertical: str, model_version: str, bucket_url: str, cache_dir: Path | None, pointer: dict[str, Any] | None
) -> ProductionModel:
    _check_name(vertical, "vertical")
    _check_name(model_version, "model version")
    bucket = _Bucket.open(bucket_url)
    folder = bucket.version(vertical, model_version)
    manifest = _read_manifest(bucket, vertical, model_version)
    if manifest is None:
        raise DeployError(
            f"{bucket.uri(folder)} has no {CHECKSUMS_FILE}: it was never completely deployed", vertical=vertical
        )
    manifest_bytes, files = manifest
    expected_digest = (pointer or {}).get("checksums_sha256")
    if expected_digest and _sha256(manifest_bytes) != expected_digest:
        raise DeployError(
            f"{CHECKSUMS_FILE} of {bucket.uri(folder)} has sha256 {_sha256(manifest_bytes)} but the pointer "
            f"expects {expected_digest}: the folder was rewritten after deployment; roll back or redeploy",
            vertical=vertical,
        )
    local = _cached_copy(
        bucket, folder, files, manifest_bytes, (cache_dir or _default_cache_dir()) / vertical / model_version
    )

    from pipelines.modeling import load_model_dir

    return ProductionModel(
        vertical=vertical, version=model_version, path=local, pointer=pointer, model=load_model_dir(local)
    )


def _local_intact(path: Path, files: dict[str, str], manifest_bytes: bytes) -> bool:
    checksums = path / CHECKSUMS_FILE
    if not checksums.is_file() or checksums.read_bytes() != manifest_bytes:
        return False
    return all((path / name).is_file() and _sha256_local(path / name) == sha for name, sha in files.items())


def _cached_copy(bucket: _Bucket, folder: str, files: dict[str, str], manifest_bytes: bytes, target: Path) -> Path:
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
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                bucket.fs.get_file(posixpath.join(folder, name), str(dest))
            except FileNotFoundError as exc:
                raise DeployError(
                    f"{bucket.uri(folder)} lacks {name}; refusing to load it; redeploy or roll back"
                ) from exc
            actual = _sha256_local(dest)
            if actual != expected:
                raise DeployError(
                    f"{name} of {bucket.uri(folder)}: expected sha256 {expected}, found {actual}; "
                    "refusing to load a corrupted model; redeploy or roll back"
                )
        (staging / CHECKSUMS_FILE).write_bytes(manifest_bytes)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _local_intact(target, files, manifest_bytes):
        raise DeployError(f"local cache {target} changed while loading; retry")
    return target


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
