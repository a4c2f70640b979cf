"""Time the gate's paired comparison, old row bootstrap vs the current one, at given holdout sizes.

    .venv/bin/python benchmarks/gate_comparison.py 100000 800000 [--new-only]

The old implementation is the reference copy kept in tests/unit/comparison_reference.py
(the row bootstrap plus the same point metrics); both compare all six gate metrics with
1,000 resamples on the same seeded scores.  Prints one line per size and implementation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import comparison_reference as old

from pipelines.config import Comparison
from pipelines.gate.comparison import compare_paired

METRICS = ["accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc"]


def scores(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.06).astype(int)
    shared = rng.random(n)
    return (
        y,
        np.clip(0.4 * y + 0.6 * shared, 0, 1),
        np.clip(0.35 * y + 0.6 * (0.8 * shared + 0.2 * rng.random(n)), 0, 1),
    )


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv if not a.startswith("--")]
    for n in sizes:
        y, a, b = scores(n)
        start = time.perf_counter()
        compare_paired(y, a, b, challenger_threshold=0.5, reference_threshold=0.5, metrics=METRICS, config=Comparison())
        print(f"{n:>9} rows  new  {time.perf_counter() - start:8.2f} s", flush=True)
        if "--new-only" in argv:
            continue
        start = time.perf_counter()
        truth = y.astype(bool)
        old.bootstrap_metric_differences(truth, (a, a >= 0.5), (b, b >= 0.5), metrics=METRICS, resamples=1000, seed=0)
        print(f"{n:>9} rows  old  {time.perf_counter() - start:8.2f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
