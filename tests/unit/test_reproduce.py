"""`pipelines.reproduce`: which recorded inputs differ, and how the outcome reads (no training here)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from pipelines.config import Settings, load_spec
from pipelines.errors import ReproductionError
from pipelines.model.version_ids import code_files_hash, code_version, library_versions, model_version_id
from pipelines.release.bucket import json_bytes
from pipelines.reproduce import Reproduction, _input_differences, reproduce


def _lineage() -> tuple[dict[str, Any], str]:
    spec = load_spec("finance")
    md5 = "0123456789abcdef0123456789abcdef"
    lineage = {
        "spec": spec.model_dump(mode="json"),
        "training_hash": spec.training_hash(),
        "code_hash": code_files_hash(),
        "code_version": code_version(),
        "libraries": library_versions(),
        "data_version": f"dv-{md5[:12]}",
        "data_md5": md5,
        "warm_start": {"from": None},
    }
    version = model_version_id(spec, data_version=lineage["data_version"], code=code_version())
    return lineage, version


def test_a_faithful_lineage_has_no_differences():
    lineage, version = _lineage()
    assert _input_differences(lineage, load_spec("finance"), version) == []


def test_each_differing_input_is_named_once():
    lineage, version = _lineage()
    lineage["libraries"] = {**lineage["libraries"], "numpy": "1.0.0"}
    lineage["code_hash"] = "f" * 64
    lineage["training_hash"] = "0" * 16
    diffs = _input_differences(lineage, load_spec("finance"), version)
    assert [d.split(":")[0] for d in diffs] == [
        "library numpy",
        "code hash (pipelines/model training code)",
        "config hash (training spec)",
    ]


def test_a_spec_the_id_was_not_made_from_is_caught_by_the_id():
    lineage, version = _lineage()
    lineage["spec"]["model"]["seed"] += 1
    spec = load_spec("finance").model_validate(lineage["spec"])
    lineage["training_hash"] = spec.training_hash()  # consistent with the edited spec: only the id can tell
    diffs = _input_differences(lineage, spec, version)
    assert len(diffs) == 1 and diffs[0].startswith("model version id: the recorded inputs give mv-")


def test_the_outcome_line():
    same = Reproduction("finance", "mv-1", "a" * 64, "a" * 64)
    assert same.summary() == f"reproduced: identical weights (weights.pt sha256 {'a' * 64})"
    other = Reproduction("finance", "mv-1", "a" * 64, "b" * 64, ["library torch: recorded 1, installed 2"])
    assert other.summary().splitlines() == [
        f"not reproduced (weights differ: rebuilt sha256 {'b' * 64}; recorded sha256 {'a' * 64})",
        "  differs: library torch: recorded 1, installed 2",
    ]


def test_a_lineage_from_before_the_rebuild_inputs_is_refused_saying_so(tmp_path):
    folder = tmp_path / "bucket" / "finance" / "versions" / "mv-old"
    folder.mkdir(parents=True)
    files = {"weights.pt": b"w", "lineage.json": json_bytes({"data_version": "dv-0", "code_version": "code-1"})}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (folder / "checksums.json").write_bytes(json_bytes({"algorithm": "sha256", "files": checksums}))
    settings = replace(Settings.from_env(), bucket_url=(tmp_path / "bucket").as_uri())

    with pytest.raises(ReproductionError, match=r"lineage.json lacks spec, data_md5, logical_date, code_hash") as err:
        reproduce("finance", "mv-old", settings=settings)
    assert err.value.exit_code == 10
