"""One run per vertical at a time: a lease in the registry database.

Every entry point that runs stages (``python -m pipelines run`` and the
per-stage commands, the Airflow tasks) holds the vertical's lease while it
works.  The lease is a row of ``run_leases`` in the registry database, not a
local file, so it holds across processes *and* machines (Celery workers, a
person's shell next to the scheduler).

* **Atomic.**  Taking a free lease is an ``INSERT`` the primary key lets only
  one process win; taking over an abandoned one is a compare-and-swap
  ``UPDATE … WHERE holder = <old> AND heartbeat_at = <old>`` that only one
  process can match.  On SQLite the transaction also begins ``IMMEDIATE``.
* **Re-entrant per holder.**  The holder is the Airflow DAG run id, which every
  task of the run shares although each runs in its own process (perhaps on
  another worker); the CLI's holder is unique per invocation.
* **Never stuck.**  A holding process renews ``expires_at`` from a heartbeat
  thread; a lease whose holder stopped heartbeating (killed, machine gone) is
  free once it expires, and at once when its process is gone on this host
  (``kill -9`` on the same machine).  Between two Airflow tasks the lease is
  *parked*: no process, a longer expiry that covers retry delays.  A parked
  lease whose Airflow run has ended (an operator marked it failed or success
  in the UI, so no task of it will take the lease up) is free at once to a
  waiting Airflow task, which asks Airflow for the holder run's state
  (``run_ended``, `hold_run`).
* **Clear refusal.**  A second run waits up to ``wait_s`` and then raises
  `RunAlreadyActive` naming the holder's run id, pid, host and date.

Why per vertical and not per (vertical, date): runs of two dates of one
vertical share the window's partitions (a first run backfills them), the DVC
repository and the production pointer, so they must not overlap either.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pipelines.errors import RunAlreadyActive
from pipelines.registry.schema import RunLeaseRow

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

_LEASES = cast(Table, RunLeaseRow.__table__)

#: A held lease not renewed for this long is abandoned (``PIPELINES_RUN_LEASE_TTL_S``).
DEFAULT_TTL_S = 120.0
#: A parked lease (between two Airflow tasks) lasts this long without a task
#: taking it up: longer than the DAG's longest retry delay (15 min).
DEFAULT_PARK_S = 20 * 60.0
#: How often a waiting run looks again.
POLL_S = 1.0

#: Whether the run ``holder`` names has ended: a reason (to take its lease over), or None
#: while it may still go on or nobody can tell.  Airflow tasks ask Airflow (`hold_run`).
RunEnded = Callable[[str], str | None]


def lease_ttl_s() -> float:
    """Seconds a held lease lives without a heartbeat (env ``PIPELINES_RUN_LEASE_TTL_S``)."""
    return float(os.environ.get("PIPELINES_RUN_LEASE_TTL_S", DEFAULT_TTL_S))


def lease_park_s() -> float:
    """Seconds a parked lease lives (env ``PIPELINES_RUN_LEASE_PARK_S``)."""
    return float(os.environ.get("PIPELINES_RUN_LEASE_PARK_S", DEFAULT_PARK_S))


def _now() -> datetime:
    return datetime.now(UTC)


def this_host() -> str:
    """The name that tells whether a lease's pid can be checked from here."""
    return socket.gethostname()


#: How every CLI holder id starts (never an Airflow run id, which starts with its run type).
CLI_HOLDER_PREFIX = "cli:"


def cli_holder() -> str:
    """A holder id unique to this CLI invocation (its own run, sharing with nobody)."""
    return f"{CLI_HOLDER_PREFIX}{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    stat = Path(f"/proc/{pid}/stat")
    try:
        # Field 3, after the parenthesised command name, is the state; Z = exited, not yet reaped.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill already said it exists


@dataclass(frozen=True)
class Lease:
    """A snapshot of one ``run_leases`` row."""

    vertical: str
    ds: str
    holder: str
    pid: int | None
    host: str
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def abandoned(self, now: datetime) -> str | None:
        """Why this lease may be taken over now, or None while its holder is alive."""
        if self.expires_at <= now:
            return f"it expired at {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        if self.pid is not None and self.host == this_host() and not pid_alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        return None

    def describe(self) -> str:
        process = f"pid {self.pid}" if self.pid is not None else "between tasks"
        return (
            f"run id {self.holder}, {process}, host {self.host}, date {self.ds}, "
            f"since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC"
        )


