"""Rebuild a deployed model from its lineage alone: ``python -m pipelines reproduce``.

The proof that nothing lives only on one disk.  Everything comes from shared
storage: the version folder in the bucket (``lineage.json`` names the data
md5, the resolved spec, the seed, the code hash and library versions;
``checksums.json`` the weights' SHA-256), the data by md5 from the DVC remote
(`pipelines.data.versioning.read_by_md5`), a warm start's parent from the
bucket.  Training runs in a scratch folder; nothing is written to the
registry, the bucket or the pointer.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import Settings, VerticalSpec
from pipelines.data.versioning import read_by_md5
from pipelines.errors import PipelineError, ReproductionError
from pipelines.model.training import WarmStartSource, split_validation, split_window, train_model
from pipelines.model.version_ids import code_files_hash, library_versions, model_version_id
from pipelines.release.bucket import LINEAGE_FILE, Bucket, check_name, inspect_folder, store_errors
from pipelines.release.serving import load_version

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
#: What a lineage must hold to be rebuilt (deploys before the reproduce command lack ``spec``).
_REQUIRED = ("spec", "data_md5", "data_version", "logical_date", "code_version", "code_hash", "libraries")


@dataclass
class Reproduction:
    """The outcome: the weights' hashes and every recorded input that differs here."""

    vertical: str
    model_version: str
    recorded_sha256: str
    rebuilt_sha256: str | None = None
    differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.rebuilt_sha256 == self.recorded_sha256

    def summary(self) -> str:
        lines = []
        if self.identical and not self.differences:
            lines.append(f"reproduced: identical weights ({WEIGHTS_FILE} sha256 {self.recorded_sha256})")
        else:
            outcome = (
                "not retrained"
                if self.rebuilt_sha256 is None
                else (
                    "identical weights" if self.identical else f"weights differ: rebuilt sha256 {self.rebuilt_sha256}"
                )
            )
            lines.append(f"not reproduced ({outcome}; recorded sha256 {self.recorded_sha256})")
            lines.extend(f"  differs: {d}" for d in self.differences)
        return "\n".join(lines)


def reproduce(vertical: str, model_version: str, *, settings: Settings) -> Reproduction:
    """Retrain ``model_version`` of ``vertical`` from its bucket lineage and compare the weights.

    Raises `ReproductionError` when the version cannot be rebuilt at all (no
    such folder, a lineage written before it recorded the spec, a warm-start
    parent that is gone); returns a `Reproduction` listing the differing
    inputs otherwise (empty and identical: reproduced).
    """
    check_name(vertical, "vertical")
    check_name(model_version, "model version")
    lineage, recorded = _read_version(settings.bucket_url, vertical, model_version)
    result = Reproduction(vertical, model_version, recorded)
    spec = VerticalSpec.model_validate(lineage["spec"])
    result.differences = _input_differences(lineage, spec, model_version)
    if any(d.startswith("data md5") for d in result.differences):
        return result  # the recorded md5 does not name the model's data: training on it proves nothing
    ds = str(lineage["logical_date"])
    frame = read_by_md5(vertical=vertical, md5=str(lineage["data_md5"]), settings=settings, ds=ds)
    train, _holdout = split_window(frame, spec, ds)
    fit, validation = split_validation(train, spec, ds)
    warm = _warm_start(lineage, settings, vertical, model_version)
    with tempfile.TemporaryDirectory(prefix=f"reproduce-{vertical}-") as scratch:
        trained = train_model(
            fit,
            spec,
            model_dir=Path(scratch) / "model",
            checkpoint_dir=Path(scratch) / "checkpoints",
            validation=validation,
            warm_start=warm,
        )
    result.rebuilt_sha256 = trained.weights_sha256
    return result


def _read_version(bucket_url: str, vertical: str, model_version: str) -> tuple[dict[str, Any], str]:
    """The version folder's lineage and its weights' recorded SHA-256 (the folder verified first)."""
    with store_errors(bucket_url, vertical=vertical):
        bucket = Bucket.open(bucket_url)
        state = inspect_folder(bucket, vertical, model_version)
        if state.failure is not None:
            raise ReproductionError(f"cannot reproduce {model_version}: {state.failure}", vertical=vertical)
        lineage_bytes = bucket.fs.cat_file(posixpath.join(bucket.version(vertical, model_version), LINEAGE_FILE))
    lineage = json.loads(lineage_bytes)
    missing = [key for key in _REQUIRED if not lineage.get(key)]
    if missing:
        raise ReproductionError(
            f"cannot reproduce {model_version}: its {LINEAGE_FILE} lacks {', '.join(missing)} "
            "(deployed before lineage recorded the rebuild inputs); retrain it with the current code to get one",
            vertical=vertical,
        )
    if WEIGHTS_FILE not in state.files:
        raise ReproductionError(
            f"cannot reproduce {model_version}: its folder has no {WEIGHTS_FILE}", vertical=vertical
        )
    return lineage, state.files[WEIGHTS_FILE]


def _input_differences(lineage: dict[str, Any], spec: VerticalSpec, model_version: str) -> list[str]:
    """Every recorded input that this machine (or the record itself) does not match, one line each."""
    out = []
    here = library_versions()
    for lib, recorded in sorted(dict(lineage["libraries"]).items()):
        if here.get(lib) != recorded:
            out.append(f"library {lib}: recorded {recorded}, installed {here.get(lib, 'none')}")
    if (code := code_files_hash()) != lineage["code_hash"]:
        out.append(f"code hash (pipelines/model training code): recorded {lineage['code_hash']}, here {code}")
    if lineage.get("training_hash") and spec.training_hash() != lineage["training_hash"]:
        out.append(
            f"config hash (training spec): recorded {lineage['training_hash']}, spec gives {spec.training_hash()}"
        )
    data_version, md5 = str(lineage["data_version"]), str(lineage["data_md5"])
    if data_version != f"dv-{md5[:12]}":
        out.append(f"data md5: recorded {md5}, but data version {data_version} (part of the model id) names another")
    warm = (lineage.get("warm_start") or {}).get("from")
    derived = model_version_id(spec, data_version=data_version, code=str(lineage["code_version"]), warm_start_from=warm)
    if derived != model_version and not out:
        # Nothing above explains it: the spec or seed recorded is not the one the id was made from.
        out.append(f"model version id: the recorded inputs give {derived}, not {model_version}")
    return out


def _warm_start(
    lineage: dict[str, Any], settings: Settings, vertical: str, model_version: str
) -> WarmStartSource | None:
    """The parent a warm-started model was fine-tuned from, loaded verified from the bucket."""
    parent = (lineage.get("warm_start") or {}).get("from")
    if not parent:
        return None
    try:
        loaded = load_version(vertical, str(parent), bucket_url=settings.bucket_url)
    except PipelineError as exc:
        raise ReproductionError(
            f"cannot reproduce {model_version}: it was warm-started from {parent}, whose weights cannot be "
            f"loaded from the bucket: {exc}",
            vertical=vertical,
        ) from exc
    return WarmStartSource(str(parent), loaded.model)
