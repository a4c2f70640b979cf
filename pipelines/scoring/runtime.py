"""Load a verified model directory for scoring, without torch for the ONNX formats.

The ONNX exports (`pipelines.release.export`) take the preprocessed float32 matrix and
return the positive-class probability; preprocessing stays the JSON state
`pipelines.model.features.Preprocessor` reads and applies in numpy/pandas, exactly
the transform training used (unknown categories → ``__other__``, missing
values → the train median / ``__missing__``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from pipelines.errors import DeployError
from pipelines.model.features import Preprocessor

if TYPE_CHECKING:
    import pandas as pd

ModelFormat = Literal["onnx", "onnx_int8", "torch"]
FORMATS: tuple[ModelFormat, ...] = ("onnx", "onnx_int8", "torch")
#: File of each ONNX format inside a model directory / version folder.
ONNX_FILES: dict[str, str] = {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}
PREPROCESSING_FILE = "preprocessing.json"
MODEL_FILE = "model.json"


class Scorer(Protocol):
    """What every format offers: probabilities for raw rows."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray: ...


@dataclass
class OnnxScorer:
    """An onnxruntime session over the exported network plus the JSON preprocessing."""

    preprocessor: Preprocessor
    session: Any
    input_name: str

    @classmethod
    def load(cls, model_file: Path, preprocessing_file: Path, *, threads: int = 1) -> OnnxScorer:
        """Open ``model_file`` with onnxruntime (CPU); ``threads`` intra-op threads per session."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread per request: the server runs requests in parallel, not inside one.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Fold DequantizeLinear of constant weights at load (the int8 export stores weights that
        # way, `pipelines.release.export`): by default onnxruntime keeps them for QDQ fusions
        # these graphs have none of, and would dequantise the weights on every call.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors on a bad graph
            raise DeployError(f"{model_file} is not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        preprocessor = Preprocessor.from_dict(json.loads(preprocessing_file.read_text()))
        return cls(preprocessor=preprocessor, session=session, input_name=session.get_inputs()[0].name)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probability per raw row (float64)."""
        return self.predict_matrix(self.preprocessor.transform(frame))

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for already preprocessed rows (float32 matrix)."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(matrix, dtype=np.float32)})
        return np.asarray(out, dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class LoadedModel:
    """One version folder loaded in one format: what a request scores with, start to end."""

    vertical: str
    version: str
    model_format: ModelFormat
    path: Path
    scorer: Scorer
    decision_threshold: float
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    #: Categories seen in training per categorical feature (others score as ``__other__``).
    vocabularies: dict[str, tuple[str, ...]]
    manifest: dict[str, Any]
    #: sha256 of the version's checksums.json, as the pointer recorded it.
    checksums_sha256: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.scorer.predict_proba(frame)

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the version folder (model card, metrics), or None when absent."""
        path = self.path / name
        return dict(json.loads(path.read_text())) if path.is_file() else None


def load_model(
    vertical: str,
    version: str,
    path: Path,
    model_format: ModelFormat,
    *,
    checksums_sha256: str | None = None,
    threads: int = 1,
) -> LoadedModel:
    """Load the verified folder ``path`` in ``model_format``.

    A version whose export was refused by the gate has no ONNX file: that is a
    `DeployError` naming what to do, never a silent switch to another format.
    """
    manifest = json.loads((path / MODEL_FILE).read_text())
    preprocessing = json.loads((path / PREPROCESSING_FILE).read_text())
    scorer: Scorer
    if model_format == "torch":
        from pipelines.model.modeling import load_model_dir

        scorer = load_model_dir(path)
    else:
        model_file = path / ONNX_FILES[model_format]
        if not model_file.is_file():
            raise DeployError(
                f"version {version} has no {model_file.name} (its export failed the gate or predates exports); "
                f"serve another format (PIPELINES_SCORING_FORMAT=torch) or deploy a version with it",
                vertical=vertical,
            )
        scorer = OnnxScorer.load(model_file, path / PREPROCESSING_FILE, threads=threads)
    return LoadedModel(
        vertical=vertical,
        version=version,
        model_format=model_format,
        path=path,
        scorer=scorer,
        decision_threshold=float(manifest["decision_threshold"]),
        numeric=tuple(str(d["name"]) for d in preprocessing["numeric"]),
        categorical=tuple(str(d["name"]) for d in preprocessing["categorical"]),
        vocabularies={str(d["name"]): tuple(str(c) for c in d["categories"]) for d in preprocessing["categorical"]},
        manifest=manifest,
        checksums_sha256=checksums_sha256,
    )
