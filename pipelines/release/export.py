"""Compact exports of a trained model: ONNX fp32 and int8-weight ONNX.

At train time `export_model_dir` writes ``model.onnx`` (the network plus the
final sigmoid, fed the preprocessed float32 matrix) and ``model.int8.onnx``
(the same graph with int8 per-channel weights, `_quantize`) next to the
PyTorch weights; preprocessing stays ``preprocessing.json``, which the scoring
service applies in numpy, so serving needs no torch.  The evaluate stage
re-scores every export on the holdout rows the PyTorch model was scored on
(`check_exports`); the gate turns each check into non-blocking
``export:<format>`` rules (`export_rules`): a failing export does not stop
the PyTorch model's promotion, but the deploy leaves its file out of the
version folder (`refused_export_files`), so it can never be served.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import TrainingError
from pipelines.release.bucket import sha256_stream
from pipelines.scoring.runtime import ONNX_FILES, OnnxScorer

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.config import Exports, ExportTolerance
    from pipelines.gate.promotion import RuleResult

log = logging.getLogger(__name__)

#: ONNX operator set of the fp32 export (onnxruntime ≥ 1.14 runs it).
OPSET = 17
#: Metrics whose holdout deltas the gate checks (those the thresholds use).
COMPARED_METRICS = ("accuracy", "recall", "f1", "precision", "auroc")


def export_model_dir(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Write the ONNX fp32 and int8 exports of the model in ``model_dir``; return file, size, sha256 per format.

    Existing exports are kept (a rerun of a reused model re-exports nothing),
    so the bytes deployed are the bytes the evaluate stage checked.  Each file
    is written under a dot-name and renamed, so an interrupted export never
    leaves a half file the deploy would upload.
    """
    fp32 = model_dir / ONNX_FILES["onnx"]
    int8 = model_dir / ONNX_FILES["onnx_int8"]
    if not fp32.is_file():
        _export_fp32(model_dir, fp32)
    if not int8.is_file():
        _quantize(fp32, int8)
    return {fmt: _describe(model_dir / name) for fmt, name in ONNX_FILES.items()}


def try_export_model_dir(model_dir: Path) -> dict[str, Any]:
    """`export_model_dir`, but a failed export is recorded instead of failing the train stage.

    The PyTorch model stays deployable; evaluate finds no export file and the
    gate's ``export:<format>:available`` rule keeps that format out of the deploy.
    """
    try:
        return export_model_dir(model_dir)
    except TrainingError as exc:
        log.error("export of %s failed; only the PyTorch model can be deployed: %s", model_dir, exc)
        return {"error": str(exc)}


