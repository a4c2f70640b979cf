"""Serving benchmark: PyTorch vs ONNX fp32 vs ONNX int8, in process and over loopback HTTP.

Not a test: run it by hand (2 cores, nothing else busy) and paste the table
into the issue or docs/serving.md::

    .venv/bin/python benchmarks/serving.py                       # the finance production model
    .venv/bin/python benchmarks/serving.py --model-dir PATH      # any model dir with exports
    .venv/bin/python benchmarks/serving.py --synthetic           # no deployed model needed

For each format it reports the artefact size, in-process ``predict_proba``
latency (p50/p99, 1 row and 1,000 rows), then starts ``python -m pipelines
serve`` on a loopback port and drives ``POST /v1/<vertical>/predict`` with a
bounded closed-loop load generator (``--clients`` threads, ``--seconds`` per
scenario): p50/p99 latency, requests/s, rows/s and the server's resident
memory (one worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.scoring.runtime import ONNX_FILES, OnnxScorer, load_model  # noqa: E402

FORMATS = ("torch", "onnx", "onnx_int8")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def synthetic_model(root: Path) -> tuple[Path, pd.DataFrame]:
    """A finance-shaped model (9 numeric, 4 categorical features, hidden [32, 16]) trained briefly."""
    import torch

    from pipelines.config import Features
    from pipelines.model.features import Preprocessor
    from pipelines.model.modeling import TabularMLP, save_model_dir
    from pipelines.release.export import export_model_dir

    rng = np.random.default_rng(0)
    rows = 4000
    numeric = [f"x{i}" for i in range(9)]
    categorical = [f"c{i}" for i in range(4)]
    frame = pd.DataFrame({n: rng.normal(size=rows) for n in numeric})
    for i, n in enumerate(categorical):
        frame[n] = rng.choice([f"v{j}" for j in range(3 + 2 * i)], rows)
    target = (frame["x0"] + frame["x1"] * 0.5 + (frame["c0"] == "v1") + rng.normal(size=rows) > 0.5).to_numpy()
    pre = Preprocessor.fit(frame, Features(numeric=numeric, categorical=categorical))
    x = torch.from_numpy(pre.transform(frame))
    y = torch.from_numpy(target.astype(np.float32))
    module = TabularMLP(x.shape[1], [32, 16], 0.0)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(module(x), y).backward()
        optimiser.step()
    model_dir = root / "model"
    hparams = {"input_dim": x.shape[1], "hidden": [32, 16], "dropout": 0.0}
    save_model_dir(model_dir, module.eval(), pre, hparams=hparams, decision_threshold=0.5)
    export_model_dir(model_dir)
    return model_dir, frame


def production_model(vertical: str, root: Path) -> tuple[Path, pd.DataFrame]:
    """The vertical's production version folder (verified) and its validated rows."""
    from pipelines.config import Settings
    from pipelines.release.bucket import read_pointer
    from pipelines.release.serving import fetch_verified

    settings = Settings.from_env()
    pointer = read_pointer(settings.bucket_url, vertical)
    if pointer is None:
        raise SystemExit(f"no production model for {vertical}: run `make pipeline` or pass --synthetic")
    path = fetch_verified(
        vertical, pointer["version"], bucket_url=settings.bucket_url, cache_dir=root / "cache", pointer=pointer
    )
    data = sorted((settings.home / "data" / vertical / "validated").glob("*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in data[-60:]], ignore_index=True)
    return path, frame


def in_process(model_dir: Path, frame: pd.DataFrame, fmt: str, repeats: int) -> dict[str, float]:
    model = load_model("bench", "v", model_dir, fmt)  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for rows in (1, 1000):
        batch = frame.sample(rows, replace=len(frame) < rows, random_state=1)[model.feature_names]
        model.predict_proba(batch)  # warm-up
        times = []
        for _ in range(repeats if rows == 1 else max(20, repeats // 20)):
            started = time.perf_counter()
            model.predict_proba(batch)
            times.append((time.perf_counter() - started) * 1000)
        out[f"p50_{rows}"], out[f"p99_{rows}"] = percentile(times, 50), percentile(times, 99)
    if isinstance(model.scorer, OnnxScorer):
        # The network alone on preprocessed rows: what quantisation changes (the pandas
        # preprocessing above is the same code for both ONNX formats, and most of their time).
        matrix = model.scorer.preprocessor.transform(batch)
        model.scorer.predict_matrix(matrix)
        times = []
        for _ in range(max(50, repeats // 10)):
            started = time.perf_counter()
            model.scorer.predict_matrix(matrix)
            times.append((time.perf_counter() - started) * 1000)
        out["net_p50_1000"] = percentile(times, 50)
    return out


def deploy_for_serving(model_dir: Path, root: Path) -> str:
    """Deploy ``model_dir`` as vertical ``bench`` version ``v`` to a bucket under ``root``; its URL."""
    from pipelines.release.deploy import deploy_version

    bucket_url = (root / "bucket").as_uri()
    deploy_version(
        bucket_url=bucket_url,
        vertical="bench",
        model_version="v",
        model_dir=model_dir,
        metrics={"challenger": {}},
        lineage={},
        model_card="# benchmark\n",
        ds="2024-01-01",
    )
    return bucket_url


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def over_http(
    bucket_url: str, home: Path, fmt: str, frame: pd.DataFrame, *, features: list[str], clients: int, seconds: float
) -> dict[str, float]:
    """Start a server for ``fmt`` and drive it; one scenario per batch size."""
    port = 18090 + FORMATS.index(fmt)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINES_")}
    env.update(
        PIPELINES_HOME=str(home / fmt),
        PIPELINES_BUCKET_URL=bucket_url,
        PIPELINES_SCORING_FORMAT=fmt,
        PIPELINES_SCORING_POLL_S="60",
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the {fmt} server did not become ready")
            time.sleep(0.2)
        for rows in (1, 1000):
            batch = frame.sample(rows, replace=len(frame) < rows, random_state=2)[features]
            body = json.dumps({"records": json.loads(batch.to_json(orient="records"))}).encode()
            latencies: list[float] = []
            failures = [0]
            lock = threading.Lock()
            stop = time.monotonic() + seconds

            def client(
                body: bytes = body,
                latencies: list[float] = latencies,
                failures: list[int] = failures,
                lock: threading.Lock = lock,
                stop: float = stop,
            ) -> None:
                with httpx.Client(timeout=30, headers={"Content-Type": "application/json"}) as http:
                    http.post(f"{base}/v1/bench/predict", content=body)  # warm-up
                    mine: list[float] = []
                    while time.monotonic() < stop:
                        started = time.perf_counter()
                        response = http.post(f"{base}/v1/bench/predict", content=body)
                        mine.append((time.perf_counter() - started) * 1000)
                        if response.status_code != 200:
                            failures[0] += 1
                    with lock:
                        latencies.extend(mine)

            threads = [threading.Thread(target=client) for _ in range(clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            out[f"p50_{rows}"], out[f"p99_{rows}"] = percentile(latencies, 50), percentile(latencies, 99)
            out[f"rps_{rows}"] = len(latencies) / elapsed
            out[f"rows_s_{rows}"] = len(latencies) * rows / elapsed
            out[f"failed_{rows}"] = failures[0]
        out["rss_mib"] = _rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--vertical", default="finance", help="benchmark this vertical's production model")
    source.add_argument("--model-dir", type=Path, help="a model dir holding weights.pt and the ONNX exports")
    source.add_argument("--synthetic", action="store_true", help="train a finance-shaped model first")
    parser.add_argument("--clients", type=int, default=2, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each HTTP scenario")
    parser.add_argument("--repeats", type=int, default=2000, help="in-process single-row calls")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        if args.synthetic:
            model_dir, frame = synthetic_model(root)
        elif args.model_dir:
            model_dir, frame = args.model_dir, None
        else:
            model_dir, frame = production_model(args.vertical, root)
        reference = load_model("bench", "v", model_dir, "torch")
        if frame is None:
            raise SystemExit("--model-dir needs rows: use --synthetic or --vertical")
        frame = frame[reference.feature_names]

        bucket_url = deploy_for_serving(model_dir, root)
        sizes = {"torch": (model_dir / "weights.pt").stat().st_size}
        sizes.update({fmt: (model_dir / name).stat().st_size for fmt, name in ONNX_FILES.items()})
        results = {}
        for fmt in FORMATS:
            print(f"benchmarking {fmt} …", file=sys.stderr, flush=True)
            results[fmt] = {
                "size": sizes[fmt],
                "local": in_process(model_dir, frame, fmt, args.repeats),
                "http": over_http(
                    bucket_url,
                    root,
                    fmt,
                    frame,
                    features=reference.feature_names,
                    clients=args.clients,
                    seconds=args.seconds,
                ),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\nmodel: {model_dir if not args.synthetic else 'synthetic finance-shaped MLP [32, 16]'}; "
        f"{os.cpu_count()} CPUs; HTTP: {args.clients} clients x {args.seconds:.0f} s per scenario, one worker\n"
    )
    print(
        "| format | artefact | in-proc 1 row p50/p99 ms | in-proc 1,000 rows p50/p99 ms | "
        "HTTP 1 row p50/p99 ms | HTTP 1 row req/s | HTTP 1,000 rows p50/p99 ms | HTTP rows/s | server RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, r in results.items():
        local, http = r["local"], r["http"]
        failed = http["failed_1"] + http["failed_1000"]
        print(
            f"| {fmt} | {r['size'] / 1024:.1f} KiB | {local['p50_1']:.3f} / {local['p99_1']:.3f} | "
            f"{local['p50_1000']:.2f} / {local['p99_1000']:.2f} | {http['p50_1']:.2f} / {http['p99_1']:.2f} | "
            f"{http['rps_1']:.0f} | {http['p50_1000']:.1f} / {http['p99_1000']:.1f} | {http['rows_s_1000']:.0f} | "
            f"{http['rss_mib']:.0f} MiB{'' if not failed else f' ({failed:.0f} failed)'} |"
        )


if __name__ == "__main__":
    main()
