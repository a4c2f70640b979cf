"""The shared state store: what one task hands to the next, under ``PIPELINES_STATE_URL``.

Stage records, raw/validated/quarantined partitions, model folders and
checkpoints, reports, data docs and alert markers live under one fsspec URL
(``s3://bucket/state`` in production).  A worker works on local files under
``PIPELINES_HOME`` -- its scratch space and cache, which it may lose at any
time -- and the stages move files across at their boundaries: `pull` before
reading, `push` after writing.  Both map ``<home>/<rel>`` to ``<state>/<rel>``,
so the layout (`pipelines.layout`) is the same in both places.

With no state URL (the embedded default) the store *is* the home folder: every
`pull` and `push` is a no-op and nothing changes for ``make run``.

Records name files by their state URI (`uri`), never by a worker's local
path; `local` turns such a URI back into this worker's copy, fetching it.
Credentials come from ``PIPELINES_STATE_CONN_ID`` (an Airflow connection,
resolved by `pipelines.connections`), an ``s3://<conn_id>@bucket/…`` URL, or
botocore's standard chain, as for the bucket.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fsspec import AbstractFileSystem

from pipelines.config import Settings
from pipelines.errors import PipelineError

log = logging.getLogger(__name__)

#: Environment variable naming the Airflow connection that holds the state store's S3 credentials.
CONN_ID_ENV = "PIPELINES_STATE_CONN_ID"
#: Under home: which stored version each cached file was fetched from (never pushed).
CACHE_STAMPS = ".state-cache"


class StateError(PipelineError):
    """The state store cannot be reached or holds something unexpected."""

    retryable = True  # an object store that is down or throttling comes back


@dataclass(frozen=True)
class StateStore:
    """``home`` (this worker's scratch) mirrored to ``url`` (shared by every worker)."""

    home: Path
    url: str
    fs: AbstractFileSystem | None
    root: str

    @property
    def is_home(self) -> bool:
        """True when the state *is* the home folder (embedded default): nothing to copy."""
        return self.fs is None

    # -- naming ------------------------------------------------------------------------

    def rel(self, path: Path) -> str:
        """``path`` (under home) as a key relative to the state root."""
        try:
            return Path(path).resolve().relative_to(self.home).as_posix()
        except ValueError as exc:
            raise StateError(f"{path} is not under the data root {self.home}") from exc

    def uri(self, path: Path) -> str:
        """The state URI of a file or folder under home: what records carry."""
        if self.is_home:
            return Path(path).resolve().as_uri()
        return f"{self.url.rstrip('/')}/{self.rel(path)}"

    def where(self, path: Path) -> str:
        """For people (emails, messages): the plain path when the state is home, else the state URI."""
        return str(path) if self.is_home else self.uri(path)

    def local(self, uri: str) -> Path:
        """This worker's copy of a state URI from a record, fetched when the cache lacks it.

        A plain path (a record written before state URLs) is taken as it is.
        """
        if "://" not in uri:
            return Path(uri)
        if self.is_home:
            return Path(urlsplit(uri).path)
        prefix = self.url.rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise StateError(f"{uri} is not under the state URL {self.url} (PIPELINES_STATE_URL changed?)")
        path = self.home / uri[len(prefix) :]
        self.pull(path)
        return path

    def _key(self, path: Path) -> str:
        return posixpath.join(self.root, self.rel(path))

    # -- queries and single files ------------------------------------------------------

    def exists(self, path: Path) -> bool:
        if self.fs is None:
            return Path(path).exists()
        with _store_errors(self.url):
            self.fs.invalidate_cache(self._key(path))  # another worker may have written it since
            return bool(self.fs.exists(self._key(path)))

    def names(self, folder: Path) -> set[str]:
        """File names directly in ``folder`` of the state (one listing; empty when it is missing)."""
        if self.fs is None:
            return {p.name for p in Path(folder).iterdir()} if Path(folder).is_dir() else set()
        with _store_errors(self.url):
            try:
                self.fs.invalidate_cache(self._key(folder))  # another worker may have changed it
                return {posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self._key(folder), detail=False)}
            except FileNotFoundError:
                return set()

    def remove(self, path: Path) -> None:
        """Delete a file from the state and this worker's cache (missing is fine)."""
        Path(path).unlink(missing_ok=True)
        if self.fs is not None:
            with _store_errors(self.url):
                if self.fs.exists(self._key(path)):
                    self.fs.rm(self._key(path))

    def move(self, src: Path, dst: Path) -> None:
        """Move a file to another place in the state (and the cache): the partition hand-over."""
        import shutil

        if Path(src).exists():
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        if self.fs is not None:
            with _store_errors(self.url):
                if Path(dst).exists():
                    self._put(Path(dst))
                else:
                    self._parent(self._key(dst))
                    self.fs.copy(self._key(src), self._key(dst))
                if self.fs.exists(self._key(src)):
                    self.fs.rm(self._key(src))

    # -- moving files across --------------------------------------------------------------

    def push(self, *paths: Path) -> None:
        """Upload files or folders under home to the state (folders recursively); missing ones are skipped."""
        if self.fs is None:
            return
        with _store_errors(self.url):
            for path in map(Path, paths):
                if path.is_dir():
                    for file in sorted(p for p in path.rglob("*") if p.is_file()):
                        self._put(file)
                elif path.is_file():
                    self._put(path)

    def mirror(self, folder: Path) -> None:
        """Make the state's copy of ``folder`` hold exactly its files here: push them, delete the others.

        For a folder whose owner deletes files as it goes (Lightning keeps only
        the latest epoch's checkpoint): a plain `push` would keep every file
        ever uploaded in the store.
        """
        if self.fs is None:
            return
        self.push(folder)
        key = self._key(folder)
        with _store_errors(self.url):
            self.fs.invalidate_cache(key)
            try:
                stored = self.fs.find(key, detail=True)
            except FileNotFoundError:
                return
            for found, meta in stored.items():
                local = self.home / posixpath.relpath(found, self.root)
                if meta.get("type") != "directory" and not local.is_file():
                    self.fs.rm(found)

    def _put(self, path: Path) -> None:
        assert self.fs is not None
        stamp = self._stamp(path)
        if stamp.is_file() and path.stat().st_mtime_ns <= stamp.stat().st_mtime_ns:
            return  # fetched from the state and not changed since: the store has these bytes
        key = self._key(path)
        self._parent(key)
        self.fs.put_file(str(path), key)
        stamp.unlink(missing_ok=True)  # names the version this upload replaced

    def _stamp(self, path: Path) -> Path:
        return self.home / CACHE_STAMPS / f"{self.rel(path)}.json"

    def _parent(self, key: str) -> None:
        # Object stores need no folders (and asking costs a request); a local or mounted store does.
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(posixpath.dirname(key), exist_ok=True)

    def pull(self, *paths: Path, names: Collection[str] | None = None) -> None:
        """Download files or folders from the state into home, when the state holds them.

        A cached copy is kept only when it was fetched from the same stored
        version (ETag, or size and modification time); anything else -- a copy
        this worker wrote itself, a stale or damaged one -- is fetched again.
        ``names`` limits a folder to the files of those names (still one listing).
        """
        if self.fs is None:
            return
        with _store_errors(self.url):
            for path in map(Path, paths):
                key = self._key(path)
                self.fs.invalidate_cache(key)
                try:
                    info = self.fs.info(key)
                except FileNotFoundError:
                    continue
                if info.get("type") == "directory":
                    for found, meta in self.fs.find(key, detail=True).items():
                        # Some S3 servers (SeaweedFS) list a folder whose last file was deleted as an entry.
                        wanted = names is None or posixpath.basename(found) in names
                        if meta.get("type") != "directory" and wanted:
                            self._fetch(found, self.home / posixpath.relpath(found, self.root), meta)
                else:
                    self._fetch(key, path, info)

    def _fetch(self, key: str, path: Path, info: dict[str, Any]) -> None:
        """Download ``key`` to ``path`` unless the cached copy came from this very object version."""
        assert self.fs is not None
        stamp = self._stamp(path)
        version = _object_version(info)
        if path.is_file() and stamp.is_file() and stamp.read_text() == version:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        try:
            self.fs.get_file(key, str(tmp))
        except FileNotFoundError:
            # Deleted since it was listed (another worker's flush sent a queued email and removed
            # it): the state no longer holds it, so there is nothing to pull.
            tmp.unlink(missing_ok=True)
            return
        tmp.replace(path)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(version)


