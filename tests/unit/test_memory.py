"""Between the stages of one process, what a stage freed goes back to the operating system."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.config import PROJECT_ROOT

# A fresh interpreter: read a 160 MB Parquet file as a stage reads its window, drop the frame,
# then release.  Resident memory in MiB at each step.
_PROBE = textwrap.dedent(
    """
    import gc, json, re, sys
    import numpy as np, pandas as pd
    from pipelines.memory import release_freed_memory

    def rss():
        return int(re.search(r"^VmRSS:\\s+(\\d+)", open("/proc/self/status").read(), re.M).group(1)) // 1024

    path = sys.argv[1]
    columns = [f"c{i}" for i in range(10)]
    pd.DataFrame(np.random.default_rng(0).normal(size=(2_000_000, 10)), columns=columns).to_parquet(path)
    gc.collect()
    base = rss()
    frame = pd.read_parquet(path)
    loaded = rss()
    del frame
    release_freed_memory()
    print(json.dumps({"base": base, "loaded": loaded, "released": rss()}))
    """
)


def test_what_a_stage_freed_is_returned_before_the_next_one(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "window.parquet")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mib = json.loads(proc.stdout)
    assert mib["loaded"] - mib["base"] > 150, mib  # the frame and Parquet's decoding buffers were resident
    # Arrow's pool keeps freed buffers for reuse (the frame's 160 MB and more stayed resident): now returned.
    assert mib["released"] - mib["base"] < 60, mib


# Between stages the survivors are frozen out of the collector; what a later stage leaves in a
# reference cycle must still be collected at the next boundary, and the frozen objects stay out.
_CYCLE_PROBE = textwrap.dedent(
    """
    import gc, json, re, weakref
    import numpy as np
    from pipelines.memory import release_freed_memory

    def rss():
        return int(re.search(r"^VmRSS:\\s+(\\d+)", open("/proc/self/status").read(), re.M).group(1)) // 1024

    class Node:
        pass

    kept = Node()
    release_freed_memory(between_stages=True)  # the first boundary: `kept` belongs to the process now
    frozen = gc.get_freeze_count()
    base = rss()
    node = Node()
    node.self, node.data = node, np.ones(40_000_000)  # 320 MB held only by a reference cycle
    dead = weakref.ref(node)
    held = rss()
    del node
    release_freed_memory(between_stages=True)
    walked = gc.get_objects()  # what a collection now walks: the generations, not the frozen objects
    print(json.dumps({
        "frozen": frozen, "walked": len(walked), "kept_walked": any(obj is kept for obj in walked),
        "base": base, "held": held, "released": rss(), "cycle_alive": dead() is not None,
    }))
    """
)


def test_a_cycle_a_later_stage_dropped_is_collected_at_the_next_boundary(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-c", _CYCLE_PROBE], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    # The imported stack and what the first stage kept are out of the collector's generations.
    assert seen["frozen"] > 10_000 and seen["walked"] < seen["frozen"] / 10 and not seen["kept_walked"], seen
    assert seen["held"] - seen["base"] > 250, seen
    assert not seen["cycle_alive"] and seen["released"] - seen["base"] < 60, seen
