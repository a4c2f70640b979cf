"""The hot-reloading model store: one immutable `LoadedModel` per vertical, swapped atomically.

A poller thread reads every vertical's production pointer each
``poll_interval`` seconds.  When the pointer names another version (or the
same version with another checksums digest), the store downloads and
verifies the folder (`pipelines.release.serving.fetch_verified`) and loads it in the
background, then replaces the vertical's entry with one assignment of a new
dict.  A request takes its model from the store once and uses it to the end,
so it never mixes versions, and the old model stays valid for requests in
flight.  A version that fails verification or loading is refused: the old
model keeps serving, the failure is logged and counted, and the store does
not retry that same pointer until it changes.

Worst-case delay from a pointer flip to answers from the new version:
``poll_interval`` plus the download and load time (well under a second for
these models), so ≤ 5 s with the default ``poll_interval`` of 2 s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import DeployError, PipelineError
from pipelines.release.bucket import Bucket, check_name, read_pointer, store_errors
from pipelines.scoring.runtime import LoadedModel, ModelFormat, load_model

log = logging.getLogger(__name__)


class ModelStore:
    """Production models of every vertical in the bucket, kept current by `refresh`."""

    def __init__(
        self,
        bucket_url: str,
        *,
        model_format: ModelFormat,
        cache_dir: Path,
        verticals: list[str] | None = None,
        threads: int = 1,
        on_change: Callable[[str, LoadedModel | None, LoadedModel], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.bucket_url = bucket_url
        self.model_format = model_format
        self.cache_dir = cache_dir
        self.verticals = verticals
        self.threads = threads
        self.on_change = on_change
        self.on_failure = on_failure
        #: Replaced whole, never mutated: readers see the old dict or the new one.
        self._models: dict[str, LoadedModel] = {}
        #: vertical -> the last refused (version, digest) and why.
        self.problems: dict[str, dict[str, Any]] = {}
        self.refreshed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, vertical: str) -> LoadedModel | None:
        return self._models.get(vertical)

    def models(self) -> dict[str, LoadedModel]:
        return self._models

    def _vertical_names(self) -> list[str]:
        if self.verticals is not None:
            return list(self.verticals)
        with store_errors(self.bucket_url):
            bucket = Bucket.open(self.bucket_url)
            bucket.fs.invalidate_cache(bucket.root)
            if not bucket.fs.exists(bucket.root):
                return []
            names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in bucket.fs.ls(bucket.root, detail=False)]
        valid = []
        for name in names:
            try:
                check_name(name, "vertical")
            except DeployError:
                continue
            valid.append(name)
        return sorted(valid)

    def refresh(self) -> None:
        """Check every pointer once; load and swap in whatever changed (one refresh at a time)."""
        with self._lock:
            try:
                names = self._vertical_names()
            except PipelineError as exc:
                log.error("scoring: cannot list the bucket %s: %s; keeping the loaded models", self.bucket_url, exc)
                return
            for vertical in names:
                self._refresh_one(vertical)
            self.refreshed.set()

    def _refresh_one(self, vertical: str) -> None:
        try:
            pointer = read_pointer(self.bucket_url, vertical)
        except DeployError as exc:
            self._refuse(vertical, None, None, str(exc))
            return
        if pointer is None:
            return
        version, digest = str(pointer["version"]), pointer.get("checksums_sha256")
        current = self._models.get(vertical)
        if current is not None and current.version == version and current.checksums_sha256 == digest:
            return
        problem = self.problems.get(vertical)
        if problem is not None and (problem["version"], problem["checksums_sha256"]) == (version, digest):
            return  # already refused; wait for the pointer to move
        from pipelines.release.serving import fetch_verified

        try:
            path = fetch_verified(
                vertical, version, bucket_url=self.bucket_url, cache_dir=self.cache_dir, pointer=pointer
            )
            loaded = load_model(
                vertical, version, path, self.model_format, checksums_sha256=digest, threads=self.threads
            )
        except PipelineError as exc:
            self._refuse(vertical, version, digest, str(exc))
            return
        self._models = {**self._models, vertical: loaded}
        self.problems = {k: v for k, v in self.problems.items() if k != vertical}
        log.info(
            "scoring: %s now serves %s (%s; was %s)",
            vertical,
            version,
            self.model_format,
            current.version if current else "nothing",
        )
        if self.on_change is not None:
            self.on_change(vertical, current, loaded)

    def _refuse(self, vertical: str, version: str | None, digest: str | None, why: str) -> None:
        current = self._models.get(vertical)
        # Replaced, never mutated: request threads iterate it (`/v1/models`) while the poller writes.
        self.problems = {
            **self.problems,
            vertical: {"version": version, "checksums_sha256": digest, "problem": why},
        }
        log.error(
            "scoring: %s: refusing production %s (%s); still serving %s",
            vertical,
            version,
            why,
            current.version if current else "nothing",
        )
        if self.on_failure is not None:
            self.on_failure(vertical, why)

    # -- the poller --------------------------------------------------------------

    def start(self, poll_interval: float) -> None:
        """Refresh now, then every ``poll_interval`` seconds in a daemon thread until `stop`."""
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(poll_interval):
                try:
                    self.refresh()
                except Exception:  # the poller must outlive any one bad refresh; log it loudly
                    log.exception("scoring: refresh failed; retrying in %.1f s", poll_interval)

        self._thread = threading.Thread(target=loop, name="scoring-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
