"""The deployment bucket's layout, credentials and read side, shared by deploy and serving.

Any fsspec URL works: ``file://…`` embedded, ``s3://bucket/prefix`` in
production (s3fs).  The layout::

    <bucket>/<vertical>/versions/<model_version>/   immutable once complete
        weights.pt, preprocessing.json, model.json   every file of the model dir
        model.onnx, model.int8.onnx                  its ONNX exports (each only if the gate passed it)
        metrics.json, lineage.json                   evaluation and provenance
        model_card.md, model_card.json               the model card, for people and for tools
        confusion_matrix.svg                         the holdout confusion matrix
        reliability.svg                              the validation reliability diagram (with a validation split)
        checksums.json                               written last: sha256 of every other file
    <bucket>/<vertical>/production.json              the pointer, written after the folder verifies

S3 credentials never come from the repo.  With ``PIPELINES_BUCKET_CONN_ID``
set (or an Airflow-style ``s3://<conn_id>@bucket/…`` URL, as
``ObjectStoragePath`` writes it) they come from that Airflow connection, resolved
by `pipelines.connections` (``AIRFLOW_CONN_<ID>``, JSON or URI, outside Airflow;
Airflow's own lookup inside it): login = access key id, password = secret,
extra ``endpoint_url`` / ``region_name`` / ``aws_session_token``.
Otherwise botocore's standard chain applies: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``,
``AWS_PROFILE``, instance roles.  Serving and the CLI never import Airflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from pipelines.errors import DeployError

POINTER_FILE = "production.json"
CHECKSUMS_FILE = "checksums.json"
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
MODEL_CARD_FILE = "model_card.md"
MODEL_CARD_JSON_FILE = "model_card.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.svg"
RELIABILITY_FILE = "reliability.svg"
#: Environment variable naming the Airflow connection that holds S3 credentials.
CONN_ID_ENV = "PIPELINES_BUCKET_CONN_ID"
#: Vertical and version names become path segments: no separators, no "..".
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20
_S3_SCHEMES = ("s3", "s3a")


def check_name(value: str, what: str) -> None:
    """Refuse a vertical or version name that could escape its folder."""
    if not _SAFE_NAME.match(value):
        raise DeployError(f"{what} {value!r} is not a safe path segment (letters, digits, '.', '_', '-')")


# -- hashing and canonical JSON -------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(fh: Any) -> str:
    """sha256 of a binary file object, read in 1 MiB chunks (weights can be large)."""
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def json_bytes(payload: Any) -> bytes:
    """Canonical JSON: the same content always gives the same bytes (and digest)."""
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()


# -- credentials -------------------------------------------------------------------


def storage_options(url: str, *, conn_id_env: str = CONN_ID_ENV) -> tuple[str, dict[str, Any]]:
    """``url`` without any ``<conn_id>@`` and the fsspec options to open it with.

    Only S3 URLs take options; ``{}`` leaves credentials to botocore's
    standard chain (environment, profile, instance role).
    """
    parts = urlsplit(url)
    if parts.scheme not in _S3_SCHEMES:
        return url, {}
    conn_id = os.environ.get(conn_id_env, "").strip() or None
    if "@" in parts.netloc:
        # ObjectStoragePath's spelling: s3://aws_default@bucket/key.
        conn_id, _, host = parts.netloc.rpartition("@")
        url = urlunsplit(parts._replace(netloc=host))
    if not conn_id:
        return url, {}
    return url, _connection_options(conn_id, conn_id_env)


def _connection_options(conn_id: str, conn_id_env: str) -> dict[str, Any]:
    """s3fs options from the Airflow connection ``conn_id`` (`pipelines.connections`)."""
    from pipelines import connections

    try:
        conn = connections.get(conn_id)
    except connections.ConnectionConfigError as exc:
        raise DeployError(f"{exc}; see docs/deploy.md") from exc
    if conn is None:
        raise DeployError(
            f"S3 connection {conn_id!r} is not configured: set {connections.env_var(conn_id)} "
            '(e.g. {"conn_type": "aws", "login": KEY_ID, "password": SECRET, "extra": {"endpoint_url": URL}}) '
            f"or add it as an Airflow connection, or unset {conn_id_env} to use the standard AWS "
            "environment (AWS_ACCESS_KEY_ID, ...)"
        )
    return connections.s3_options(conn)


def is_store_error(exc: BaseException) -> bool:
    """Denied access, missing credentials or an unreachable endpoint (s3fs/botocore)."""
    if isinstance(exc, PermissionError):
        return True
    # botocore is only loaded when an s3:// URL was opened; never import it for file://.
    if "botocore.exceptions" in sys.modules:
        from botocore.exceptions import BotoCoreError

        return isinstance(exc, BotoCoreError)
    return False


@contextmanager
def store_errors(bucket_url: str, *, vertical: str | None = None) -> Iterator[None]:
    """Re-raise the store's access and connection failures as `DeployError` saying what to check."""
    try:
        yield
    except Exception as exc:
        if not is_store_error(exc):
            raise
        raise DeployError(
            f"bucket {bucket_url} denied access or could not be reached ({type(exc).__name__}: {exc}); "
            f"check PIPELINES_BUCKET_URL and its credentials ({CONN_ID_ENV} and AIRFLOW_CONN_<ID>, or "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL)",
            vertical=vertical,
        ) from exc


