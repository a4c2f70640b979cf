"""Version the training window with DVC: one git+DVC repository per vertical.

Each vertical owns ``Layout(settings, vertical).dvc_repo`` (``<home>/dvc/<vertical>/``)
so two verticals never contend for DVC's repository lock; all of them push to
the one shared DVC remote ``settings.dvc_remote`` (a local folder by default,
any DVC remote URL such as ``s3://…`` in production).

A snapshot is ``window.parquet`` tracked by ``window.parquet.dvc``, committed
with a message naming vertical, date, md5 and row count, and tagged
``<vertical>@<ds>``.  The tag is written last, after the push succeeded, so a
tag always means "committed here and stored in the remote"; a run that died
half-way simply redoes the missing steps on its rerun.

The data version id is ``dv-`` + the first 12 hex digits of DVC's md5 of the
window file: the same frame gives the same bytes (fixed Parquet options) and
therefore the same id on any machine.  A library upgrade that changes the
Parquet writer's output (pyarrow's ``created_by``, pandas metadata) gives a new
id for unchanged data: a visible, deliberate event rather than a silent one.

A rerun recognises an unchanged window without serialising it: the caller
passes ``inputs``, a fingerprint of everything the frame was built from
(`inputs_fingerprint`: the partition files' md5s, the config, the code and
library versions), and the commit records it as a ``Data-Inputs`` trailer.
Same tag, same fingerprint, same row count: the tagged version is returned
as is.  Any other rerun serialises and compares md5s, as without a fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from pipelines.config import Settings, parse_ds
from pipelines.errors import VersioningError
from pipelines.layout import Layout

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

WINDOW_FILE = "window.parquet"
DVC_FILE = f"{WINDOW_FILE}.dvc"
#: Partial writes of the window; a crashed run may leave one, the next removes it.
TMP_PREFIX = f".{WINDOW_FILE}."
REMOTE_NAME = "storage"
#: Environment variable naming the Airflow connection with the S3 DVC remote's credentials (optional).
DVC_CONN_ID_ENV = "PIPELINES_DVC_CONN_ID"
#: How long a snapshot waits for another process (a CLI run, a second Airflow
#: run) working on the same vertical's repo before giving up.
LOCK_TIMEOUT_S = 600.0

#: Author and committer of every commit in the data repositories.
_IDENTITY = b"pipelines <pipelines@localhost>"
_ROWS = re.compile(r"^Data-Rows: (\d+)$", re.MULTILINE)
_INPUTS = re.compile(r"^Data-Inputs: ([0-9a-f]{64})$", re.MULTILINE)
#: Bump when the fingerprint's recipe changes: old fingerprints then miss (safe).
_FINGERPRINT_FORMAT = "window-inputs/1"
#: Libraries whose release can change the window's bytes for the same inputs.
_WRITER_LIBS = ("pyarrow", "pandas", "numpy")
#: A file modified this recently when hashed is not cached (`_StatCache`): its stamp may not show a next write.
_RACY_S = 2.0
#: Where `inputs_fingerprint`'s stat cache lives in a data repo: DVC's own git-ignored scratch folder.
STAT_CACHE = Path(".dvc") / "tmp" / "inputs-md5.json"
# Fixed writer options: library defaults drift between releases, and the data
# version id is the md5 of these bytes.  Measured on 1M-row frames: snappy is
# the fastest codec and within 5% of zstd's size on realistic columns; a 256 KiB
# dictionary page limit makes high-cardinality floats fall back to plain
# encoding early (the default 1 MiB cost up to 2x the write time on them).
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "snappy",
    "version": "2.6",
    "data_page_version": "1.0",
    "data_page_size": 1 << 20,
    "use_dictionary": True,
    "dictionary_pagesize_limit": 1 << 18,
    "write_statistics": True,
    "row_group_size": 1_000_000,
}
# Loggers that DVC wires to stdout at INFO on import (progress chatter, "git add"
# hints); inside an Airflow task log only their warnings and errors matter.
_CHATTY_LOGGERS = ("dvc", "dvc_data", "dvc_objects", "scmrepo")


@dataclass(frozen=True)
class DataVersion:
    """One versioned training window, recorded with everything trained from it."""

    vertical: str
    ds: str
    #: ``dv-`` + first 12 hex digits of ``md5``: equal data, equal id.
    id: str
    #: DVC's md5 of the window file (full).
    md5: str
    #: Git tag in the vertical's data repo, ``<vertical>@<ds>``.
    tag: str
    #: Git commit the tag points at.
    commit: str
    rows: int
    #: The vertical's window file in its repo workspace.  It holds *this*
    #: version only until a later date is snapshotted; read a version with
    #: `read_snapshot` (by tag), never by this path.
    path: str
    #: False when the snapshot already existed and nothing was written.
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataVersion:
        known = {f.name for f in fields(cls)}
        missing = known - set(data)
        if missing:
            raise VersioningError(f"data version record lacks {sorted(missing)}: {data!r}")
        values = {k: data[k] for k in known}
        values["rows"] = int(values["rows"])
        values["created"] = bool(values["created"])
        return cls(**values)


def tag_name(vertical: str, ds: str) -> str:
    """The git tag of a vertical's snapshot for one date (a valid ref name)."""
    return f"{vertical}@{ds}"


