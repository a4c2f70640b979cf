"""Version ids: the same inputs always give the same id.

A model version is derived *before* training from everything that determines
the weights (data version, spec, training code, library versions, seed), so a
rerun recognises its own earlier output and a retry resumes the same
checkpoint directory instead of starting a new one.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

from pipelines.config import VerticalSpec

# Files whose content changes what a model learns; docs, CLI or DAG edits don't.
_TRAINING_CODE = ("features.py", "modeling.py", "training.py", "thresholds.py")
_TRAINING_LIBS = ("torch", "pytorch-lightning", "numpy", "pandas")


@cache
def code_files_hash() -> str:
    """SHA-256 of the training code files alone (recorded in lineage, so a rebuild can name what differs)."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _TRAINING_CODE:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The installed versions of the libraries the weights depend on (part of `code_version`)."""
    return {lib: metadata.version(lib) for lib in _TRAINING_LIBS}


@cache
def code_version() -> str:
    """Content hash of the training code and the versions of the libraries it runs on."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _TRAINING_CODE:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    for lib in _TRAINING_LIBS:
        digest.update(f"{lib}=={metadata.version(lib)}".encode())
    return "code-" + digest.hexdigest()[:12]


def model_version_id(spec: VerticalSpec, *, data_version: str, code: str, warm_start_from: str | None = None) -> str:
    """``mv-<hash>`` of data version, training config (features, model, seed), code and warm-start source.

    A tuned configuration reaches here as the spec's ``model`` section (the
    sweep's choice applied to it), so it is covered by ``training_hash``; a
    warm-started model also depends on the champion it started from.
    """
    parts = [spec.name, data_version, spec.training_hash(), code, str(spec.model.seed)]
    if warm_start_from is not None:
        # Only when warm: cold models keep the ids they always had.
        parts.append(f"warm:{warm_start_from}")
    payload = "|".join(parts)
    return "mv-" + hashlib.sha256(payload.encode()).hexdigest()[:12]
