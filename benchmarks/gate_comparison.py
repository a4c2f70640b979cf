"""Time the gate's paired comparison, old row bootstrap vs the current one, at given holdout sizes.

    .venv/bin/python benchmarks/gate_comparison.py 100000 800000 [--old-resamples N] [--new-only]

The old implementation is the reference copy kept in tests/unit/comparison_reference.py
(the row bootstrap); both compare all six gate metrics on the same seeded scores, the new
one with the default 1,000 resamples.  The old one's cost is linear in its resamples, so
``--old-resamples 100`` times a tenth of them and scales the figure by 10 (said in the line).
Prints wall and CPU seconds (a shared machine's wall time says little) per size and implementation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import comparison_reference as old

from pipelines.config import Comparison
from pipelines.gate.comparison import compare_paired

METRICS = ["accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc"]
RESAMPLES = 1000


def scores(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.06).astype(int)
    shared = rng.random(n)
    challenger = np.clip(0.4 * y + 0.6 * shared, 0, 1)
    return y, challenger, np.clip(0.35 * y + 0.6 * (0.8 * shared + 0.2 * rng.random(n)), 0, 1)


def _timed(label: str, n: int, scale: float, run: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    run(*args, **kwargs)
    wall, cpu = (time.perf_counter() - wall) * scale, (time.process_time() - cpu) * scale
    note = f"  (x{scale:g} from {RESAMPLES / scale:g} resamples)" if scale != 1 else ""
    print(f"{n:>9} rows  {label}  wall {wall:8.2f} s  cpu {cpu:8.2f} s{note}", flush=True)


def main(argv: list[str]) -> None:
    old_resamples = int(argv[argv.index("--old-resamples") + 1]) if "--old-resamples" in argv else RESAMPLES
    sizes = [int(a) for i, a in enumerate(argv) if a.isdigit() and (i == 0 or argv[i - 1] != "--old-resamples")]
    y, a, b = scores(1000)
    compare_paired(y, a, b, challenger_threshold=0.5, reference_threshold=0.5, metrics=METRICS, config=Comparison())
    for n in sizes:
        y, a, b = scores(n)
        thresholds = {"challenger_threshold": 0.5, "reference_threshold": 0.5}
        _timed("new", n, 1.0, compare_paired, y, a, b, **thresholds, metrics=METRICS, config=Comparison())
        if "--new-only" in argv:
            continue
        truth = y.astype(bool)
        draws = {"metrics": METRICS, "resamples": old_resamples, "seed": 0}
        _timed(
            "old",
            n,
            RESAMPLES / old_resamples,
            old.bootstrap_metric_differences,
            truth,
            (a, a >= 0.5),
            (b, b >= 0.5),
            **draws,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
