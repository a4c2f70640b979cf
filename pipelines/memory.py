"""Hand the memory a finished stage freed back to the operating system, for the next stage.

``python -m pipelines run`` runs every stage in one process (an Airflow task runs one stage in
its own).  Arrow's allocator (mimalloc in pyarrow's wheels) and glibc's malloc keep what a stage
frees for reuse, resident: on a 5M-row vertical the window that snapshot and train each read
(1.6 GB in memory, 3.3 GB resident while Parquet decodes it) stayed resident under the next
stage, and evaluate peaked at 7.7 GB in the run where it needs 4 GB alone.  Between stages
`release_freed_memory` asks both to return their free pages (Arrow's ``release_unused``, glibc's
``malloc_trim``).  Nothing a stage still holds is touched; only where freed memory goes changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import cache

#: The cyclic collector's thresholds for a process of this stack (Python's default: 700, 10, 10).
#: Importing Airflow, GX, torch and DVC creates millions of long-lived objects; with a collection
#: of the youngest generation every 700 new container objects, the older generations were walked
#: again and again while they loaded (Airflow's API server, its first request included: ~10.5 ->
#: ~8.8 CPU-s; a ``dag.test()`` night of finance spent 2.1 CPU-s collecting, 1.1 with these).  A
#: young collection still walks at most 50,000 objects; cycles wait a little longer to be freed.
COLLECTOR_THRESHOLDS = (50_000, 20, 20)


def tune_collector() -> None:
    """Collect less often (`COLLECTOR_THRESHOLDS`): Airflow's processes, the CLI and DVC's stages call this."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def release_freed_memory(*, between_stages: bool = False) -> None:
    """Collect garbage, then return the free pages of Arrow's memory pool and of malloc to the OS.

    ``between_stages``: a stage has returned, so what is still alive belongs to the process for
    good (modules, their caches, a small result record).  It is then frozen out of the collector's
    generations (``gc.freeze``, as Airflow's and Celery's preloading do), so the next collection
    walks only what later stages create.  Each collection walked the whole stack before: ~800k
    objects once torch and GX are imported, 0.45 s each, 3.4 s of a 12.6 s finance night.  Frozen
    objects are still freed by reference counting (a stage's frames and tensors are); only a
    reference cycle among them would wait for the process's end.
    """
    gc.collect()
    if between_stages:
        gc.freeze()
    if "pyarrow" in sys.modules:  # nothing to give back if no stage used Arrow
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, which has ``malloc_trim``; None elsewhere (musl, macOS), where malloc is left alone."""
    name = ctypes.util.find_library("c")
    if name is None or sys.platform != "linux":
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") else None