def _object_version(info: dict[str, Any]) -> str:
    """What identifies one stored version of an object: its ETag (S3) or size and mtime."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5")
    when = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    return json.dumps({"tag": str(tag), "size": info.get("size"), "when": str(when)}, sort_keys=True)


def open_state(settings: Settings) -> StateStore:
    """The state store of ``settings`` (one filesystem per URL per process)."""
    return _open(settings.home.resolve(), settings.state_url.strip())


@functools.lru_cache(maxsize=8)
def _open(home: Path, url: str) -> StateStore:
    if not url or (urlsplit(url).scheme == "file" and Path(urlsplit(url).path).resolve() == home):
        return StateStore(home=home, url=home.as_uri(), fs=None, root=str(home))
    from fsspec.core import url_to_fs

    from pipelines.connections import ConnectionConfigError, s3_url_options

    try:
        plain, options = s3_url_options(url, conn_id_env=CONN_ID_ENV)
    except ConnectionConfigError as exc:
        raise StateError(f"{exc} (the state store, PIPELINES_STATE_URL)") from exc
    fs, root = url_to_fs(plain, **options)
    return StateStore(home=home, url=plain.rstrip("/"), fs=fs, root=root.rstrip("/"))


@contextmanager
def _store_errors(url: str) -> Iterator[None]:
    """Re-raise access and connection failures of the store as `StateError` naming URL and settings."""
    from pipelines.connections import is_store_error

    try:
        yield
    except Exception as exc:
        if not is_store_error(exc):
            raise
        raise StateError(
            f"state store {url} denied access or could not be reached ({type(exc).__name__}: {exc}); "
            f"check PIPELINES_STATE_URL and its credentials ({CONN_ID_ENV} and AIRFLOW_CONN_<ID>, or "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL)"
        ) from exc
