"""Helpers for the scoring tests: a tiny trained model, a deployed bucket and a real server process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from pipelines.config import PROJECT_ROOT, Features
from pipelines.orchestration.stack import free_ports
from pipelines.release.deploy import DeployResult, deploy_version

VERTICAL = "finance"
NUMERIC = ["income", "age", "debt"]
CATEGORICAL = ["home_ownership", "job_type"]
FEATURES = Features(numeric=NUMERIC, categorical=CATEGORICAL)


def synthetic_frame(rows: int, seed: int) -> pd.DataFrame:
    """Rows whose label depends on income, debt and home ownership, with some missing values."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50, 15, rows),
            "age": rng.integers(18, 80, rows).astype(float),
            "debt": rng.gamma(2.0, 10.0, rows),
            "home_ownership": rng.choice(["rent", "owner", "parents", "other"], rows),
            "job_type": rng.choice(["fixed", "freelance", "partime"], rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "income"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "job_type"] = None
    logit = 0.08 * (frame["debt"] - 20) - 0.05 * (frame["income"].fillna(50) - 50) + (frame["home_ownership"] == "rent")
    frame["status"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit.to_numpy())), "bad", "good")
    return frame


def train_tiny_model(model_dir: Path, *, seed: int, hidden: tuple[int, ...] = (16, 8), steps: int = 150) -> Path:
    """A real (small) model dir with ONNX exports: plain torch, a few hundred rows, well under a second."""
    import torch

    from pipelines.model.features import Preprocessor
    from pipelines.model.modeling import TabularMLP, save_model_dir
    from pipelines.release.export import export_model_dir

    frame = synthetic_frame(400, seed)
    pre = Preprocessor.fit(frame, FEATURES)
    x = torch.from_numpy(pre.transform(frame))
    y = torch.from_numpy((frame["status"] == "bad").to_numpy(dtype=np.float32))
    torch.manual_seed(seed)
    module = TabularMLP(x.shape[1], list(hidden), 0.0)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(module(x), y)
        loss.backward()
        optimiser.step()
    module.eval()
    hparams = {"input_dim": x.shape[1], "hidden": list(hidden), "dropout": 0.0}
    save_model_dir(
        model_dir, module, pre, hparams=hparams, decision_threshold=0.4, label={"column": "status", "positive": "bad"}
    )
    export_model_dir(model_dir)
    return model_dir


def deploy(bucket_url: str, model_dir: Path, version: str) -> DeployResult:
    return deploy_version(
        bucket_url=bucket_url,
        vertical=VERTICAL,
        model_version=version,
        model_dir=model_dir,
        metrics={"challenger": {"f1": 0.7, "confusion_matrix": [[10, 2], [3, 9]]}, "holdout_rows": 24},
        lineage={"data_version": f"data-{version}"},
        model_card=f"# {version}\n",
        ds="2024-01-01",
    )


@contextmanager
def running_server(home: Path, bucket_url: str, **env: str) -> Iterator[str]:
    """``python -m pipelines serve`` on a free loopback port; yields its base URL."""
    port = free_ports(1)[0]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINES_")}
    environ.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-compiled imports start the server faster
    environ = {
        **environ,
        "PIPELINES_HOME": str(home),
        "PIPELINES_BUCKET_URL": bucket_url,
        "PIPELINES_SCORING_POLL_S": "0.5",
        **env,
    }
    log_path = home / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited {proc.returncode}: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/v2/health/live", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def server_log(home: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(home.glob("serve-*.log")))