def version_id(md5: str) -> str:
    return f"dv-{md5[:12]}"


def window_md5(frame: pd.DataFrame) -> str:
    """DVC's md5 of the window file ``frame`` would be versioned as, without writing it."""
    sink = _HashingWriter(None)
    _serialise(frame, sink)
    return sink.hexdigest()


def inputs_fingerprint(
    files: Iterable[Path], *, config: Any, code: Iterable[Path] = (), stat_cache: Path | None = None
) -> str:
    """sha256 over the content of ``files`` (name + md5), ``config`` (JSON) and ``code``, plus writer versions.

    What `snapshot_window` compares to skip serialising an unchanged window: it
    must change whenever the frame could.  Contents are hashed: a partition
    rewritten or pulled from the state store with other bytes is always seen.
    ``stat_cache`` (a JSON file, used only where its folder exists) keeps each
    file's md5 under its size, inode, mtime and ctime, as DVC's own state does,
    so an unchanged window costs a ``stat`` per file instead of reading them all
    (`_StatCache`).  A false miss only costs the serialisation it saves.
    """
    import json
    from importlib import metadata

    cache = _StatCache.open(stat_cache)
    digest = hashlib.sha256(_FINGERPRINT_FORMAT.encode())
    for lib in _WRITER_LIBS:
        digest.update(f"\n{lib}=={metadata.version(lib)}".encode())
    digest.update(b"\nconfig:" + json.dumps(config, sort_keys=True, default=str).encode())
    for kind, paths in (("file", files), ("code", code)):
        for path in paths:
            digest.update(f"\n{kind}:{path.name}:{cache.md5(path)}".encode())
    cache.save()
    return digest.hexdigest()


