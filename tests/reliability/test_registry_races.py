"""Registry writers racing in separate processes: one champion, no duplicate rows.

Six racers are fresh interpreters (``spawn``, as Airflow workers and the CLI
are), started once for the module because start-up is the slow part.  For
each race they open the registry on a URL they have not seen, wait on one
barrier, and then all write at the same instant — their first use of that
database, so on a fresh one the schema upgrade races too.  Every race runs on
a SQLite file and on the machine's PostgreSQL (a throw-away schema).
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from pipelines.registry.store import DecisionRow, DeploymentRecord, ModelVersionRow, Registry, create_registry_engine

RACERS = 6
#: Seconds a racer may take, start-up included (spawned interpreters on a 2-core machine).
RACE_TIMEOUT_S = 120
VERTICAL = "finance"  # what _registry_racer writes to


# -- racer processes -------------------------------------------------------------


class Racers:
    """``RACERS`` spawned interpreters that run one job each, released together by a barrier."""

    def __init__(self) -> None:
        racer = importlib.import_module("_registry_racer")  # by name: see the module's docstring
        ctx = multiprocessing.get_context("spawn")
        self.barrier = ctx.Barrier(RACERS)
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(RACERS)]
        self.procs = [
            ctx.Process(
                target=racer.serve,
                kwargs={
                    "index": i,
                    "jobs": self.jobs[i],
                    "barrier": self.barrier,
                    "results": self.results,
                    "timeout": RACE_TIMEOUT_S,
                },
                daemon=True,
            )
            for i in range(RACERS)
        ]
        for proc in self.procs:
            proc.start()

    def run(self, url: str, job: str, per_racer: list[dict[str, Any]] | None = None) -> list[Any]:
        """Every racer runs ``job`` on ``url`` at once; their values, in racer order."""
        if self.barrier.broken:  # a failed race aborted it
            self.barrier.reset()
        for i, queue_ in enumerate(self.jobs):
            queue_.put((url, job, per_racer[i] if per_racer else {}))
        collected: dict[int, Any] = {}
        failures: list[str] = []
        deadline = time.monotonic() + RACE_TIMEOUT_S
        while len(collected) + len(failures) < RACERS:
            try:
                index, ok, value = self.results.get(timeout=0.5)
            except queue.Empty:
                # A racer that died (import error, crash) must not cost the whole timeout.
                if any(not p.is_alive() for p in self.procs) or time.monotonic() > deadline:
                    failures.append(f"racers died or hung (exit codes {[p.exitcode for p in self.procs]})")
                    break
                continue
            if ok:
                collected[index] = value
            else:
                failures.append(f"racer {index}:\n{value}")
        assert not failures, "\n".join(failures)
        return [collected[i] for i in range(RACERS)]

    def stop(self) -> None:
        for queue_ in self.jobs:
            queue_.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


@pytest.fixture(scope="module")
def racers() -> Iterator[Racers]:
    with pytest.MonkeyPatch.context() as patch:
        # Spawned racers import `_registry_racer` by name, with the parent's sys.path.
        patch.syspath_prepend(str(Path(__file__).parent))
        pool = Racers()
    try:
        yield pool
    finally:
        pool.stop()


# -- backends ----------------------------------------------------------------------


@pytest.fixture
def url(registry_url: str) -> str:
    """A fresh, empty registry URL on each backend (tests/conftest.py)."""
    return registry_url


def _registry_with_models(url: str, versions: list[str]) -> Registry:
    registry = Registry(create_registry_engine(url))
    for version in versions:
        registry.record_model(
            vertical=VERTICAL,
            model_version=version,
            data_version=f"d-{version}",
            ds="2024-01-01",
            metrics={},
            lineage={},
        )
    return registry


def _count(registry: Registry, row: type) -> int:
    with registry.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(row)).scalar_one()


def assert_consistent_history(registry: Registry) -> list[DeploymentRecord]:
    """Seq 1..n without gaps, each move starts where the last ended, champion = last row."""
    history = list(reversed(registry.deployments(VERTICAL, limit=10_000)))
    assert [d.seq for d in history] == list(range(1, len(history) + 1))
    previous = None
    for move in history:
        assert move.model_version != previous, f"seq {move.seq} re-deployed the champion {previous}"
        assert move.previous_version == previous, f"seq {move.seq} started from a stale champion"
        previous = move.model_version
    champion = registry.champion(VERTICAL)
    assert (champion.model_version if champion else None) == previous
    return history


# -- races -----------------------------------------------------------------------------


def test_first_use_upgrades_once(url: str, racers: Racers) -> None:
    assert racers.run(url, "open") == [[]] * RACERS
    engine = create_registry_engine(url)
    with engine.connect() as conn:
        assert {"model_versions", "decisions", "deployments"} <= set(inspect(conn).get_table_names())
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_racing_promotions_of_different_versions_leave_one_consistent_history(url: str, racers: Racers) -> None:
    versions = ["m0", "m1", "m2"]
    registry = _registry_with_models(url, versions)
    # Racer i walks the versions from offset i: many moves collide, many are no-ops.
    plans = [{"versions": [versions[(i + r) % len(versions)] for r in range(8)]} for i in range(RACERS)]
    seqs = racers.run(url, "deploy", plans)

    history = assert_consistent_history(registry)
    recorded = sorted(seq for racer in seqs for seq in racer if seq is not None)
    assert recorded == [d.seq for d in history], "every row was reported to exactly one racer"
    assert len(history) >= len(versions)
    registry.close()


def test_racing_promotions_of_one_version_make_one_champion(url: str, racers: Racers) -> None:
    registry = _registry_with_models(url, ["m0", "m1"])
    registry.record_deployment(vertical=VERTICAL, model_version="m0", actor="setup")
    seqs = racers.run(url, "deploy", [{"versions": ["m1"]}] * RACERS)

    history = assert_consistent_history(registry)
    assert [(d.model_version, d.previous_version) for d in history] == [("m0", None), ("m1", "m0")]
    assert [s for s in seqs if s != [None]] == [[2]], "exactly one racer promoted; the others found it done"
    registry.close()


def test_racing_gate_reruns_keep_one_decision(url: str, racers: Racers) -> None:
    outcomes = racers.run(url, "decision")
    registry = Registry(create_registry_engine(url))
    stored = registry.decision(VERTICAL, "2024-01-01", "m1")
    assert _count(registry, DecisionRow) == 1
    assert stored is not None and stored.approved in outcomes
    assert stored.actor in {f"racer{i}" for i in range(RACERS)}
    registry.close()


def test_racing_model_records_keep_one_row(url: str, racers: Racers) -> None:
    assert racers.run(url, "model") == ["m-race"] * RACERS
    registry = Registry(create_registry_engine(url))
    assert _count(registry, ModelVersionRow) == 1
    record = registry.model(VERTICAL, "m-race")
    assert record is not None and record.data_version == "d1"
    registry.close()
