"""The served model: a plain torch MLP plus its preprocessing, saved as a directory.

Torch only (no Lightning), so scoring and deploy checks stay dependency-light.
A model directory holds three files whose bytes depend only on their content:

* ``weights.pt``          the module's ``state_dict`` (``torch.save``; loaded with ``weights_only=True``)
* ``preprocessing.json``  the fitted `Preprocessor`
* ``model.json``          architecture, feature names, decision threshold, label
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.errors import TrainingError
from pipelines.features import Preprocessor
from pipelines.layout import write_bytes_atomic

MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
PREPROCESSING_FILE = "preprocessing.json"
MODEL_FILE = "model.json"
MODEL_FILES = (WEIGHTS_FILE, PREPROCESSING_FILE, MODEL_FILE)


class TabularMLP(torch.nn.Module):
    """Feed-forward net over preprocessed rows; one logit per row."""

    def __init__(self, input_dim: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = size
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class ScoringModel:
    """A loaded model directory, ready to score raw frames."""

    preprocessor: Preprocessor
    module: TabularMLP
    decision_threshold: float
    feature_names: list[str]
    label: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probability per row (float64)."""
        x = torch.from_numpy(self.preprocessor.transform(frame))
        self.module.eval()
        with torch.inference_mode():
            return torch.sigmoid(self.module(x)).double().numpy()

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """0/1 per row: probability at or above the decision threshold."""
        return (self.predict_proba(frame) >= self.decision_threshold).astype(np.int64)


def save_model_dir(
    path: Path,
    module: torch.nn.Module,
    preprocessor: Preprocessor,
    *,
    hparams: dict[str, Any],
    decision_threshold: float,
    label: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the three model files atomically; return their paths.

    ``hparams`` must hold ``input_dim``, ``hidden`` and ``dropout`` (the
    architecture `load_model_dir` rebuilds); other keys are kept as metadata.
    Identical weights and inputs give identical bytes, so a sha256 of
    ``weights.pt`` identifies a trained model.
    """
    missing = {"input_dim", "hidden", "dropout"} - set(hparams)
    if missing:
        raise TrainingError(f"save_model_dir: hparams lack {sorted(missing)} needed to rebuild the model")
    if int(hparams["input_dim"]) != len(preprocessor.output_names):
        raise TrainingError(
            f"save_model_dir: input_dim {hparams['input_dim']} does not match the preprocessor's "
            f"{len(preprocessor.output_names)} output columns"
        )
    manifest = {
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": {
            "input_dim": int(hparams["input_dim"]),
            "hidden": [int(h) for h in hparams["hidden"]],
            "dropout": float(hparams["dropout"]),
        },
        "hparams": hparams,
        "feature_names": preprocessor.feature_names,
        "output_names": preprocessor.output_names,
        "decision_threshold": float(decision_threshold),
        "label": label,
        "torch_version": torch.__version__.split("+")[0],
    }
    files = {
        WEIGHTS_FILE: _state_dict_bytes(module),
        PREPROCESSING_FILE: _json_bytes(preprocessor.to_dict()),
        MODEL_FILE: _json_bytes(manifest),
    }
    written = []
    for name, data in files.items():
        write_bytes_atomic(path / name, data)
        written.append(path / name)
    return written


def load_model_dir(path: Path) -> ScoringModel:
    """Load a directory written by `save_model_dir` (weights with ``weights_only=True``)."""
    absent = [name for name in MODEL_FILES if not (path / name).is_file()]
    if absent:
        raise TrainingError(f"model directory {path} lacks {absent}; rerun the train stage to rebuild it")
    manifest = json.loads((path / MODEL_FILE).read_text())
    if manifest.get("format_version") != MODEL_FORMAT_VERSION:
        raise TrainingError(
            f"model directory {path} has format_version {manifest.get('format_version')!r}; "
            f"this code reads {MODEL_FORMAT_VERSION}. Retrain with the current code."
        )
    preprocessor = Preprocessor.from_dict(json.loads((path / PREPROCESSING_FILE).read_text()))
    arch = manifest["architecture"]
    module = TabularMLP(int(arch["input_dim"]), [int(h) for h in arch["hidden"]], float(arch["dropout"]))
    state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    return ScoringModel(
        preprocessor=preprocessor,
        module=module,
        decision_threshold=float(manifest["decision_threshold"]),
        feature_names=list(manifest["feature_names"]),
        label=manifest.get("label"),
        metadata=manifest,
    )


def _state_dict_bytes(module: torch.nn.Module) -> bytes:
    # Saved to memory, not to the path: torch names the zip's records after the
    # file, and a temp-file name would make the bytes differ run to run.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
