"""Train a manufacturing-shaped model with ``accelerator="auto"``: samples/s on the GPU vs the CPU.

The project's training path (`pipelines.model.training._fit`, the same Trainer the train
stage builds, which asks for ``accelerator="auto"``) on a simulated
manufacturing window: ~14k readings a day x 365 days (5M rows) with 23 auxiliary
sensors (30 features after the 7 core ones), preprocessed by the vertical's own
`Preprocessor`.  The same fit runs once pinned to the CPU (``CUDA_VISIBLE_DEVICES=""``
in a child process) for the ratio.

    .venv/bin/python benchmarks/gpu_train.py                   # 5M rows, 2 epochs
    .venv/bin/python benchmarks/gpu_train.py --rows 500000 --epochs 1 --json out.json

The lock file pins the CPU build of torch; a GPU machine needs the CUDA build first
(docs/benchmarks.md, "GPU"): without it ``accelerator="auto"`` picks the CPU and
this script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train_once(rows: int, epochs: int, batch_size: int) -> dict:
    """One fit in this process; what it ran on and how fast."""
    import torch

    from pipelines.config import load_spec
    from pipelines.demo.simulate import simulate_sensor_readings
    from pipelines.model.training import _fit, _hparams, fit_preprocessor

    spec = load_spec("manufacturing")
    numeric = list(spec.features.numeric)
    end = date(2026, 11, 27)
    started = time.perf_counter()
    frame = simulate_sensor_readings(
        rows, seed=0, start=end - timedelta(days=364), end=end, n_extra_features=max(0, 30 - len(numeric))
    )
    extra = [c for c in frame.columns if c.startswith("aux_sensor_")]
    features = spec.features.model_copy(update={"numeric": numeric + extra})
    model = spec.model.model_copy(update={"batch_size": batch_size, "epochs": epochs, "early_stopping": None})
    spec = spec.model_copy(update={"features": features, "model": model})
    preprocessor = fit_preprocessor(frame, spec)
    x = preprocessor.transform(frame).astype("float32")
    y = (frame[spec.label.column] == spec.label.positive).to_numpy("float32")
    prepared = time.perf_counter() - started
    hparams = _hparams(spec, x, y, preprocessor=preprocessor)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        _, epochs_done, _, _ = _fit(x, y, hparams, spec, checkpoint_dir=Path(tmp), resume_from=None)
        seconds = time.perf_counter() - started
    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "rows": rows,
        "features": int(x.shape[1]),
        "epochs": epochs_done,
        "batch_size": batch_size,
        "fit_seconds": seconds,
        "prepare_seconds": prepared,
        "samples_per_s": rows * epochs_done / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096, help="the spec's 512 underfeeds a GPU")
    parser.add_argument("--skip-cpu", action="store_true", help="only the accelerator run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(train_once(args.rows, args.epochs, args.batch_size)))
        return 0

    def child(env_extra: dict[str, str]) -> dict:
        env = {**os.environ, **env_extra}
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--rows",
                str(args.rows),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"training child failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    auto = child({})
    results = {"auto": auto}
    if auto["device"] == "cpu":
        print(
            "accelerator=auto chose the CPU: no CUDA device or a CPU-only torch build "
            f"(torch {auto['torch']}, cuda {auto['cuda_build']}); see docs/benchmarks.md, 'GPU'"
        )
    elif not args.skip_cpu:
        results["cpu"] = child({"CUDA_VISIBLE_DEVICES": ""})
    for name, r in results.items():
        print(
            f"{name:>5}: {r['device']} {r['gpu'] or ''} {r['rows']:,} rows x {r['features']} features, "
            f"{r['epochs']} epochs of batch {r['batch_size']}: {r['fit_seconds']:.1f} s, "
            f"{r['samples_per_s']:,.0f} samples/s (data prep {r['prepare_seconds']:.1f} s)"
        )
    if "cpu" in results:
        print(f"speed-up: {auto['samples_per_s'] / results['cpu']['samples_per_s']:.1f}x samples/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
