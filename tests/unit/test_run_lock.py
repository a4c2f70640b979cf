"""The run lease: one run per vertical at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from pipelines.errors import PipelineError, RunAlreadyActive
from pipelines.registry import migrations as registry_migrations
from pipelines.registry.run_lock import RunLock, hold_run, pid_alive, this_host
from pipelines.registry.schema import RunLeaseRow, create_registry_engine

DS = "2026-11-27"


@pytest.fixture
def lock(registry_url: str) -> Iterator[RunLock]:
    engine = create_registry_engine(registry_url)
    registry_migrations.upgrade(engine)
    try:
        yield RunLock(engine)
    finally:
        engine.dispose()


def _plant(lock: RunLock, *, holder: str, pid: int | None, host: str, expires_in_s: float) -> None:
    """A lease as another process (or machine) left it."""
    now = datetime.now(UTC)
    with lock._tx() as conn:
        conn.execute(
            insert(RunLeaseRow.__table__).values(
                vertical="finance",
                ds=DS,
                holder=holder,
                pid=pid,
                host=host,
                acquired_at=now - timedelta(minutes=5),
                heartbeat_at=now - timedelta(minutes=1),
                expires_at=now + timedelta(seconds=expires_in_s),
            )
        )


def _rows(lock: RunLock) -> int:
    with lock.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(RunLeaseRow.__table__)).scalar_one())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_told_who_holds_the_vertical(lock: RunLock):
    first = lock.acquire("finance", DS, "scheduled__2026-11-27T02:00:00+00:00")
    assert (first.pid, first.host) == (os.getpid(), this_host())

    with pytest.raises(RunAlreadyActive) as err:
        lock.acquire("finance", "2026-11-26", "cli:other")
    message = str(err.value)
    assert "already running" in message and "scheduled__2026-11-27T02:00:00+00:00" in message
    assert f"pid {os.getpid()}" in message and f"host {this_host()}" in message and f"date {DS}" in message
    assert isinstance(err.value, PipelineError) and err.value.exit_code == 75
    # Another vertical is not affected.
    assert lock.acquire("healthcare", DS, "cli:other").holder == "cli:other"


def test_the_same_holder_reenters_from_another_task(lock: RunLock):
    first = lock.acquire("finance", DS, "manual__run1")
    again = lock.acquire("finance", DS, "manual__run1")
    assert again.acquired_at == first.acquired_at and again.expires_at >= first.expires_at
    assert _rows(lock) == 1


def test_release_frees_the_vertical_and_only_its_holder_can(lock: RunLock):
    lock.acquire("finance", DS, "a")
    assert lock.release("finance", "b") is False
    assert lock.current("finance") is not None
    assert lock.release("finance", "a") is True
    assert lock.acquire("finance", DS, "b").holder == "b"


def test_an_expired_lease_from_another_machine_is_taken_over(lock: RunLock):
    _plant(lock, holder="manual__crashed", pid=4242, host="worker-7", expires_in_s=-1)
    lease = lock.acquire("finance", DS, "cli:me")
    assert lease.holder == "cli:me" and lease.pid == os.getpid()


def test_a_live_lease_from_another_machine_is_respected_until_it_expires(lock: RunLock):
    _plant(lock, holder="manual__busy", pid=os.getpid(), host="worker-7", expires_in_s=60)
    with pytest.raises(RunAlreadyActive, match="host worker-7"):
        lock.acquire("finance", DS, "cli:me")


def test_a_killed_process_on_this_host_frees_the_lease_at_once(lock: RunLock):
    _plant(lock, holder="cli:killed", pid=_dead_pid(), host=this_host(), expires_in_s=3600)
    assert lock.acquire("finance", DS, "cli:me").holder == "cli:me"


def test_a_parked_lease_waits_for_its_run_next_task(lock: RunLock):
    lock.acquire("finance", DS, "manual__run1")
    assert lock.park("finance", "manual__run1", park_s=60)
    parked = lock.current("finance")
    assert parked is not None and parked.pid is None
    with pytest.raises(RunAlreadyActive, match="between tasks"):
        lock.acquire("finance", DS, "cli:me")
    assert lock.acquire("finance", DS, "manual__run1").pid == os.getpid()  # the next task takes it up


def test_a_parked_lease_of_a_run_that_ended_is_taken_over_at_once(lock: RunLock):
    # An operator marked the run failed between two tasks: nothing of it will take the lease up.
    lock.acquire("finance", DS, "manual__marked_failed")
    assert lock.park("finance", "manual__marked_failed", park_s=3600)
    asked: list[str] = []

    def run_ended(holder: str) -> str | None:
        asked.append(holder)
        return "its Airflow run is failed" if holder == "manual__marked_failed" else None

    started = time.monotonic()
    lease = lock.acquire("finance", "2026-11-28", "scheduled__next", wait_s=30, run_ended=run_ended)
    assert lease.holder == "scheduled__next" and lease.ds == "2026-11-28" and lease.pid == os.getpid()
    assert time.monotonic() - started < 5  # not the park's hour, nor the 30 s wait
    assert asked == ["manual__marked_failed"]
    # The ended run can no longer renew, park or release what is now the next run's.
    assert lock.renew("finance", "manual__marked_failed") is False
    assert lock.release("finance", "manual__marked_failed") is False
    assert lock.current("finance").holder == "scheduled__next"  # type: ignore[union-attr]


def test_a_run_that_goes_on_keeps_its_parked_lease_and_a_held_one_is_never_asked_about(lock: RunLock):
    asked: list[str] = []

    def still_running(holder: str) -> str | None:
        asked.append(holder)
        return None

    lock.acquire("finance", DS, "manual__running")
    lock.park("finance", "manual__running", park_s=3600)
    with pytest.raises(RunAlreadyActive, match="between tasks"):
        lock.acquire("finance", DS, "scheduled__next", wait_s=0.3, run_ended=still_running)
    assert asked and set(asked) == {"manual__running"}

    # A task of an ended run may still be running (Airflow has yet to stop it): its process
    # holds the lease and may be writing, so even "ended" does not take it; it parks or dies first.
    lock.acquire("finance", DS, "manual__running")  # its next task, holding it
    asked.clear()
    with pytest.raises(RunAlreadyActive, match=f"pid {os.getpid()}"):
        lock.acquire("finance", DS, "scheduled__next", wait_s=0.3, run_ended=lambda h: asked.append(h) or "ended")
    assert asked == []
    assert lock.current("finance").holder == "manual__running"  # type: ignore[union-attr]


def test_an_ended_verdict_about_a_lease_that_changed_since_takes_nothing(lock: RunLock):
    lock.acquire("finance", DS, "manual__one")
    lock.park("finance", "manual__one", park_s=3600)
    seen = lock.current("finance")
    assert seen is not None
    lock.acquire("finance", DS, "manual__one")  # its next task took the lease up meanwhile
    assert lock.try_acquire("finance", DS, "scheduled__next", ended=(seen, "ended")) is None
    assert lock.current("finance").holder == "manual__one"  # type: ignore[union-attr]


def test_a_waiting_run_gets_the_lease_when_the_holder_finishes(lock: RunLock):
    lock.acquire("finance", DS, "first")
    releaser = threading.Timer(0.5, lock.release, args=("finance", "first"))
    releaser.start()
    started = time.monotonic()
    assert lock.acquire("finance", DS, "second", wait_s=10).holder == "second"
    assert 0.4 < time.monotonic() - started < 5
    with pytest.raises(RunAlreadyActive, match=r"waited 0.3 s"):
        lock.acquire("finance", DS, "third", wait_s=0.3)


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_racing_acquirers_get_exactly_one_winner(lock: RunLock, stale: bool):
    if stale:
        _plant(lock, holder="cli:dead", pid=_dead_pid(), host=this_host(), expires_in_s=3600)
    racers = 8
    barrier = threading.Barrier(racers)
    winners: list[str] = []
    errors: list[BaseException] = []

    def race(i: int) -> None:
        try:
            barrier.wait(10)
            if lock.try_acquire("finance", DS, f"racer{i}") is not None:
                winners.append(f"racer{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(winners) == 1
    held = lock.current("finance")
    assert held is not None and held.holder == winners[0]


def test_hold_run_heartbeats_and_releases(lock: RunLock, registry_url: str, settings, monkeypatch):
    settings = replace(settings, registry_url=registry_url)
    monkeypatch.setenv("PIPELINES_RUN_LEASE_TTL_S", "0.6")
    with hold_run("finance", DS, settings=settings, holder="cli:me") as lease:
        time.sleep(1.5)  # over two TTLs: only the heartbeat keeps it
        current = lock.current("finance")
        assert current is not None and current.holder == "cli:me"
        assert current.expires_at > datetime.now(UTC) and current.heartbeat_at > lease.heartbeat_at
        with pytest.raises(RunAlreadyActive):
            lock.acquire("finance", DS, "cli:other")
    assert lock.current("finance") is None


def test_pid_alive_sees_through_zombies():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 10
        while pid_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # killed but not reaped: a zombie, which is no holder
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()
    assert not pid_alive(proc.pid)
