"""The body of one registry racer, run in a spawned interpreter.

Its own top-level module (not the test file) because ``spawn`` unpickles the
target by importing its module by name, and a stray ``tests`` package in
site-packages shadows this repository's ``tests`` namespace package.
"""

from __future__ import annotations

import traceback
from typing import Any

from pipelines.registry import DeploymentRecord, Registry

VERTICAL = "finance"


def race(url: str, barrier: Any, results: Any, index: int, job: str, args: dict[str, Any], timeout: float) -> None:
    """Open the registry with the others, then run ``job`` with the others.

    Reports ``(index, ok, value)`` on ``results``; a failure's value is its traceback.
    """
    try:
        barrier.wait(timeout)
        registry = Registry.from_url(url)  # first use: the schema upgrade races here
        barrier.wait(timeout)
        value = _run(registry, index, job, args)
        registry.close()
        results.put((index, True, value))
    except BaseException:
        results.put((index, False, traceback.format_exc()))


def _run(registry: Registry, index: int, job: str, args: dict[str, Any]) -> Any:
    if job == "open":
        return None
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
            **args,
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