@contextmanager
def _unavailable_registry(engine: Engine) -> Iterator[None]:
    """A registry that is down, locked or unmigrated is a `RegistryError` (one line, exit 9), as for every
    other registry use; an ``IntegrityError`` passes through for `RunLock.try_acquire`'s race handling."""
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        from pipelines.registry.store import Registry

        raise Registry(engine)._error("take or renew a run lease in", None, None, exc) from exc


class RunLock:
    """Acquire, renew and give back the run lease of vertical in the registry at ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE") if engine.dialect.name == "sqlite" else engine

    @classmethod
    def from_settings(cls, settings: Settings) -> RunLock:
        """The lock table of the registry named by ``settings`` (migrated to head on first use)."""
        from pipelines.registry.migrations import ensure_schema
        from pipelines.registry.store import Registry

        engine = Registry.from_settings(settings).engine
        with _unavailable_registry(engine):
            ensure_schema(engine)
        return cls(engine)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with _unavailable_registry(self.engine), self._writer.connect() as conn, conn.begin():
            yield conn

    def current(self, vertical: str) -> Lease | None:
        """The lease of ``vertical`` as stored (expired or not), or None."""
        with _unavailable_registry(self.engine), self.engine.connect() as conn:
            row = conn.execute(select(_LEASES).where(_LEASES.c.vertical == vertical)).first()
        return None if row is None else Lease(**row._asdict())

    def try_acquire(
        self,
        vertical: str,
        ds: str,
        holder: str,
        *,
        ttl_s: float | None = None,
        ended: tuple[Lease, str] | None = None,
    ) -> Lease | None:
        """Take the lease for ``holder`` if free, abandoned or already its own; else None.

        ``ended`` is a lease as read before, with why its run is over: taken over
        if the lease is still exactly that one (nobody renewed or took it since).
        Returns None (rather than raising) so `acquire` decides about waiting.
        """
        ttl = ttl_s if ttl_s is not None else lease_ttl_s()
        now = _now()
        mine = {
            "ds": ds,
            "holder": holder,
            "pid": os.getpid(),
            "host": this_host(),
            "heartbeat_at": now,
            "expires_at": now + timedelta(seconds=ttl),
        }
        table = _LEASES
        try:
            with self._tx() as conn:
                row = conn.execute(select(table).where(table.c.vertical == vertical)).first()
                if row is None:
                    conn.execute(insert(table).values(vertical=vertical, acquired_at=now, **mine))
                    return Lease(vertical=vertical, acquired_at=now, **mine)  # type: ignore[arg-type]
                held = Lease(**row._asdict())
                if held.holder == holder:
                    # Re-entry: another task (process) of the same run; keep acquired_at.
                    conn.execute(
                        update(table).where(table.c.vertical == vertical, table.c.holder == holder).values(**mine)
                    )
                    return Lease(vertical=vertical, acquired_at=held.acquired_at, **mine)  # type: ignore[arg-type]
                why = held.abandoned(now)
                if why is None and ended is not None and ended[0] == held:
                    why = ended[1]
                if why is None:
                    return None
                # Compare-and-swap: only one of several processes taking over the same stale lease matches.
                taken = conn.execute(
                    update(table)
                    .where(
                        table.c.vertical == vertical,
                        table.c.holder == held.holder,
                        table.c.heartbeat_at == held.heartbeat_at,
                    )
                    .values(acquired_at=now, **mine)
                )
                if taken.rowcount != 1:
                    return None
                log.warning("%s %s: took over the run lease of %s: %s", vertical, ds, held.describe(), why)
                return Lease(vertical=vertical, acquired_at=now, **mine)  # type: ignore[arg-type]
        except IntegrityError:
            # PostgreSQL: another process inserted the row between our read and our insert.
            return None

    def acquire(
        self,
        vertical: str,
        ds: str,
        holder: str,
        *,
        wait_s: float = 0.0,
        ttl_s: float | None = None,
        run_ended: RunEnded | None = None,
    ) -> Lease:
        """Take the lease, waiting up to ``wait_s`` for another run to finish; raise `RunAlreadyActive` after.

        With ``run_ended``, a *parked* lease (no process holds it) whose run has
        ended is taken over at once.  A lease a process still holds is never
        taken this way: that process may still be writing (a task of a run just
        marked failed runs on until Airflow stops it, which parks or frees it).
        """
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            lease = self.try_acquire(vertical, ds, holder, ttl_s=ttl_s)
            if lease is not None:
                return lease
            held = self.current(vertical)
            if held is None:
                continue  # released between our two reads: try again at once
            why = run_ended(held.holder) if run_ended is not None and held.pid is None else None
            if why is not None:
                lease = self.try_acquire(vertical, ds, holder, ttl_s=ttl_s, ended=(held, why))
                if lease is not None:
                    return lease
                # Renewed or taken meanwhile: wait and look again, as for any held lease.
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_s:g} s)" if wait_s else ""
                raise RunAlreadyActive(
                    f"already running ({held.describe()}){waited}: wait for that run to finish, or retry with "
                    f"--wait SECONDS; a crashed holder's lease frees itself by "
                    f"{held.expires_at:%Y-%m-%d %H:%M:%S} UTC",
                    vertical=vertical,
                    ds=ds,
                )
            if not announced:
                log.info("%s %s: waiting up to %g s for the run holding it (%s)", vertical, ds, wait_s, held.describe())
                announced = True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def renew(self, vertical: str, holder: str, *, ttl_s: float | None = None) -> bool:
        """Push the expiry forward; False when ``holder`` no longer holds the lease."""
        now = _now()
        ttl = ttl_s if ttl_s is not None else lease_ttl_s()
        table = _LEASES
        with self._tx() as conn:
            done = conn.execute(
                update(table)
                .where(table.c.vertical == vertical, table.c.holder == holder)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
            )
        return done.rowcount == 1

    def park(self, vertical: str, holder: str, *, park_s: float | None = None) -> bool:
        """Keep the lease for the run's next task (no process holds it meanwhile)."""
        now = _now()
        ttl = park_s if park_s is not None else lease_park_s()
        table = _LEASES
        with self._tx() as conn:
            done = conn.execute(
                update(table)
                .where(table.c.vertical == vertical, table.c.holder == holder)
                .values(pid=None, heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
            )
        return done.rowcount == 1

    def release(self, vertical: str, holder: str) -> bool:
        """Give the lease back; False when ``holder`` did not hold it (taken over meanwhile)."""
        table = _LEASES
        with self._tx() as conn:
            done = conn.execute(delete(table).where(table.c.vertical == vertical, table.c.holder == holder))
        return done.rowcount == 1


class _Heartbeat(threading.Thread):
    """Renews a lease every third of its TTL until stopped."""

    def __init__(self, lock: RunLock, lease: Lease, ttl_s: float) -> None:
        super().__init__(name=f"run-lease-{lease.vertical}", daemon=True)
        self.lock, self.lease, self.ttl_s = lock, lease, ttl_s
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.ttl_s / 3):
            try:
                if not self.lock.renew(self.lease.vertical, self.lease.holder, ttl_s=self.ttl_s):
                    self.lost = True
                    log.error(
                        "%s %s: the run lease was taken over by another run; this run should stop",
                        self.lease.vertical,
                        self.lease.ds,
                    )
                    return
            except Exception:
                # A registry hiccup must not kill the run: the next beat retries; the TTL is the margin.
                log.exception("%s %s: could not renew the run lease", self.lease.vertical, self.lease.ds)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


@contextmanager
def hold_run(
    vertical: str,
    ds: str,
    *,
    settings: Settings,
    holder: str | None = None,
    wait_s: float = 0.0,
    park_on_exit: bool = False,
    run_ended: RunEnded | None = None,
) -> Iterator[Lease]:
    """Hold ``vertical``'s run lease (for date ``ds``) while the block runs.

    ``holder`` defaults to a fresh CLI holder.  On exit the lease is released,
    or, with ``park_on_exit``, parked for the same holder's next task.  Raises
    `RunAlreadyActive` when another run keeps it longer than ``wait_s``;
    ``run_ended`` frees a parked lease of a run that is over (`RunLock.acquire`).
    """
    lock = RunLock.from_settings(settings)
    holder = holder or cli_holder()
    ttl = lease_ttl_s()
    lease = lock.acquire(vertical, ds, holder, wait_s=wait_s, ttl_s=ttl, run_ended=run_ended)
    beat = _Heartbeat(lock, lease, ttl)
    beat.start()
    try:
        yield lease
    finally:
        beat.stop()
        kept = lock.park(vertical, holder) if park_on_exit else lock.release(vertical, holder)
        if not kept:
            log.warning("%s %s: the run lease of %s was no longer ours on exit", vertical, ds, holder)