class _StatCache:
    """md5s of files keyed by ``(size, inode, mtime_ns, ctime_ns)``, kept in a JSON file between runs.

    A hit needs all four to match.  A rewrite changes the ctime (which no tool can
    set back) and an atomic replace the inode, so a stale hit needs a same-size
    rewrite of the same inode within one kernel timestamp tick.  To rule that out
    too, as git does with "racily clean" entries, a file whose mtime or ctime is
    within ``_RACY_S`` of the hash is hashed but not cached.  Only the entries of the
    latest call are kept, so the file stays the size of one window.
    """

    def __init__(self, path: Path | None, entries: dict[str, list[Any]]) -> None:
        self.path = path
        self.entries = entries
        self.used: dict[str, list[Any]] = {}

    @classmethod
    def open(cls, path: Path | None) -> _StatCache:
        import json

        if path is None or not path.parent.is_dir():
            return cls(None, {})
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):  # missing or torn: a cold cache
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def md5(self, path: Path) -> str:
        if self.path is None:
            return _file_md5(path)
        key = str(path.absolute())
        before = _stamp(path)
        hit = self.entries.get(key)
        if isinstance(hit, list) and hit[:-1] == before:
            self.used[key] = hit
            return str(hit[-1])
        md5 = _file_md5(path)
        # Racy: changed (written, or its mtime set) too recently for the stamp to show a next change.
        if _stamp(path) == before and time.time() - max(before[2], before[3]) / 1e9 > _RACY_S:
            self.used[key] = [*before, md5]
        return md5

    def save(self) -> None:
        if self.path is not None and self.used != self.entries:
            from pipelines.layout import write_json_atomic

            write_json_atomic(self.path, self.used)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _file_md5(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


# -- public API ----------------------------------------------------------------


def snapshot_window(
    frame: pd.DataFrame,
    *,
    vertical: str,
    ds: str,
    settings: Settings,
    inputs: str | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> DataVersion:
    """Version ``frame`` as the vertical's window for ``ds``; push it to the remote.

    Identical data for an already tagged date is a no-op (``created=False``,
    nothing rewritten).  Different data for a tagged date (the source changed
    upstream) gets a new commit and the tag moves to it, with a warning.
    ``inputs`` (`inputs_fingerprint` of what ``frame`` was built from) lets a
    rerun with the same inputs skip even serialising the frame.
    """
    if inputs is not None and not re.fullmatch(r"[0-9a-f]{64}", inputs):
        raise VersioningError(
            f"inputs {inputs!r} is not an inputs_fingerprint (64 hex digits)", vertical=vertical, ds=ds
        )
    _check_ds(vertical, ds)
    root = Layout(settings, vertical).dvc_repo
    path = root / WINDOW_FILE
    tag = tag_name(vertical, ds)

    with _repo_lock(settings, vertical, ds, lock_timeout_s), _quiet_dvc(), _naming(vertical, ds):
        tagged = _tagged(root, vertical, ds)
        previous = tagged[0] if tagged else None
        if tagged is not None and inputs is not None and tagged[1] == inputs and tagged[0].rows == len(frame):
            # The tag means committed and pushed; the same inputs mean the same frame.
            log.info("%s %s: inputs unchanged, snapshot %s already at %s", vertical, ds, tagged[0].id, tag)
            return tagged[0]
        if previous is not None:
            # A rerun: hash the serialised frame without writing a byte.
            md5 = window_md5(frame)
            if md5 == previous.md5:
                log.info("%s %s: data unchanged, snapshot %s already at %s", vertical, ds, previous.id, tag)
                return previous

        remote = _remote_url(settings)
        _ensure_repo(root, remote, vertical=vertical, ds=ds)
        # Serialise, hash and write in one streaming pass (no in-memory copy of
        # the file), next to the workspace file so the final rename is atomic.
        tmp, md5 = _write_window(frame, root)
        try:
            _track(root, tmp, md5, vertical=vertical, ds=ds)
        finally:
            tmp.unlink(missing_ok=True)
        _push(root, remote, vertical=vertical, ds=ds)
        commit = _commit_and_tag(root, tag, md5, len(frame), inputs=inputs, vertical=vertical, ds=ds)

    if previous is not None:
        log.warning(
            "%s %s: data changed upstream since it was first versioned (%s -> %s); tag %s moved to %s",
            vertical,
            ds,
            previous.id,
            version_id(md5),
            tag,
            commit[:12],
        )
    else:
        log.info("%s %s: versioned %d rows as %s (tag %s)", vertical, ds, len(frame), version_id(md5), tag)
    return DataVersion(
        vertical=vertical,
        ds=ds,
        id=version_id(md5),
        md5=md5,
        tag=tag,
        commit=commit,
        rows=len(frame),
        path=str(path),
        created=True,
    )


def read_snapshot(
    *,
    vertical: str,
    tag: str,
    settings: Settings,
    commit: str | None = None,
    md5: str | None = None,
    columns: list[str] | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> pd.DataFrame:
    """Read the window versioned under ``tag``, pulling from the remote if the cache lacks it.

    ``columns`` reads only those of the window's columns (the ones it has, in
    that order): a reader that compares a few features needs a fraction of a
    window that is gigabytes in memory.

    ``commit`` pins the exact snapshot a run recorded: a tag moves when the
    same date is re-snapshotted with changed data, a commit never does.
    ``md5`` (what the snapshot record and the registry's lineage hold) makes
    the read work on any worker: when this worker's data repo lacks that
    version -- its home is empty, or its tag names other data -- the window is
    read by md5 from the DVC remote (`read_by_md5`).
    """
    import io

    root = Layout(settings, vertical).dvc_repo
    ds = tag.partition("@")[2] or None
    if md5 is not None:
        local = _version_at_tag(root, vertical, ds) if ds else None
        if local is None or local.md5 != md5:
            return read_by_md5(vertical=vertical, md5=md5, settings=settings, ds=ds, columns=columns)
        commit = local.commit  # this worker's own commit of the same data
    with _repo_lock(settings, vertical, ds, lock_timeout_s), _quiet_dvc():
        if _git_ref(root, f"refs/tags/{tag}", vertical=vertical, ds=ds) is None:
            raise VersioningError(
                f"no snapshot tagged {tag!r} in {root}; run the snapshot stage for that date first",
                vertical=vertical,
                ds=ds,
            )
        remote = _remote_url(settings)
        # The remote lives in config.local, which applies to every revision:
        # refresh it so an old tag is read from wherever the data lives now.
        _configure_local(root, remote, vertical=vertical, ds=ds)
        with _window_file(root, commit or tag, remote=remote, vertical=vertical, ds=ds) as fh:
            # A local cache object opens as a plain file: parse it in place
            # (measured 2.5x faster than reading it into memory first).
            return _read_window(fh if fh.seekable() else io.BytesIO(fh.read()), columns)


def _read_window(source: BinaryIO, columns: list[str] | None) -> pd.DataFrame:
    """The window Parquet in ``source`` (seekable): every column, or those of ``columns`` it has."""
    import pandas as pd
    import pyarrow.parquet as pq

    if columns is not None:
        names = set(pq.read_schema(source).names)
        source.seek(0)
        columns = [c for c in columns if c in names]
    return pd.read_parquet(source, columns=columns)


@contextmanager
def _window_file(root: Path, rev: str | None, *, remote: str, vertical: str, ds: str | None) -> Iterator[BinaryIO]:
    """``window.parquet`` of the DVC repo at ``root`` (at git revision ``rev``), fetched from the remote if needed."""
    import dvc.api

    with (
        _translating(
            f"reading {WINDOW_FILE} at {rev or 'the pinned md5'}",
            root=root,
            vertical=vertical,
            ds=ds,
            hint=_remote_hint(remote),
        ),
        dvc.api.open(WINDOW_FILE, repo=str(root), rev=rev, mode="rb") as fh,
    ):
        yield fh


def read_by_md5(
    *, vertical: str, md5: str, settings: Settings, ds: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """The window file with DVC md5 ``md5``, read from the DVC remote; no git history needed.

    ``columns`` reads only those columns, as in `read_snapshot`.

    A scratch DVC repository (no git) under ``<home>/dvc-pins/<vertical>/<md5>/``
    holds only a ``.dvc`` file naming that md5, and ``dvc.api.open`` streams
    the object from the remote through it: DVC's public API, DVC's remote
    layout.  The bytes are checked against the md5, so a corrupted remote or
    cache object fails loudly instead of training on other data.
    """
    import io

    import yaml

    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise VersioningError(f"{md5!r} is not a DVC md5 (32 hex digits)", vertical=vertical, ds=ds)
    pin = Layout(settings, vertical).home / "dvc-pins" / vertical / md5
    remote = _remote_url(settings)
    with _repo_lock(settings, vertical, ds, LOCK_TIMEOUT_S), _quiet_dvc():
        with _translating("preparing a read by md5", root=pin, vertical=vertical, ds=ds):
            if not (pin / ".dvc" / "config").exists():
                from dvc.repo import Repo

                pin.mkdir(parents=True, exist_ok=True)
                with _environ(DVC_SITE_CACHE_DIR=_site_cache_dir(pin)):
                    Repo.init(str(pin), no_scm=True, force=True).close()
            _configure_local(pin, remote, vertical=vertical, ds=ds)
            pointer = {"outs": [{"md5": md5, "path": WINDOW_FILE, "hash": "md5"}]}
            (pin / DVC_FILE).write_text(yaml.safe_dump(pointer, sort_keys=False))
        with _window_file(pin, None, remote=remote, vertical=vertical, ds=ds) as fh:
            data = fh.read()
    got = hashlib.md5(data).hexdigest()
    if got != md5:
        raise VersioningError(
            f"the DVC remote {remote} returned {len(data)} bytes with md5 {got} for object {md5}: the stored "
            f"object is corrupted; restore it from a backup or re-snapshot the date",
            vertical=vertical,
            ds=ds,
        )
    return _read_window(io.BytesIO(data), columns)


def find_version(*, vertical: str, ds: str, settings: Settings) -> DataVersion | None:
    """The snapshot already versioned for ``ds``, or None (lets a rerun find its own output)."""
    _check_ds(vertical, ds)
    return _version_at_tag(Layout(settings, vertical).dvc_repo, vertical, ds)


# -- repository ----------------------------------------------------------------


def _ensure_repo(root: Path, remote: str, *, vertical: str, ds: str) -> None:
    """git init + dvc init + config + first commit, each step only if missing.

    Every step is idempotent, so a process killed half-way through leaves a repo
    the next run completes.
    """
    from dvc.repo import Repo
    from scmrepo.git import Git

    with _translating("initialising the data repository", root=root, vertical=vertical, ds=ds):
        root.mkdir(parents=True, exist_ok=True)
        if not (root / ".git").is_dir():
            Git.init(root)

        dvc_dir = root / ".dvc"
        if not (dvc_dir / "config").exists():
            # Repo.init opens the repo before any config exists; the variable keeps
            # it from creating its site cache under /var/tmp/dvc (see _configure_local).
            with _environ(DVC_SITE_CACHE_DIR=_site_cache_dir(root)):
                Repo.init(str(root), force=True).close()
            from dvc.config import Config

            with Config(dvc_dir=str(dvc_dir)).edit("repo") as conf:
                # analytics: only the `dvc` CLI reports, but operators run it in here.
                conf["core"]["analytics"] = False
                # autostage off: we stage exactly the files we commit.
                conf["core"]["autostage"] = False
                # reflink where the filesystem can (no shared bytes to corrupt);
                # otherwise hardlink: DVC makes cache objects read-only, and we only
                # ever replace window.parquet by rename, never write into it, so the
                # cache cannot be modified through the workspace.  No symlink: the
                # workspace file would dangle if someone cleared the cache.  copy
                # last (doubles disk use, but always works).
                conf["cache"]["type"] = "reflink,hardlink,copy"
        _configure_local(root, remote, vertical=vertical, ds=ds)
        for leftover in root.glob(f"{TMP_PREFIX}*.tmp"):
            leftover.unlink()

        scm = Git(root)
        try:
            if scm.no_commits:
                files = [dvc_dir / "config", dvc_dir / ".gitignore", root / ".dvcignore"]
                scm.add([str(p) for p in files if p.exists()])
                _commit(root, f"Initialise data repository for vertical {vertical}\n")
        finally:
            scm.close()


def _configure_local(root: Path, remote: str, *, vertical: str, ds: str | None) -> None:
    """Point the repo at the current remote (machine config, not history).

    ``config.local`` is untracked and read for every revision, so changing
    ``PIPELINES_DVC_REMOTE`` re-points old tags too.  DVC's site cache (state
    and index DBs) goes inside the repo instead of ``/var/tmp/dvc`` so a data
    root is self-contained and needs no writable system folder.
    """
    from dvc.config import Config

    dvc_dir = root / ".dvc"
    site_cache = _site_cache_dir(root)
    with _translating("configuring the DVC remote", root=root, vertical=vertical, ds=ds, hint=_remote_hint(remote)):
        config = Config(dvc_dir=str(dvc_dir), validate=False)
        current = config.load_one("local")
        section = _remote_section(remote)
        if (
            current.get("remote", {}).get(REMOTE_NAME, {}) == section
            and current.get("core", {}).get("remote") == REMOTE_NAME
            and current.get("core", {}).get("site_cache_dir") == site_cache
        ):
            return
        with config.edit("local") as conf:
            conf["remote"][REMOTE_NAME] = section
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["site_cache_dir"] = site_cache


def _remote_section(remote: str) -> dict[str, str]:
    """The remote's DVC config: its URL and, for S3 with ``PIPELINES_DVC_CONN_ID``, that connection's credentials.

    The connection comes through `pipelines.connections` (Airflow's own lookup
    inside a task), like the bucket's and the state store's; without it DVC
    uses botocore's standard chain.  ``config.local`` is the worker's untracked
    scratch config, never committed.
    """
    from pipelines.connections import ConnectionConfigError, s3_url_options

    try:
        url, options = s3_url_options(remote, conn_id_env=DVC_CONN_ID_ENV)
    except ConnectionConfigError as exc:
        raise VersioningError(f"{exc} (the DVC remote, PIPELINES_DVC_REMOTE)") from exc
    names = {
        "key": "access_key_id",
        "secret": "secret_access_key",
        "token": "session_token",
        "endpoint_url": "endpointurl",
    }
    section = {"url": url, **{names[k]: str(v) for k, v in options.items() if k in names}}
    region = (options.get("client_kwargs") or {}).get("region_name")
    if region:
        section["region"] = str(region)
    return section


def _track(root: Path, tmp: Path, md5: str, *, vertical: str, ds: str) -> None:
    """Make ``window.parquet`` hold the bytes in ``tmp`` and `dvc add` it."""
    from dvc.repo import Repo

    path = root / WINDOW_FILE
    # Same bytes already in place (a rerun after a crash, or an unchanged day):
    # keep that file, so DVC recognises it (same inode, mtime, size) and does not re-hash it.
    keep = path.exists() and _workspace_md5(root) == md5
    with (
        _translating(f"adding {WINDOW_FILE} to DVC", root=root, vertical=vertical, ds=ds),
        Repo(str(root)) as repo,
    ):
        repo.scm_context.quiet = True
        if not keep:
            _replace(tmp, path)
        tracked = _added_md5(repo, path)
        if tracked != md5 and keep:
            # The kept file was changed behind DVC's back (possible only with the
            # copy cache type): use ours after all.
            _replace(tmp, path)
            tracked = _added_md5(repo, path)
        if tracked != md5:
            raise VersioningError(
                f"DVC hashed {path} as {tracked}, expected {md5}: something else is writing "
                f"to the data repository {root}; stop it and rerun",
                vertical=vertical,
                ds=ds,
            )


def _push(root: Path, remote: str, *, vertical: str, ds: str) -> None:
    from dvc.repo import Repo

    with (
        _translating(
            "pushing the window to the DVC remote", root=root, vertical=vertical, ds=ds, hint=_remote_hint(remote)
        ),
        Repo(str(root)) as repo,
    ):
        repo.push(remote=REMOTE_NAME)


def _site_cache_dir(root: Path) -> str:
    return str(root / ".dvc" / "tmp" / "site_cache")


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _HashingWriter:
    """Write-only file object for pyarrow: md5s every byte, then passes it on (or drops it)."""

    closed = False

    def __init__(self, fh: BinaryIO | None) -> None:
        self._fh = fh
        self._md5 = hashlib.md5()
        self._pos = 0

    def write(self, data: Any) -> int:
        self._md5.update(data)
        if self._fh is not None:
            self._fh.write(data)
        size = memoryview(data).nbytes
        self._pos += size
        return size

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        # pyarrow closes its sink when done; the underlying file is the caller's.
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


def _serialise(frame: pd.DataFrame, sink: _HashingWriter) -> None:
    """Parquet with fixed options: same frame, same bytes.  Row order is the caller's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError) as exc:
        # e.g. an object column mixing str and int: a data bug upstream of here.
        raise VersioningError(
            f"the window cannot be stored as Parquet: {exc}; give each column one type before snapshotting"
        ) from exc
    pq.write_table(table, sink, **_PARQUET_OPTIONS)


def _write_window(frame: pd.DataFrame, directory: Path) -> tuple[Path, str]:
    """Serialise ``frame`` into a temp file in ``directory``; return it and its md5."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _HashingWriter(fh)
            _serialise(frame, sink)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, sink.hexdigest()


def _replace(tmp: Path, path: Path) -> None:
    # Rename, never write in place: with the hardlink cache type the old
    # workspace file *is* the previous cache object.  DVC hashes the new file
    # itself in `add` (one read; its state DB is DVC's own, never written here).
    os.replace(tmp, path)


def _added_md5(repo: Any, path: Path) -> str:
    (stage,) = repo.add(str(path))
    return str(stage.outs[0].hash_info.value)


def _commit(root: Path, message: str) -> None:
    """Commit the staged files as ``pipelines``, whatever the worker's git identity.

    The identity goes with the commit (dulwich's porcelain), not into any git
    config: commits neither depend on nor fail for lack of a global one.
    """
    from dulwich import porcelain
    from dulwich.errors import CommitError
    from scmrepo.exceptions import SCMError

    try:
        porcelain.commit(str(root), message=message, author=_IDENTITY, committer=_IDENTITY, sign=False)
    except (CommitError, porcelain.Error) as exc:
        # The same error scmrepo's own commit raises, so the callers' translation applies.
        raise SCMError(f"git commit failed: {exc}") from exc


def _commit_and_tag(root: Path, tag: str, md5: str, rows: int, *, inputs: str | None, vertical: str, ds: str) -> str:
    """Commit the .dvc file (unless HEAD is already this snapshot) and point the tag at it."""
    from scmrepo.git import Git

    ref = f"refs/tags/{tag}"
    with _translating(f"committing and tagging {tag}", root=root, vertical=vertical, ds=ds):
        scm = Git(root)
        try:
            head = scm.get_rev()
            message = scm.resolve_commit(head).message
            # A rerun after a crash between commit and tag finds its commit at HEAD.
            if not (
                _trailer(message, "Data-Date") == ds
                and _trailer(message, "Data-Md5") == md5
                and _trailer(message, "Data-Inputs") == inputs
            ):
                # scmrepo resolves relative paths against the process's cwd, not the
                # repo: always pass absolute ones.
                scm.add([str(root / DVC_FILE), str(root / ".gitignore")])
                _commit(
                    root,
                    f"Snapshot {vertical} {ds} ({version_id(md5)})\n\n"
                    f"Vertical: {vertical}\nData-Date: {ds}\nData-Md5: {md5}\nData-Rows: {rows}\n"
                    + (f"Data-Inputs: {inputs}\n" if inputs else ""),
                )
                head = scm.get_rev()
            # Verify what was committed: a staging slip must not yield a tag
            # that names data it does not hold.
            committed = _dvc_file_md5(scm.get_fs(head).cat_file(DVC_FILE))
            if committed != md5:
                raise VersioningError(
                    f"commit {head[:12]} in {root} tracks md5 {committed}, expected {md5}; "
                    f"inspect the repository (`git -C {root} status`) before rerunning",
                    vertical=vertical,
                    ds=ds,
                )
            scm.set_ref(ref, head, message=f"snapshot {tag}")
        finally:
            scm.close()
    return head


def _version_at_tag(root: Path, vertical: str, ds: str) -> DataVersion | None:
    """Read the version a tag records, from git alone (no DVC, no data read)."""
    tagged = _tagged(root, vertical, ds)
    return tagged[0] if tagged else None


def _tagged(root: Path, vertical: str, ds: str) -> tuple[DataVersion, str | None] | None:
    """The version a tag records and the inputs fingerprint its commit names (None: none recorded)."""
    if not (root / ".git").is_dir():
        return None
    from scmrepo.git import Git

    tag = tag_name(vertical, ds)
    with _translating(f"reading tag {tag}", root=root, vertical=vertical, ds=ds):
        scm = Git(root)
        try:
            commit = scm.get_ref(f"refs/tags/{tag}")
            if commit is None:
                return None
            message = scm.resolve_commit(commit).message
            md5 = _dvc_file_md5(scm.get_fs(commit).cat_file(DVC_FILE))
        finally:
            scm.close()
    rows = _ROWS.search(message)
    if rows is None:
        raise VersioningError(
            f"tag {tag} in {root} points at commit {commit[:12]}, which the pipeline did not make "
            f"(no Data-Rows trailer); delete the tag (`git -C {root} tag -d {tag}`) and rerun",
            vertical=vertical,
            ds=ds,
        )
    inputs = _INPUTS.search(message)
    version = DataVersion(
        vertical=vertical,
        ds=ds,
        id=version_id(md5),
        md5=md5,
        tag=tag,
        commit=commit,
        rows=int(rows.group(1)),
        path=str(root / WINDOW_FILE),
        created=False,
    )
    return version, inputs.group(1) if inputs else None


def _git_ref(root: Path, ref: str, *, vertical: str, ds: str | None) -> str | None:
    if not (root / ".git").is_dir():
        return None
    from scmrepo.git import Git

    with _translating(f"reading {ref}", root=root, vertical=vertical, ds=ds):
        scm = Git(root)
        try:
            return scm.get_ref(ref)
        finally:
            scm.close()


def _workspace_md5(root: Path) -> str | None:
    try:
        return _dvc_file_md5((root / DVC_FILE).read_bytes())
    except FileNotFoundError:
        return None


def _dvc_file_md5(text: bytes) -> str:
    import yaml

    outs = (yaml.safe_load(text) or {}).get("outs") or [{}]
    return str(outs[0].get("md5"))


def _trailer(message: str, key: str) -> str | None:
    match = re.search(rf"^{re.escape(key)}: (\S+)$", message, re.MULTILINE)
    return match.group(1) if match else None


# -- plumbing ------------------------------------------------------------------


def _check_ds(vertical: str, ds: str) -> None:
    parse_ds(ds, vertical=vertical, error=VersioningError)


def _remote_url(settings: Settings) -> str:
    """The remote as DVC wants it: URLs untouched, local paths absolute."""
    remote = settings.dvc_remote.strip()
    if not remote:
        raise VersioningError("PIPELINES_DVC_REMOTE is empty; set it to a folder or a DVC remote URL")
    scheme = urlsplit(remote).scheme
    if scheme == "file":
        return str(Path(urlsplit(remote).path).resolve())
    # One letter is a Windows drive ("C:\..."), not a scheme.
    if len(scheme) > 1:
        return remote
    return str(Path(remote).expanduser().resolve())


def _lock_path(settings: Settings, vertical: str) -> Path:
    # Beside the repo, not inside it: git must never see it, and it has to
    # exist before the repo does.
    return Layout(settings, vertical).dvc_repo.with_name(f"{vertical}.lock")


@contextmanager
def _repo_lock(settings: Settings, vertical: str, ds: str | None, timeout_s: float) -> Iterator[None]:
    """Serialise all work on one vertical's repo across processes.

    Airflow's max_active_runs=1 already serialises a vertical's DAG runs, but a
    CLI run or a `dvc repro` can overlap one; DVC itself would fail fast with
    "Unable to acquire lock" instead of waiting.
    """
    from filelock import FileLock, Timeout

    path = _lock_path(settings, vertical)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout as exc:
        raise VersioningError(
            f"another process has held the data repository lock {path} for over {timeout_s:.0f} s "
            f"(a CLI, Airflow or `dvc` run on vertical {vertical}); wait for it to finish, "
            "or if none is running, delete the lock file and rerun",
            vertical=vertical,
            ds=ds,
        ) from exc
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _quiet_dvc() -> Iterator[None]:
    # Importing dvc resets its loggers to INFO: import it before lowering them.
    import dvc  # noqa: F401

    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _naming(vertical: str, ds: str) -> Iterator[None]:
    """Give errors raised below without a vertical and date (serialisation) both."""
    try:
        yield
    except VersioningError as exc:
        if exc.vertical is None:
            raise VersioningError(str(exc), vertical=vertical, ds=ds) from exc.__cause__
        raise


def _remote_hint(remote: str) -> str:
    extra = " (s3:// remotes need `pip install 'dvc[s3]'`)" if remote.startswith("s3://") else ""
    return (
        f"check PIPELINES_DVC_REMOTE (now {remote!r}): the remote must exist, be reachable "
        f"and be writable with the credentials this worker has ({DVC_CONN_ID_ENV} names an Airflow "
        f"connection that holds them; else the AWS environment){extra}"
    )


class _ErrorCollector(logging.Handler):
    """Keeps the errors DVC logs while it works: its exceptions often only say
    "1 files failed to upload" and leave the cause to the log."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        text = record.getMessage() + (f" ({type(cause).__name__}: {cause})" if cause else "")
        if text not in self.causes:
            self.causes.append(text)


def _translatable_errors(*, remote_step: bool) -> tuple[type[BaseException], ...]:
    """Failure types that mean "the data repository or remote has a problem".

    Looked up when an error is caught: DVC and botocore are imported inside the
    guarded block, and the git-only paths must not pay for importing them.
    """
    from scmrepo.exceptions import SCMError

    errors: tuple[type[BaseException], ...] = (OSError, SCMError)
    if "dvc.exceptions" in sys.modules:
        from dvc.exceptions import DvcException

        errors = (*errors, DvcException)
    if remote_step:
        # A missing remote plugin (dvc-s3, ...) surfaces as ImportError.
        errors = (*errors, ImportError)
        if "botocore.exceptions" in sys.modules:
            # No credentials, endpoint unreachable: dvc-s3 lets botocore's errors through.
            from botocore.exceptions import BotoCoreError, ClientError

            errors = (*errors, BotoCoreError, ClientError)
    return errors


@contextmanager
def _translating(step: str, *, root: Path, vertical: str, ds: str | None, hint: str | None = None) -> Iterator[None]:
    """Re-raise DVC, git and OS failures as `VersioningError` saying what to do."""
    collector = _ErrorCollector()
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    for lg in loggers:
        lg.addHandler(collector)
    try:
        yield
    except VersioningError:
        raise
    except Exception as exc:
        if not isinstance(exc, _translatable_errors(remote_step=hint is not None)):
            raise
        said = "; ".join(collector.causes[:3])
        raise VersioningError(
            f"{step} failed: {type(exc).__name__}: {exc}"
            + (f" [DVC: {said}]" if said else "")
            + f"; {hint or f'inspect the data repository {root} and rerun'}",
            vertical=vertical,
            ds=ds,
        ) from exc
    finally:
        for lg in loggers:
            lg.removeHandler(collector)
