"""Scoring figures from benchmarks/serving.py, as ratios for the harness table.

ONNX fp32 and int8 in-process latency against PyTorch on the same rows (budget: int8
not slower than fp32), the int8 artefact against the fp32 one (budget: >= 2x
smaller), and one-row p99 over loopback HTTP (budget 10 ms, reported against the
in-process p99 of the same format).  `serving.py` stays runnable on its own for
the full table (docs/serving.md).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness import Config, Figure

P99_BUDGET_MS = 10.0


def run(config: Config) -> list[Figure]:
    import serving

    from pipelines.scoring.runtime import ONNX_FILES

    root = tempfile.mkdtemp(prefix="serving-", dir=config.workdir)
    try:
        model_dir, frame = serving.synthetic_model(Path(root))
        reference = serving.load_model("bench", "v", model_dir, "torch")
        frame = frame[reference.feature_names]
        repeats = 200 if config.quick else 2000
        local = {fmt: serving.in_process(model_dir, frame, fmt, repeats) for fmt in serving.FORMATS}
        sizes = {fmt: (model_dir / name).stat().st_size for fmt, name in ONNX_FILES.items()}
        figures = [
            Figure(
                name=f"in-process 1 row p50, {fmt} vs torch",
                measured=local[fmt]["p50_1"],
                baseline=local["torch"]["p50_1"],
                unit="ms",
                detail=f"1,000 rows p50: {local[fmt]['p50_1000']:.2f} ms vs {local['torch']['p50_1000']:.2f} ms",
            )
            for fmt in ("onnx", "onnx_int8")
        ]
        figures.append(
            Figure(
                name="in-process 1,000 rows p50, int8 vs fp32 ONNX network",
                measured=local["onnx_int8"]["net_p50_1000"],
                baseline=local["onnx"]["net_p50_1000"],
                unit="ms",
                budget=1.0,
                detail=f"with the shared preprocessing: {local['onnx_int8']['p50_1000']:.2f} ms vs "
                f"{local['onnx']['p50_1000']:.2f} ms",
            )
        )
        figures.append(
            Figure(
                name="artefact size, int8 vs fp32 ONNX",
                measured=sizes["onnx_int8"],
                baseline=sizes["onnx"],
                unit="B",
                budget=0.5,
            )
        )
        bucket_url = serving.deploy_for_serving(model_dir, Path(root))
        http = serving.over_http(
            bucket_url,
            Path(root),
            "onnx",
            frame,
            features=reference.feature_names,
            clients=2,
            seconds=1.0 if config.quick else 5.0,
        )
        figures.append(
            Figure(
                name="HTTP 1 row p99 (onnx, 2 clients) vs in-process p99",
                measured=http["p99_1"],
                baseline=local["onnx"]["p99_1"],
                unit="ms",
                detail=f"absolute budget {P99_BUDGET_MS} ms: {'ok' if http['p99_1'] <= P99_BUDGET_MS else 'OVER'}; "
                f"{http['rps_1']:.0f} req/s",
            )
        )
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)
