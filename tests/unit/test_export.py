"""ONNX exports at train time and the gate's re-check of each export on the holdout rows."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import PROJECT_ROOT, Exports, ExportTolerance, load_spec
from pipelines.errors import DeployError
from pipelines.gate.promotion import decide_promotion
from pipelines.model.features import label_vector
from pipelines.model.modeling import load_model_dir
from pipelines.release.deploy import deploy_version
from pipelines.release.export import (
    check_exports,
    export_model_dir,
    export_rules,
    refused_export_files,
    try_export_model_dir,
)
from pipelines.scoring.runtime import OnnxScorer, load_model

from ..conftest import make_settings
from ..integration.scoring_support import synthetic_frame, train_tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("export") / "model", seed=1)


@pytest.fixture(scope="module")
def holdout():
    frame = synthetic_frame(300, seed=21)
    return frame, label_vector(frame, load_spec("finance", make_settings(Path("/nonexistent"))).label)


def test_both_exports_are_written_and_fp32_scores_like_pytorch(trained: Path, holdout):
    frame, _ = holdout
    exports = export_model_dir(trained)
    assert {e["file"] for e in exports.values()} == {"model.onnx", "model.int8.onnx"}
    reference = load_model_dir(trained).predict_proba(frame)
    fp32 = OnnxScorer.load(trained / "model.onnx", trained / "preprocessing.json").predict_proba(frame)
    int8 = OnnxScorer.load(trained / "model.int8.onnx", trained / "preprocessing.json").predict_proba(frame)
    assert np.max(np.abs(fp32 - reference)) < 1e-5
    # Quantised weights move probabilities a little, never wildly.
    assert 0 < np.max(np.abs(int8 - reference)) < Exports().onnx_int8.max_abs_diff


def test_the_int8_export_keeps_each_weight_once_as_int8(trained: Path):
    import onnx
    from onnx import numpy_helper

    exports = export_model_dir(trained)
    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(trained / "model.onnx")).graph.initializer}
    graph = onnx.load(str(trained / "model.int8.onnx")).graph
    stored = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # Each Gemm weight: int8 values of the same shape, restored by a DequantizeLinear; no fp32 copy left.
    restored = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    weights = [node.input[1] for node in graph.node if node.op_type == "Gemm"]
    assert weights and all(w in restored and w not in stored for w in weights)
    assert all(stored[restored[w]].dtype == np.int8 and stored[restored[w]].shape == fp32[w].shape for w in weights)
    # The tiny test net is mostly graph; the demo models are 0.32-0.60x (docs/serving.md).
    assert exports["onnx_int8"]["bytes"] < exports["onnx"]["bytes"]


def test_batch_norm_is_folded_into_the_export_without_changing_predictions(tmp_path: Path, holdout):
    import torch

    from pipelines.model.modeling import build_module
    from pipelines.release.export import fold_batch_norm

    torch.manual_seed(0)
    module = build_module({"input_dim": 6, "hidden": [8, 4], "dropout": 0.0, "batch_norm": True})
    module.train()
    module(torch.randn(64, 6) * 3 + 1)  # move the running statistics off their defaults
    module.eval()
    folded = fold_batch_norm(module)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    rows = torch.randn(32, 6)
    with torch.inference_mode():
        assert torch.allclose(folded(rows), module(rows), atol=1e-5)


def test_a_rerun_keeps_the_exports_that_evaluate_checked(trained: Path):
    first = export_model_dir(trained)
    mtimes = {p.name: p.stat().st_mtime_ns for p in trained.glob("*.onnx")}
    assert export_model_dir(trained) == first
    assert {p.name: p.stat().st_mtime_ns for p in trained.glob("*.onnx")} == mtimes
    assert not list(trained.glob(".*")), "no temp files left behind"


def test_identical_weights_give_byte_identical_exports(tmp_path: Path, trained: Path):
    # Reruns and reproductions compare the bucket byte for byte: the exports must not differ.
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for name in ("weights.pt", "model.json", "preprocessing.json"):
        (copy / name).write_bytes((trained / name).read_bytes())
    assert export_model_dir(copy) == export_model_dir(trained)


def _decision(checks):
    gate = load_spec("finance", make_settings(Path("/nonexistent"))).gate
    challenger = {
        "accuracy": 0.9,
        "recall": 0.9,
        "f1": 0.9,
        "precision": 0.9,
        "auroc": 0.9,
        "balanced_accuracy": 0.9,
        "threshold": 0.5,
    }
    decision = decide_promotion(
        gate.model_copy(
            update={"baselines": gate.baselines.model_copy(update={"majority": None, "logistic": None}), "slices": []}
        ),
        challenger,
        champion=None,
        champion_version=None,
        holdout_rows=300,
    )
    # What stages.gate does: export rules are appended, never blocking.
    return replace(decision, rules=[*decision.rules, *export_rules(checks, gate.exports)])


def test_faithful_exports_pass_every_export_rule(trained: Path, holdout):
    frame, y_true = holdout
    reference = load_model_dir(trained).predict_proba(frame)
    checks = check_exports(trained, frame, y_true, reference, 0.4)
    assert checks["onnx"]["max_abs_diff"] < 1e-5
    assert all(abs(d) <= 0.005 for d in checks["onnx"]["metric_deltas"].values() if d is not None)
    decision = _decision(checks)
    export = [r for r in decision.rules if r.rule.startswith("export:")]
    assert {r.rule for r in export} >= {
        "export:onnx:max_abs_diff",
        "export:onnx_int8:max_abs_diff",
        "export:onnx:f1_delta",
    }
    assert all(r.passed for r in export), [r.detail for r in export if not r.passed]
    assert refused_export_files(decision.to_dict()) == []


def test_the_gate_refuses_a_drifting_export_and_the_deploy_leaves_it_out(tmp_path: Path, trained: Path, holdout):
    frame, y_true = holdout
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in trained.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    # Inject a broken int8 export: another model's network under this model's name.
    other = train_tiny_model(tmp_path / "other", seed=2)
    (model_dir / "model.int8.onnx").write_bytes((other / "model.int8.onnx").read_bytes())
    reference = load_model_dir(model_dir).predict_proba(frame)

    checks = check_exports(model_dir, frame, y_true, reference, 0.4)
    assert checks["onnx_int8"]["max_abs_diff"] > Exports().onnx_int8.max_abs_diff
    decision = _decision(checks)
    failed = [r for r in decision.rules if not r.passed]
    assert failed and all(r.rule.startswith("export:onnx_int8") and not r.blocking for r in failed)
    assert decision.approved, "a failing export never rejects the PyTorch model"
    record = decision.to_dict()
    assert any("not blocking: onnx_int8 export: max |probability - PyTorch|" in r for r in record["reasons"])
    assert refused_export_files(record) == ["model.int8.onnx"]

    bucket = tmp_path / "bucket"
    deploy_version(
        bucket_url=bucket.as_uri(),
        vertical="finance",
        model_version="v1",
        model_dir=model_dir,
        metrics={"challenger": {}},
        lineage={},
        model_card="# v1\n",
        ds="2024-01-01",
        exclude=refused_export_files(record),
    )
    folder = bucket / "finance" / "versions" / "v1"
    manifest = json.loads((folder / "checksums.json").read_text())["files"]
    assert "model.onnx" in manifest and (folder / "model.onnx").is_file()
    assert "model.int8.onnx" not in manifest and not (folder / "model.int8.onnx").exists()
    load_model("finance", "v1", folder, "onnx")  # the faithful export is deployed and loads
    with pytest.raises(DeployError, match=r"has no model\.int8\.onnx"):
        load_model("finance", "v1", folder, "onnx_int8")


def test_an_unloadable_or_unchecked_export_is_refused(tmp_path: Path, trained: Path, holdout):
    frame, y_true = holdout
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in trained.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    (model_dir / "model.onnx").write_bytes(b"not an onnx graph")
    (model_dir / "model.int8.onnx").unlink()
    checks = check_exports(model_dir, frame, y_true, load_model_dir(model_dir).predict_proba(frame), 0.4)
    assert "not a loadable ONNX model" in checks["onnx"]["error"]
    assert checks["onnx_int8"]["missing"]
    assert refused_export_files(_decision(checks).to_dict()) == ["model.int8.onnx", "model.onnx"]
    # An evaluation recorded before exports existed: nothing unchecked is deployed.
    assert refused_export_files(_decision(None).to_dict()) == ["model.int8.onnx", "model.onnx"]


def test_a_failed_export_is_recorded_and_does_not_fail_training(tmp_path: Path, trained: Path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("weights.pt", "model.json", "preprocessing.json"):
        (model_dir / name).write_bytes((trained / name).read_bytes())
    # Weights that do not fit the architecture: the exporter cannot load the model.
    manifest = json.loads((model_dir / "model.json").read_text())
    manifest["architecture"]["hidden"] = [3]
    (model_dir / "model.json").write_text(json.dumps(manifest))
    result = try_export_model_dir(model_dir)
    assert "error" in result
    assert not list(model_dir.glob("*.onnx")) and not list(model_dir.glob(".*"))


def test_tolerances_are_typed_spec_fields():
    gate = load_spec("finance", make_settings(Path("/nonexistent"))).gate
    assert gate.exports.onnx == ExportTolerance(max_abs_diff=1e-4, max_metric_delta=0.005)
    with pytest.raises(ValueError, match="max_abs_diff"):
        ExportTolerance(max_abs_diff=-1, max_metric_delta=0.1)


def test_the_serving_runtime_scores_onnx_without_torch(trained: Path):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from pathlib import Path
import pandas as pd
from pipelines.scoring.app import create_app, ScoringConfig
from pipelines.scoring.runtime import load_model
model = load_model("finance", "v1", Path({str(trained)!r}), "onnx_int8")
row = {{"income": [50.0], "age": [40.0], "debt": [10.0], "home_ownership": ["rent"], "job_type": [None]}}
frame = pd.DataFrame(row)
create_app(ScoringConfig(bucket_url="file:///nonexistent", cache_dir=Path("/tmp")))
print(float(model.predict_proba(frame)[0]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.0 < float(proc.stdout.strip()) < 1.0
