"""The served model: a plain torch MLP plus its preprocessing, saved as a directory.

Torch only (no Lightning), so scoring and deploy checks stay dependency-light.
A model directory holds three files whose bytes depend only on their content:

* ``weights.pt``          the module's ``state_dict`` (``torch.save``; loaded with ``weights_only=True``)
* ``preprocessing.json``  the fitted `Preprocessor`
* ``model.json``          architecture, feature names, decision threshold (chosen on
                          validation where the spec asks), label
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
from pipelines.layout import write_bytes_atomic
from pipelines.model.features import Preprocessor

MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
PREPROCESSING_FILE = "preprocessing.json"
MODEL_FILE = "model.json"
MODEL_FILES = (WEIGHTS_FILE, PREPROCESSING_FILE, MODEL_FILE)


class TabularMLP(torch.nn.Module):
    """Feed-forward net over preprocessed rows; one logit per row.

    Options (all off by default, which keeps the plain MLP's parameter names):

    * ``embeddings``: ``[start, width, dim]`` column blocks (one categorical's
      one-hot columns) projected to ``dim`` by a bias-free linear map before
      the deep part, i.e. an embedding lookup that still takes the same float
      matrix as input (so serving and export need no index inputs);
    * ``wide``: a linear map of the whole input added to the deep output, so
      the network contains the logistic baseline as a special case;
    * ``batch_norm``: batch normalisation after each hidden linear layer;
    * ``calibrated``: ``scale * logit + bias`` buffers set on validation
      (`pipelines.model.thresholds`), identity while training.
    """

    passthrough: torch.Tensor

    def __init__(
        self,
        input_dim: int,
        hidden: list[int],
        dropout: float = 0.0,
        *,
        wide: bool = False,
        batch_norm: bool = False,
        embeddings: list[list[int]] | None = None,
        calibrated: bool = False,
    ) -> None:
        super().__init__()
        blocks = [(int(s), int(w), int(d)) for s, w, d in (embeddings or [])]
        embedded = {c for start, width, _ in blocks for c in range(start, start + width)}
        self.register_buffer(
            "passthrough", torch.tensor([c for c in range(input_dim) if c not in embedded], dtype=torch.long)
        )
        self.blocks = blocks
        self.embed = torch.nn.ModuleList(torch.nn.Linear(w, d, bias=False) for _, w, d in blocks)
        layers: list[torch.nn.Module] = []
        width = input_dim - len(embedded) + sum(d for _, _, d in blocks)
        for size in hidden:
            layers.append(torch.nn.Linear(width, size))
            if batch_norm:
                layers.append(torch.nn.BatchNorm1d(size))
            layers += [torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = size
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)
        self.wide = torch.nn.Linear(input_dim, 1, bias=False) if wide else None
        if calibrated:
            self.register_buffer("calibration", torch.tensor([1.0, 0.0]))
        else:
            self.calibration: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep_in = x
        if self.blocks:
            parts = [x.index_select(1, self.passthrough)]
            parts += [emb(x[:, s : s + w]) for (s, w, _), emb in zip(self.blocks, self.embed, strict=True)]
            deep_in = torch.cat(parts, dim=1)
        logit = self.net(deep_in).squeeze(-1)
        if self.wide is not None:
            logit = logit + self.wide(x).squeeze(-1)
        if self.calibration is not None:
            logit = logit * self.calibration[0] + self.calibration[1]
        return logit


def embedding_blocks(preprocessor: Preprocessor, dim: int, min_categories: int) -> list[list[int]]:
    """``[start, width, dim]`` per categorical with at least ``min_categories`` kept values (none when dim is 0)."""
    if dim <= 0:
        return []
    blocks, start = [], len(preprocessor.numeric)
    for vocab in preprocessor.categorical:
        width = len(vocab.categories) + 2  # + __other__ and __missing__
        if len(vocab.categories) >= min_categories:
            blocks.append([start, width, dim])
        start += width
    return blocks


def architecture_of(hparams: dict[str, Any]) -> dict[str, Any]:
    """The keys that rebuild a `TabularMLP` (what ``model.json`` stores as ``architecture``)."""
    return {
        "input_dim": int(hparams["input_dim"]),
        "hidden": [int(h) for h in hparams["hidden"]],
        "dropout": float(hparams["dropout"]),
        "wide": bool(hparams.get("wide", False)),
        "batch_norm": bool(hparams.get("batch_norm", False)),
        "embeddings": [[int(v) for v in block] for block in hparams.get("embeddings") or []],
        "calibrated": bool(hparams.get("calibrated", False)),
    }


def build_module(architecture: dict[str, Any]) -> TabularMLP:
    """A fresh `TabularMLP` for an ``architecture`` dict (older files lack the optional keys)."""
    return TabularMLP(
        int(architecture["input_dim"]),
        [int(h) for h in architecture["hidden"]],
        float(architecture["dropout"]),
        wide=bool(architecture.get("wide", False)),
        batch_norm=bool(architecture.get("batch_norm", False)),
        embeddings=architecture.get("embeddings") or [],
        calibrated=bool(architecture.get("calibrated", False)),
    )


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
    extra: dict[str, Any] | None = None,
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
        "architecture": architecture_of(hparams),
        "hparams": hparams,
        "feature_names": preprocessor.feature_names,
        "output_names": preprocessor.output_names,
        "decision_threshold": float(decision_threshold),
        "label": label,
        "torch_version": torch.__version__.split("+")[0],
        # How the threshold and calibration were chosen, warm start, tuning: kept for the card and lineage.
        **(extra or {}),
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
    module = build_module(manifest["architecture"])
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
