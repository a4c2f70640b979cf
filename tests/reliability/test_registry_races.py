"""Registry writers racing in separate processes: one champion, no duplicate rows.

Each racer is a fresh interpreter (``spawn``, as Airflow workers and the CLI
are), opens the registry itself — so the first-use schema upgrade races too —
then waits on a barrier and writes at the same instant as the others.  Run on
a SQLite file and on the machine's PostgreSQL, each in a throw-away schema.
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from pipelines.registry import DecisionRow, DeploymentRecord, ModelVersionRow, Registry, create_registry_engine

RACERS = 6
#: Seconds a racer may take, start-up included (spawned interpreters on a 2-core machine).
RACE_TIMEOUT_S = 120
VERTICAL = "finance"  # what _registry_racer writes to


# -- racer processes -------------------------------------------------------------


def run_racers(url: str, job: str, per_racer: list[dict[str, Any]]) -> list[Any]:
    """Start one spawned process per entry of ``per_racer``; return their values in order."""
    racer = importlib.import_module("_registry_racer")  # importable by name: see _importable_racer
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(per_racer))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=racer.race, args=(url, barrier, results, i, job, args, RACE_TIMEOUT_S), daemon=True)
        for i, args in enumerate(per_racer)
    ]
    for proc in procs:
        proc.start()
    collected: dict[int, Any] = {}
    failures: list[str] = []
    deadline = time.monotonic() + RACE_TIMEOUT_S
    try:
        while len(collected) + len(failures) < len(procs):
            try:
                index, ok, value = results.get(timeout=0.5)
            except queue.Empty:
                # A racer that died before reporting (import error, crash) must not cost the timeout.
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    failures.append(f"racers died or hung (exit codes {[p.exitcode for p in procs]})")
                    break
                continue
            if ok:
                collected[index] = value
            else:
                failures.append(f"racer {index}:\n{value}")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert not failures, "\n".join(failures)
    return [collected[i] for i in range(len(per_racer))]


# -- backends ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _importable_racer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned racers import the target's module by name, with the parent's sys.path.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry URL: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = f"test_races_{uuid.uuid4().hex[:12]}"
    admin = create_registry_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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


def test_first_use_upgrades_once(url: str) -> None:
    run_racers(url, "open", [{}] * RACERS)
    engine = create_registry_engine(url)
    with engine.connect() as conn:
        assert {"model_versions", "decisions", "deployments"} <= set(inspect(conn).get_table_names())
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_racing_promotions_of_different_versions_leave_one_consistent_history(url: str) -> None:
    versions = ["m0", "m1", "m2"]
    registry = _registry_with_models(url, versions)
    # Racer i walks the versions from offset i: many moves collide, many are no-ops.
    plans = [{"versions": [versions[(i + r) % len(versions)] for r in range(8)]} for i in range(RACERS)]
    seqs = run_racers(url, "deploy", plans)

    history = assert_consistent_history(registry)
    recorded = sorted(seq for racer in seqs for seq in racer if seq is not None)
    assert recorded == [d.seq for d in history], "every row was reported to exactly one racer"
    assert len(history) >= len(versions)
    registry.close()


def test_racing_promotions_of_one_version_make_one_champion(url: str) -> None:
    registry = _registry_with_models(url, ["m0", "m1"])
    registry.record_deployment(vertical=VERTICAL, model_version="m0", actor="setup")
    seqs = run_racers(url, "deploy", [{"versions": ["m1"]}] * RACERS)

    history = assert_consistent_history(registry)
    assert [(d.model_version, d.previous_version) for d in history] == [("m0", None), ("m1", "m0")]
    assert sorted(seqs, key=str) == [[2]] + [[None]] * (RACERS - 1), "exactly one racer promoted"
    registry.close()


def test_racing_gate_reruns_keep_one_decision(url: str) -> None:
    outcomes = run_racers(url, "decision", [{"actor": f"racer{i}"} for i in range(RACERS)])
    registry = Registry(create_registry_engine(url))
    stored = registry.decision(VERTICAL, "2024-01-01", "m1")
    assert _count(registry, DecisionRow) == 1
    assert stored is not None and stored.approved in outcomes
    registry.close()


def test_racing_model_records_keep_one_row(url: str) -> None:
    assert run_racers(url, "model", [{}] * RACERS) == ["m-race"] * RACERS
    registry = Registry(create_registry_engine(url))
    assert _count(registry, ModelVersionRow) == 1
    record = registry.model(VERTICAL, "m-race")
    assert record is not None and record.data_version == "d1"
    registry.close()
