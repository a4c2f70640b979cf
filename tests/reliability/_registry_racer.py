"""Registry racers: long-lived spawned interpreters that write at the same instant.

Its own top-level module (not the test file) because ``spawn`` unpickles the
target by importing its module by name, and a stray ``tests`` package in
site-packages shadows this repository's ``tests`` namespace package.
"""

from __future__ import annotations

import traceback
from typing import Any

from pipelines.registry.store import DeploymentRecord, Registry

VERTICAL = "finance"


def serve(*, index: int, jobs: Any, barrier: Any, results: Any, timeout: float) -> None:
    """Run ``(url, job, args)`` tasks from ``jobs`` until a None arrives.

    Each task reports ``(index, ok, value)`` on ``results``; a failure's value
    is its traceback.  Starting interpreters is the slow part of a race, so
    one set of racers serves every test.
    """
    while (task := jobs.get()) is not None:
        url, job, args = task
        try:
            # A URL this process has not seen: its first call below is a first
            # use, so on a fresh database every racer's schema upgrade races too.
            registry = Registry.from_url(url)
            barrier.wait(timeout)
            try:
                value = _run(registry, index, job, args)
            finally:
                registry.close()
            results.put((index, True, value))
        except BaseException:
            barrier.abort()  # release the others now instead of at their timeout
            results.put((index, False, traceback.format_exc()))


def _run(registry: Registry, index: int, job: str, args: dict[str, Any]) -> Any:
    if job == "open":
        return registry.verticals()  # a read is a first use too: it migrates
    if job == "deploy":
        return [
            _seq(registry.record_deployment(vertical=VERTICAL, model_version=version, actor=f"racer{index}"))
            for version in args["versions"]
        ]
    if job == "decision":
        return registry.record_decision(
            vertical=VERTICAL,
            ds="2024-01-01",
            model_version="m1",
            approved=index % 2 == 0,
            reasons=[{"rule": "f1>=0.5", "passed": True, "racer": index}],
            actor=f"racer{index}",
        ).approved
    if job == "model":
        return registry.record_model(
            vertical=VERTICAL,
            model_version="m-race",
            data_version="d1",
            ds="2024-01-01",
            metrics={"f1": index / 10},
            lineage={"racer": index},
            dag_run_id=f"run{index}",
        ).model_version
    raise ValueError(f"unknown racer job {job!r}")


def _seq(record: DeploymentRecord | None) -> int | None:
    return None if record is None else record.seq
