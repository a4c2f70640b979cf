"""Deploy to the bucket: immutable version folders and one pointer flipped last.

The bucket's layout, credentials and read side live in `pipelines.release.bucket`;
this module writes.  A deploy uploads every file of the version folder, then
``checksums.json`` (sha256 of every other file), reads the folder back and
verifies it, and only then writes ``production.json``.  A folder without
``checksums.json`` (or whose files no longer match it) is an interrupted
upload: a later deploy rewrites it; a complete one is never rewritten.  The
pointer is one small object, replaced atomically (temp file + rename locally;
a single PUT on object stores), so a reader sees the old model or the new
one, never half of either.

Serving (`load_production`, `load_version`) lives in `pipelines.release.serving` and
is re-exported here for callers that import it from ``pipelines.release.deploy``.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import DeployError
from pipelines.layout import write_bytes_atomic
from pipelines.release.bucket import (
    CHECKSUMS_FILE,
    CONFUSION_MATRIX_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_CARD_JSON_FILE,
    POINTER_FILE,
    RELIABILITY_FILE,
    Bucket,
    FolderState,
    check_name,
    inspect_folder,
    json_bytes,
    list_versions,
    read_pointer,
    sha256_bytes,
    sha256_stream,
    store_errors,
    verify_version,
)
from pipelines.release.card_assets import card_files
from pipelines.release.serving import ProductionModel, load_production, load_version

__all__ = [
    "POINTER_FILE",
    "RESERVED_FILES",
    "DeployResult",
    "ProductionModel",
    "deploy_version",
    "list_versions",
    "load_production",
    "load_version",
    "read_pointer",
    "rollback",
    "verify_version",
]

log = logging.getLogger(__name__)

#: Names the deploy writes itself; a model dir holding one would be shadowed.
RESERVED_FILES = frozenset(
    {
        CHECKSUMS_FILE,
        METRICS_FILE,
        MODEL_CARD_FILE,
        MODEL_CARD_JSON_FILE,
        CONFUSION_MATRIX_FILE,
        RELIABILITY_FILE,
        LINEAGE_FILE,
    }
)


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


# -- the pointer ---------------------------------------------------------------


def _write_pointer(bucket: Bucket, vertical: str, pointer: dict[str, Any]) -> None:
    path = bucket.pointer(vertical)
    data = json_bytes(pointer)
    if isinstance(bucket.fs, LocalFileSystem):
        # A plain write can be seen half-done; rename is atomic on one filesystem.
        write_bytes_atomic(Path(path), data)
    else:
        # An object store's single PUT is atomic: readers get old or new, whole.
        bucket.fs.pipe_file(path, data)
    bucket.fs.invalidate_cache(posixpath.dirname(path))


def _new_pointer(
    bucket: Bucket,
    vertical: str,
    state: FolderState,
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
        "checksums_sha256": sha256_bytes(state.manifest),
        "previous_version": previous,
        "action": action,
        "uri": bucket.uri(bucket.version(vertical, version)),
    }


# -- what goes into a version folder --------------------------------------------


def _collect_files(model_dir: Path, exclude: Collection[str] = ()) -> dict[str, Path | bytes]:
    """Every file of the model dir (recursively; hidden temp files and ``exclude`` skipped)."""
    if not model_dir.is_dir():
        raise DeployError(f"model directory {model_dir} does not exist; run the train stage first")
    files: dict[str, Path | bytes] = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        # Dot-files are leftovers of interrupted atomic writes, never model content.
        if path.is_file() and rel not in exclude and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = path
    if not files:
        raise DeployError(f"model directory {model_dir} holds no files; run the train stage first")
    clash = sorted(RESERVED_FILES & set(files))
    if clash:
        raise DeployError(f"model directory {model_dir} holds {clash}, names the deploy writes itself; rename them")
    return files


def _digest(item: Path | bytes) -> str:
    if isinstance(item, bytes):
        return sha256_bytes(item)
    with item.open("rb") as fh:
        return sha256_stream(fh)


# -- deploy --------------------------------------------------------------------


def _upload(bucket: Bucket, folder: str, files: dict[str, Path | bytes], manifest: bytes) -> int:
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
    model_card_json: dict[str, Any] | None = None,
    exclude: Collection[str] = (),
) -> DeployResult:
    """Upload ``model_dir`` as an immutable version folder, verify it, then flip the pointer.

    ``metrics`` is the evaluation record; its ``challenger.confusion_matrix``
    becomes ``confusion_matrix.svg``; the validation reliability bins in the
    model dir's ``model.json`` become ``reliability.svg``.  ``model_card_json`` adds to (and
    overrides keys of) the generated ``model_card.json``.  ``exclude`` names
    model-dir files to leave out (exports the gate refused).

    Idempotent: a complete, intact folder is never rewritten, an interrupted
    one is rewritten, and a pointer already naming the version is left alone
    (``changed=False``).  Any failure before the pointer write leaves
    production exactly as it was.
    """
    check_name(vertical, "vertical")
    check_name(model_version, "model version")
    files = _collect_files(model_dir, exclude)
    files.update(
        card_files(
            vertical=vertical,
            model_version=model_version,
            ds=ds,
            model_dir=model_dir,
            metrics=metrics,
            lineage=lineage,
            model_card=model_card,
            model_card_json=model_card_json,
        )
    )
    checksums = {name: _digest(item) for name, item in files.items()}
    with store_errors(bucket_url, vertical=vertical):
        return _publish(
            bucket_url, vertical=vertical, model_version=model_version, ds=ds, files=files, checksums=checksums
        )


def _publish(
    bucket_url: str,
    *,
    vertical: str,
    model_version: str,
    ds: str,
    files: dict[str, Path | bytes],
    checksums: dict[str, str],
) -> DeployResult:
    """Make the folder complete and verified, then point production at it (unless it already is)."""
    bucket = Bucket.open(bucket_url)
    folder = bucket.version(vertical, model_version)
    state, uploaded = _ensure_folder(
        bucket, vertical=vertical, model_version=model_version, ds=ds, files=files, checksums=checksums
    )
    pointer = read_pointer(bucket_url, vertical)
    if pointer is not None and pointer["version"] == model_version:
        if pointer.get("checksums_sha256") != sha256_bytes(state.manifest or b""):
            # The folder production points at was repaired just now: same version,
            # new manifest bytes; refresh the digest or serving would refuse it.
            refreshed = {**pointer, "checksums_sha256": sha256_bytes(state.manifest or b"")}
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
    bucket: Bucket,
    *,
    vertical: str,
    model_version: str,
    ds: str,
    files: dict[str, Path | bytes],
    checksums: dict[str, str],
) -> tuple[FolderState, int]:
    """Make the version folder complete and intact; return its state and the bytes uploaded."""
    state = inspect_folder(bucket, vertical, model_version)
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
    uploaded = _upload(bucket, folder, files, json_bytes({**manifest, "files": checksums}))
    # Read back what the store now holds before anything may point at it.
    state = inspect_folder(bucket, vertical, model_version)
    if state.failure or state.files != checksums:
        raise DeployError(
            f"read-back after upload failed ({state.failure or 'checksums changed: another writer?'}); "
            "production is unchanged; retry the deploy",
            vertical=vertical,
            ds=ds,
        )
    return state, uploaded


# -- rollback ------------------------------------------------------------------


def _current_pointer(bucket_url: str, vertical: str, to_version: str | None) -> dict[str, Any] | None:
    """The pointer; an unreadable one only stops a rollback that names no target."""
    try:
        return read_pointer(bucket_url, vertical)
    except DeployError:
        if to_version is None:
            raise
        # A named rollback is how a damaged pointer is repaired: rewrite it whole.
        log.warning("%s: pointer unreadable; a rollback to %s rewrites it", vertical, to_version)
        return {"version": None}


def rollback(
    *,
    bucket_url: str,
    vertical: str,
    to_version: str | None = None,
    guard: Callable[[str], None] | None = None,
) -> DeployResult:
    """Point production at ``to_version`` or at the pointer's ``previous_version``.

    Refuses with `DeployError` when nothing is deployed, there is no previous
    version, or the target folder does not verify; ``guard(target)`` runs
    before anything is read from the target and may raise to refuse too.
    Rolling back to the version already in production changes nothing.  This
    is the bucket half; `pipelines.release.rollout.rollback_vertical` adds the
    registry's approval check, the registry row and the notice.
    """
    check_name(vertical, "vertical")
    with store_errors(bucket_url, vertical=vertical):
        return _move_pointer(bucket_url, vertical, to_version, guard)


def _move_pointer(
    bucket_url: str, vertical: str, to_version: str | None, guard: Callable[[str], None] | None
) -> DeployResult:
    bucket = Bucket.open(bucket_url)
    pointer = _current_pointer(bucket_url, vertical, to_version)
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
    check_name(target, "model version")
    folder = bucket.version(vertical, target)
    if target == current:
        return DeployResult(bucket.uri(folder), target, pointer.get("previous_version"), False, 0)
    if guard is not None:
        guard(target)
    state = inspect_folder(bucket, vertical, target)
    if state.failure or state.manifest is None:
        raise DeployError(
            f"refusing to roll back to {target}: {state.failure}; production stays {current}", vertical=vertical
        )
    ds = json.loads(state.manifest).get("ds")
    new = _new_pointer(bucket, vertical, state, version=target, ds=ds, previous=current, action="rollback")
    _write_pointer(bucket, vertical, new)
    log.info("%s: rolled back production %s -> %s", vertical, current, target)
    return DeployResult(bucket.uri(folder), target, current, True, 0)
