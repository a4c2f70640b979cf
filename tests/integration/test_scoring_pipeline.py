"""A real nightly run exports, re-checks and deploys the ONNX models the scoring service loads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.scoring.runtime import ONNX_FILES, load_model

from .conftest import DS, Cli

pytestmark = pytest.mark.slow
VERTICAL = "finance"


def test_a_nightly_run_exports_checks_and_deploys_onnx(cli: Cli):
    cli("run", VERTICAL, "--date", DS)
    train = cli.record(VERTICAL, DS, "train")
    assert set(train["exports"]) == {"onnx", "onnx_int8"}
    evaluation = json.loads((cli.home / "runs" / VERTICAL / DS / "evaluate.json").read_text())
    checks = evaluation["exports"]
    assert checks["onnx"]["rows"] == evaluation["holdout_rows"]
    assert checks["onnx"]["max_abs_diff"] < 1e-4
    gate = cli.record(VERTICAL, DS, "gate")
    export_rules = {r["rule"]: r for r in gate["rules"] if r["rule"].startswith("export:")}
    assert "export:onnx:max_abs_diff" in export_rules and "export:onnx_int8:f1_delta" in export_rules
    assert all(not r["blocking"] for r in export_rules.values())

    version = train["model_version"]
    folder = cli.home / "bucket" / VERTICAL / "versions" / version
    manifest = json.loads((folder / "checksums.json").read_text())["files"]
    for fmt, name in ONNX_FILES.items():
        passed = all(r["passed"] for rule, r in export_rules.items() if rule.startswith(f"export:{fmt}:"))
        # Deployed (and covered by the checksums) exactly when every rule of its format passed.
        assert (name in manifest) == passed == (folder / name).is_file(), (fmt, export_rules)
    assert "model.onnx" in manifest

    from pipelines.release.deploy import load_production

    raw = pd.read_parquet(cli.home / "data" / VERTICAL / "validated" / f"{DS}.parquet")
    reference = load_production(VERTICAL, bucket_url=(cli.home / "bucket").as_uri(), cache_dir=cli.home / "serve")
    served = load_model(VERTICAL, version, folder, "onnx")
    assert np.max(np.abs(served.predict_proba(raw) - reference.predict_proba(raw))) < 1e-4
    print({fmt: {k: c.get(k) for k in ("max_abs_diff", "metric_deltas")} for fmt, c in checks.items()})
