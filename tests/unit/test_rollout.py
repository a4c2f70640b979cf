"""The rollback use case: approval check, pointer, registry row, notice; and the CLI command."""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from pipelines import cli
from pipelines.config import Settings
from pipelines.deploy import deploy_version, read_pointer, rollback
from pipelines.errors import DeployError
from pipelines.registry import Registry
from pipelines.rollout import rollback_vertical

VERTICAL = "finance"


def _deploy_approved(settings: Settings, tmp_path: Path, version: str, *, approved: bool = True) -> None:
    """Register, decide and deploy ``version`` the way the nightly stages do."""
    ds = f"2024-01-0{version[-1]}"
    registry = Registry.from_settings(settings)
    registry.record_model(
        vertical=VERTICAL,
        model_version=version,
        data_version=f"d-{version}",
        ds=ds,
        metrics={"accuracy": 0.8, "recall": 0.7, "f1": 0.75},
        lineage={},
    )
    registry.record_decision(vertical=VERTICAL, ds=ds, model_version=version, approved=approved, reasons=[])
    model_dir = tmp_path / f"model-{version}"
    model_dir.mkdir()
    (model_dir / "weights.pt").write_bytes(version.encode() * 100)
    result = deploy_version(
        bucket_url=settings.bucket_url,
        vertical=VERTICAL,
        model_version=version,
        model_dir=model_dir,
        metrics={"challenger": {"f1": 0.75}},
        lineage={},
        model_card=f"# {version}\n",
        ds=ds,
    )
    if approved:
        registry.record_deployment(
            vertical=VERTICAL, model_version=version, actor="test", previous_version=result.previous_version, ds=ds
        )


def _outbox(settings: Settings) -> list[Any]:
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted((settings.home / "outbox").glob("*.eml"))
    ]


@pytest.fixture
def deployed(settings: Settings, tmp_path: Path) -> Settings:
    """v1 then v2 deployed and approved; production is v2."""
    for version in ("v1", "v2"):
        _deploy_approved(settings, tmp_path, version)
    return settings


def test_rollback_moves_pointer_records_and_notifies(deployed: Settings) -> None:
    result = rollback_vertical(VERTICAL, settings=deployed, actor="airflow:manual__1", reason="bad scores")
    assert result == {
        "vertical": VERTICAL,
        "model_version": "v1",
        "previous_version": "v2",
        "changed": True,
        "recorded": True,
        "notice": result["notice"],
        "uri": f"{deployed.bucket_url}/{VERTICAL}/versions/v1",
        "actor": "airflow:manual__1",
        "reason": "bad scores",
    }
    json.dumps(result)  # small and serialisable: an XCom value
    assert read_pointer(deployed.bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]
    registry = Registry.from_settings(deployed)
    assert registry.champion(VERTICAL).model_version == "v1"  # type: ignore[union-attr]
    (mail,) = _outbox(deployed)
    assert mail["Subject"] == "[rollback] finance: v2 -> v1"
    assert mail["To"] == "finance-ml@example.com"
    body = mail.get_content()
    for needle in ("airflow:manual__1", "bad scores", "from:   v2", "to:     v1", "d-v1", "--to v2"):
        assert needle in body


def test_rollback_to_a_named_version_and_back(deployed: Settings, tmp_path: Path) -> None:
    _deploy_approved(deployed, tmp_path, "v3")
    assert rollback_vertical(VERTICAL, settings=deployed, to_version="v1", reason="r")["previous_version"] == "v3"
    # The previous version is now v3: a second plain rollback undoes the first (and lifts v3's block).
    assert Registry.from_settings(deployed).block(VERTICAL, "v3") is not None
    assert rollback_vertical(VERTICAL, settings=deployed, reason="false alarm")["model_version"] == "v3"
    assert Registry.from_settings(deployed).block(VERTICAL, "v3") is None
    assert [m["Subject"] for m in _outbox(deployed)] == [
        "[rollback] finance: v3 -> v1",
        "[rollback] finance: v1 -> v3",
    ]


def test_unapproved_or_unregistered_targets_are_refused(deployed: Settings, tmp_path: Path) -> None:
    # v3 is in the bucket and the registry but the gate rejected it (pushed by hand, then undone).
    _deploy_approved(deployed, tmp_path, "v3", approved=False)
    rollback(bucket_url=deployed.bucket_url, vertical=VERTICAL, to_version="v2")
    with pytest.raises(DeployError, match="refusing to roll back to v3: no gate decision approved it"):
        rollback_vertical(VERTICAL, settings=deployed, to_version="v3", reason="r")
    with pytest.raises(DeployError, match="refusing to roll back to v9: it is not in the model registry"):
        rollback_vertical(VERTICAL, settings=deployed, to_version="v9", reason="r")
    assert read_pointer(deployed.bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]
    assert not _outbox(deployed)


def test_a_crash_before_the_registry_write_heals_on_retry(deployed: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_a: Any, **_k: Any) -> None:
        raise SystemExit("killed between the pointer flip and the registry write")

    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(Registry, "record_deployment", crash)
        rollback_vertical(VERTICAL, settings=deployed, actor="cli:bob", reason="drift")
    assert read_pointer(deployed.bucket_url, VERTICAL)["version"] == "v1"  # type: ignore[index]
    assert not _outbox(deployed)
    registry = Registry.from_settings(deployed)
    assert registry.pending_intent(VERTICAL) is not None  # the registry knew before the pointer moved

    retry = rollback_vertical(VERTICAL, settings=deployed, to_version="v1", actor="cli:bob", reason="drift")
    assert not retry["changed"] and retry["recorded"] and retry["previous_version"] == "v2"
    assert registry.champion(VERTICAL).model_version == "v1"  # type: ignore[union-attr]
    block = registry.block(VERTICAL, "v2")
    assert block is not None and block.reason == "drift" and block.actor == "cli:bob"
    again = rollback_vertical(VERTICAL, settings=deployed, to_version="v1", reason="drift")
    assert not again["recorded"]
    assert len(_outbox(deployed)) == 1  # one notice for one rollback


def test_rollback_to_production_is_a_quiet_no_op(deployed: Settings) -> None:
    result = rollback_vertical(VERTICAL, settings=deployed, to_version="v2", reason="r")
    assert (result["changed"], result["recorded"], result["notice"]) == (False, False, None)


def test_cli_rollback(deployed: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    for missing in ([], ["--reason", ""], ["--reason", "   "]):
        assert cli.main(["rollback", VERTICAL, *missing]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a rollback needs a reason" in err
    assert read_pointer(deployed.bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]
    assert Registry.from_settings(deployed).events(VERTICAL, kinds=("rollback_intent",)) == []
    assert cli.main(["rollback", VERTICAL, "--reason", "drift"]) == 0
    assert "production is now v1 (was v2)" in capsys.readouterr().out
    assert cli.main(["rollback", VERTICAL, "--to", "v9", "--reason", "x"]) == 7
    assert "not in the model registry" in capsys.readouterr().err
    assert cli.main(["rollback", "nosuchvertical", "--reason", "x"]) == 2