# -- the bucket ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """An opened bucket URL: its filesystem and the root path inside it."""

    fs: AbstractFileSystem
    root: str

    @classmethod
    def open(cls, bucket_url: str) -> Bucket:
        url, options = storage_options(bucket_url)
        fs, root = url_to_fs(url, **options)
        return cls(fs, root.rstrip("/"))

    def pointer(self, vertical: str) -> str:
        return posixpath.join(self.root, vertical, POINTER_FILE)

    def versions(self, vertical: str) -> str:
        return posixpath.join(self.root, vertical, "versions")

    def version(self, vertical: str, model_version: str) -> str:
        return posixpath.join(self.versions(vertical), model_version)

    def uri(self, path: str) -> str:
        return str(self.fs.unstrip_protocol(path))

    def sha256(self, path: str) -> str:
        with self.fs.open(path, "rb") as fh:
            return sha256_stream(fh)


# -- the manifest (checksums.json) ---------------------------------------------------


def parse_manifest(data: bytes, where: str) -> dict[str, str]:
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


def read_manifest(bucket: Bucket, vertical: str, model_version: str) -> tuple[bytes, dict[str, str]] | None:
    """The raw bytes and the file map of a version's checksums.json, or None when absent."""
    path = posixpath.join(bucket.version(vertical, model_version), CHECKSUMS_FILE)
    try:
        data = bucket.fs.cat_file(path)
    except FileNotFoundError:
        return None
    return data, parse_manifest(data, bucket.uri(path))


def _problems(bucket: Bucket, folder: str, files: dict[str, str]) -> list[str]:
    """One line per file of ``folder`` that is missing or differs from its checksum."""
    problems = []
    for name, expected in sorted(files.items()):
        try:
            actual = bucket.sha256(posixpath.join(folder, name))
        except FileNotFoundError:
            problems.append(f"{name} is missing (expected sha256 {expected})")
            continue
        if actual != expected:
            problems.append(f"{name}: expected sha256 {expected}, found {actual}")
    return problems


@dataclass(frozen=True)
class FolderState:
    """What a version folder holds: its manifest and, if it is not intact, why."""

    manifest: bytes | None
    files: dict[str, str]
    failure: str | None


def inspect_folder(bucket: Bucket, vertical: str, model_version: str) -> FolderState:
    """Hash every file of the version folder against its ``checksums.json``."""
    folder = bucket.version(vertical, model_version)
    bucket.fs.invalidate_cache(folder)  # object stores cache listings; read fresh
    manifest = read_manifest(bucket, vertical, model_version)
    if manifest is None:
        failure = f"{bucket.uri(folder)} has no {CHECKSUMS_FILE} (never deployed, or the upload was interrupted)"
        return FolderState(None, {}, failure)
    data, files = manifest
    problems = _problems(bucket, folder, files)
    failure = f"{bucket.uri(folder)} does not match its {CHECKSUMS_FILE}: " + "; ".join(problems)
    return FolderState(data, files, failure if problems else None)


def verify_version(bucket_url: str, vertical: str, model_version: str) -> dict[str, str]:
    """Check every file of a version folder; return ``{file: sha256}`` or raise `DeployError`."""
    check_name(vertical, "vertical")
    check_name(model_version, "model version")
    with store_errors(bucket_url, vertical=vertical):
        state = inspect_folder(Bucket.open(bucket_url), vertical, model_version)
    if state.failure:
        raise DeployError(f"{state.failure}. Redeploy the version or roll back to another.", vertical=vertical)
    return state.files


def list_versions(bucket_url: str, vertical: str) -> list[str]:
    """Version folders present in the bucket (complete or not), sorted by name."""
    check_name(vertical, "vertical")
    with store_errors(bucket_url, vertical=vertical):
        bucket = Bucket.open(bucket_url)
        bucket.fs.invalidate_cache(bucket.versions(vertical))
        try:
            entries = bucket.fs.ls(bucket.versions(vertical), detail=False)
        except FileNotFoundError:
            return []
    return sorted(posixpath.basename(str(entry).rstrip("/")) for entry in entries)


# -- the pointer -----------------------------------------------------------------------


def read_pointer(bucket_url: str, vertical: str) -> dict[str, Any] | None:
    """The vertical's ``production.json`` (``version``, ``previous_version``, ...), or None."""
    check_name(vertical, "vertical")
    with store_errors(bucket_url, vertical=vertical):
        bucket = Bucket.open(bucket_url)
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
