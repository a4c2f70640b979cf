"""The scoring service's settings from the environment: format, token (or secret file), limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import SpecError
from pipelines.scoring.app import ScoringConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "PIPELINES_SCORING_FORMAT",
        "PIPELINES_SCORING_TOKEN",
        "PIPELINES_SCORING_TOKEN_FILE",
        "PIPELINES_SCORING_VERTICALS",
        "PIPELINES_BUCKET_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIPELINES_HOME", str(tmp_path))


def test_defaults_serve_onnx_from_the_pipeline_bucket(tmp_path: Path):
    config = ScoringConfig.from_env()
    assert config.model_format == "onnx"
    assert config.bucket_url == (tmp_path / "bucket").as_uri()
    assert config.token is None and config.verticals is None
    assert config.poll_interval <= 5


def test_token_from_a_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    secret = tmp_path / "token"
    secret.write_text("from-the-secret\n")
    monkeypatch.setenv("PIPELINES_SCORING_TOKEN", "from-the-env")
    monkeypatch.setenv("PIPELINES_SCORING_TOKEN_FILE", str(secret))
    assert ScoringConfig.from_env().token == "from-the-secret"
    secret.write_text("")
    with pytest.raises(SpecError, match="is empty"):
        ScoringConfig.from_env()
    monkeypatch.setenv("PIPELINES_SCORING_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(SpecError, match="cannot be read"):
        ScoringConfig.from_env()


def test_unknown_format_and_vertical_subset(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIPELINES_SCORING_FORMAT", "tensorrt")
    with pytest.raises(SpecError, match="not one of onnx, onnx_int8, torch"):
        ScoringConfig.from_env()
    monkeypatch.setenv("PIPELINES_SCORING_FORMAT", "onnx_int8")
    monkeypatch.setenv("PIPELINES_SCORING_VERTICALS", "finance, healthcare")
    config = ScoringConfig.from_env()
    assert config.model_format == "onnx_int8" and config.verticals == ["finance", "healthcare"]