def _export_fp32(model_dir: Path, target: Path) -> None:
    import torch

    from pipelines.model.modeling import load_model_dir

    try:
        model = load_model_dir(model_dir)
    except (TrainingError, RuntimeError, OSError, ValueError) as exc:
        # RuntimeError: weights that do not fit the recorded architecture (torch's load_state_dict).
        raise TrainingError(f"ONNX export of {model_dir}: the model does not load ({exc})") from exc

    class _Probability(torch.nn.Module):
        """The network and its sigmoid, so the graph answers probabilities."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.inner(x))

    wrapped = _Probability(fold_batch_norm(model.module)).eval()
    example = torch.zeros((2, len(model.preprocessor.output_names)), dtype=torch.float32)
    staging = target.with_name(f".{target.name}.tmp")
    try:
        # The TorchScript exporter (dynamo=False): 0.5 s for these MLPs against ~12 s for the
        # dynamo exporter, and it needs no onnxscript; the graph is a few Gemm/Relu/Sigmoid nodes.
        torch.onnx.export(
            wrapped,
            (example,),
            str(staging),
            input_names=["x"],
            output_names=["probability"],
            dynamic_axes={"x": {0: "batch"}, "probability": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    except Exception as exc:  # the exporter raises many unrelated types; name the model and stop
        staging.unlink(missing_ok=True)
        raise TrainingError(f"ONNX export of {model_dir} failed ({type(exc).__name__}: {exc})") from exc
    os.replace(staging, target)


def fold_batch_norm(module: Any) -> Any:
    """A copy of a `TabularMLP` in eval mode with each BatchNorm folded into the Linear before it.

    In eval mode batch normalisation is an affine map, so folding it changes no
    prediction (beyond float rounding) and leaves one Gemm per layer: fewer nodes and
    fp32 parameters in both exports, and the int8 export quantises the folded weights.
    """
    import copy
    from itertools import pairwise

    import torch
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    folded = copy.deepcopy(module).eval()
    layers = list(folded.net)
    for i, (layer, after) in enumerate(pairwise(layers)):
        if isinstance(layer, torch.nn.Linear) and isinstance(after, torch.nn.BatchNorm1d):
            folded.net[i] = fuse_linear_bn_eval(layer, after)
            folded.net[i + 1] = torch.nn.Identity()
    return folded


def _quantize(fp32: Path, target: Path) -> None:
    """Weight-only int8: each Gemm's weight stored as int8 plus one fp32 scale per output channel.

    Why not ``onnxruntime.quantization.quantize_dynamic`` (the first version): it also
    quantises activations at every call, which on these small MLPs made int8 *slower*
    than fp32 (1.1-1.6x at 1,000 rows), moved probabilities by 0.05-0.1 (healthcare's
    recall by 0.06, so the gate refused it), and its six nodes per layer with long
    generated names made the file barely smaller (0.81x on the finance shape).  Here the
    graph is the fp32 graph with a ``DequantizeLinear`` (a standard ONNX op) in front of
    each weight: symmetric per-channel scales, no zero points.  `OnnxScorer` lets
    onnxruntime fold those constant nodes at load, so int8 scores exactly as fast as fp32.
    """
    import onnx

    staging = target.with_name(f".{target.name}.tmp.onnx")
    try:
        model = onnx.load(str(fp32))
        graph = model.graph
        weights = {init.name: init for init in graph.initializer}
        nodes = []
        for node in graph.node:
            if node.op_type == "Gemm" and node.input[1] in weights:
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                nodes.append(_int8_weight(graph, weights[node.input[1]], axis=0 if trans_b else 1))
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(staging))
    except Exception as exc:  # onnx raises untyped errors on a malformed graph
        staging.unlink(missing_ok=True)
        raise TrainingError(f"int8 quantisation of {fp32} failed ({type(exc).__name__}: {exc})") from exc
    os.replace(staging, target)


def _int8_weight(graph: Any, weight: Any, *, axis: int) -> Any:
    """Replace initializer ``weight`` by int8 values and per-channel scales; the node that restores it."""
    import numpy as np
    from onnx import helper, numpy_helper

    values = numpy_helper.to_array(weight).astype(np.float32)
    reduce = 1 - axis  # the other axis of the 2-D weight
    scale = (np.abs(values).max(axis=reduce) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero channel: any scale restores it exactly
    shape = (-1, 1) if axis == 0 else (1, -1)
    quantized = np.clip(np.rint(values / scale.reshape(shape)), -127, 127).astype(np.int8)
    name = weight.name
    graph.initializer.remove(weight)
    graph.initializer.extend(
        [numpy_helper.from_array(quantized, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")]
    )
    return helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], axis=axis)


def _describe(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        digest = sha256_stream(fh)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest}


def check_exports(
    model_dir: Path,
    holdout: pd.DataFrame,
    y_true: np.ndarray,
    reference_prob: np.ndarray,
    threshold: float,
) -> dict[str, dict[str, Any]]:
    """Re-score each export on the holdout rows; compare with the PyTorch probabilities.

    Per format: ``max_abs_diff`` of the probabilities, each compared metric
    for the export and its delta (export minus PyTorch), or ``missing`` when
    the file is absent (then the gate refuses that format).
    """
    import numpy as np

    from pipelines.gate.evaluation import compute_metrics

    reference = compute_metrics(y_true, reference_prob, threshold)
    checks: dict[str, dict[str, Any]] = {}
    for fmt, name in ONNX_FILES.items():
        path = model_dir / name
        if not path.is_file():
            checks[fmt] = {"file": name, "missing": True}
            continue
        try:
            prob = OnnxScorer.load(path, model_dir / "preprocessing.json").predict_proba(holdout)
        except Exception as exc:  # a broken export must be reported by the gate, not crash evaluate
            checks[fmt] = {"file": name, "missing": False, "error": f"{type(exc).__name__}: {exc}"}
            continue
        metrics = compute_metrics(y_true, prob, threshold)
        deltas = {
            m: (None if metrics.get(m) is None or reference.get(m) is None else float(metrics[m] - reference[m]))
            for m in COMPARED_METRICS
        }
        checks[fmt] = {
            "file": name,
            "missing": False,
            "rows": len(prob),
            "max_abs_diff": float(np.max(np.abs(prob - reference_prob))) if len(prob) else 0.0,
            "metrics": {m: metrics.get(m) for m in COMPARED_METRICS},
            "metric_deltas": deltas,
        }
    return checks


def export_rules(checks: dict[str, dict[str, Any]] | None, exports: Exports) -> list[RuleResult]:
    """Non-blocking ``export:<format>:…`` gate rules from `check_exports` results.

    A failed rule keeps the export out of the deploy; it never rejects the
    PyTorch model itself.  No checks recorded (an evaluation older than
    exports) fails each format's rule, so nothing unchecked is served.
    """
    from pipelines.gate.promotion import RuleResult

    rules: list[RuleResult] = []
    for fmt in ONNX_FILES:
        tolerance: ExportTolerance = getattr(exports, fmt)
        check = (checks or {}).get(fmt)
        prefix = f"export:{fmt}"
        if check is None or check.get("missing") or check.get("error"):
            why = (
                "was not checked by evaluate"
                if check is None
                else (check.get("error") or f"{check.get('file')} was not produced")
            )
            rules.append(RuleResult(f"{prefix}:available", False, None, None, f"{fmt} export {why}", blocking=False))
            continue
        diff = float(check["max_abs_diff"])
        rules.append(
            RuleResult(
                f"{prefix}:max_abs_diff",
                diff <= tolerance.max_abs_diff,
                diff,
                tolerance.max_abs_diff,
                f"{fmt} export: max |probability - PyTorch| {diff:.2e} "
                f"{'within' if diff <= tolerance.max_abs_diff else 'exceeds'} {tolerance.max_abs_diff:.2e}",
                blocking=False,
            )
        )
        for metric, delta in sorted(check["metric_deltas"].items()):
            if delta is None:
                continue
            ok = abs(delta) <= tolerance.max_metric_delta
            rules.append(
                RuleResult(
                    f"{prefix}:{metric}_delta",
                    ok,
                    abs(delta),
                    tolerance.max_metric_delta,
                    f"{fmt} export: {metric} differs from PyTorch by {delta:+.4f} "
                    f"({'within' if ok else 'beyond'} ±{tolerance.max_metric_delta:.4f})",
                    blocking=False,
                )
            )
    return rules


def refused_export_files(decision: dict[str, Any]) -> list[str]:
    """Export files whose gate rules failed (or that were never checked): the deploy leaves them out."""
    failed = {
        str(rule["rule"]).split(":")[1]
        for rule in decision.get("rules") or []
        if str(rule.get("rule", "")).startswith("export:") and not rule.get("passed")
    }
    checked = {
        str(rule["rule"]).split(":")[1]
        for rule in decision.get("rules") or []
        if str(rule.get("rule", "")).startswith("export:")
    }
    return sorted(name for fmt, name in ONNX_FILES.items() if fmt in failed or fmt not in checked)
