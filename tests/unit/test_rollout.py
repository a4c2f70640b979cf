"""The rollback use case: approval check, pointer, registry row, notice; and the CLI command."""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from pipelines import cli
from pipelines.config import Settings
from pipelines.errors import DeployError
from pipelines.registry.store import Registry
from pipelines.release.deploy import deploy_version, read_pointer, rollback
from pipelines.release.rollout import rollback_vertical

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
        try:
            code = cli.main(["rollback", VERTICAL, *missing])
        except SystemExit as refused:  # a blank --reason is refused by the argument parser
            code = refused.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a rollback needs a reason" in err
    assert read_pointer(deployed.bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]
    assert Registry.from_settings(deployed).events(VERTICAL, kinds=("rollback_intent",)) == []
    assert cli.main(["rollback", VERTICAL, "--reason", "drift"]) == 0
    assert "production is now v1 (was v2)" in capsys.readouterr().out
    assert cli.main(["rollback", VERTICAL, "--to", "v9", "--reason", "x"]) == 7
    assert "not in the model registry" in capsys.readouterr().err
    assert cli.main(["rollback", "nosuchvertical", "--reason", "x"]) == 2


# -- the nightly deploy stage against the registry: sticky rollback, intents, outages -------------


def _night(settings: Settings, tmp_path: Path, version: str, ds: str, *, champion: str | None) -> None:
    """What train, evaluate and gate leave for ``stages.deploy``: records, a model dir, registry rows."""
    from pipelines.layout import Layout

    layout = Layout(settings, VERTICAL)
    model_dir = tmp_path / f"night-{version}"
    model_dir.mkdir()
    (model_dir / "weights.pt").write_bytes(version.encode() * 64)
    metrics = {"accuracy": 0.8, "recall": 0.7, "f1": 0.7, "precision": 0.7, "auroc": 0.8}
    trained = {
        "model_version": version,
        "data_version": f"d-{version}",
        "data_tag": f"t-{version}",
        "code_version": "c",
        "config_hash": "h",
        "seed": 1,
        "train_rows": 10,
        "holdout_rows": 5,
        "model_dir": str(model_dir),
        "run_id": f"scheduled__{ds}",
    }
    layout.write_record(ds, "train", trained)
    layout.write_record(ds, "snapshot", {"id": f"d-{version}", "tag": f"t-{version}"})
    layout.write_record(
        ds,
        "evaluate",
        {"model_version": version, "challenger": metrics, "champion": None, "champion_version": champion,
         "holdout_rows": 5, "holdout_start": ds, "holdout_end": ds},
    )  # fmt: skip
    gate = {"model_version": version, "approved": True, "forced": False, "champion_version": champion,
            "reasons": ["every rule passed"], "already_in_production": False}  # fmt: skip
    layout.write_record(ds, "gate", gate)
    registry = Registry.from_settings(settings)
    registry.record_model(
        vertical=VERTICAL, model_version=version, data_version=f"d-{version}", ds=ds, metrics=metrics,
        lineage={"dag_run_id": f"scheduled__{ds}"}, dag_run_id=f"scheduled__{ds}",
    )  # fmt: skip
    registry.record_decision(vertical=VERTICAL, ds=ds, model_version=version, approved=True, reasons=[])


def _pointer(settings: Settings) -> str | None:
    pointer = read_pointer(settings.bucket_url, VERTICAL)
    return pointer["version"] if pointer else None


@pytest.fixture
def nights(settings: Settings, tmp_path: Path) -> Settings:
    """Two nights deployed by the deploy stage: production is v2 (2024-01-02), v1 before it."""
    from pipelines import stages

    _night(settings, tmp_path, "v1", "2024-01-01", champion=None)
    assert stages.deploy(VERTICAL, "2024-01-01", settings=settings, run_id="scheduled__1")["deployed"]
    _night(settings, tmp_path, "v2", "2024-01-02", champion="v1")
    assert stages.deploy(VERTICAL, "2024-01-02", settings=settings, run_id="scheduled__2")["deployed"]
    return settings


def test_a_rolled_back_version_is_not_redeployed_until_forced(
    nights: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import stages

    rollback_vertical(VERTICAL, settings=nights, actor="cli:bob", reason="v2 misroutes loans")
    # Rerunning the night that produced v2 (its gate had approved it against v1, the champion again).
    rerun = stages.deploy(VERTICAL, "2024-01-02", settings=nights, run_id="manual__rerun")
    assert not rerun["deployed"] and _pointer(nights) == "v1"
    for needle in ("v2 was rolled back on", "by cli:bob because v2 misroutes loans", "force", "unblock"):
        assert needle in rerun["why"]

    assert cli.main(["status", "--json"]) == 0
    mine = next(row for row in json.loads(capsys.readouterr().out) if row["vertical"] == VERTICAL)
    production = mine["production"]
    assert (production["model_version"], production["state"], production["reason"], production["by"]) == (
        "v1",
        "rolled back from v2",
        "v2 misroutes loans",
        "cli:bob",
    )
    assert [b["model_version"] for b in mine["blocked"]] == ["v2"]
    assert [e["kind"] for e in mine["recent_events"][:3]] == ["block", "rollback", "rollback_intent"]
    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    assert "rolled back from v2 on" in text and "by cli:bob: v2 misroutes loans" in text
    assert "blocked v2: rolled back by cli:bob (v2 misroutes loans)" in text

    # A person forces it through the gate (what `run --force-reason` records): it may return.
    Registry.from_settings(nights).record_decision(
        vertical=VERTICAL, ds="2024-01-02", model_version="v2", approved=True, reasons=[],
        forced=True, forced_reason="fixed upstream join", actor="cli:alice",
    )  # fmt: skip
    forced = stages.deploy(VERTICAL, "2024-01-02", settings=nights, run_id="manual__forced")
    assert forced["deployed"] and _pointer(nights) == "v2"


def test_an_unblocked_version_may_be_deployed_again(nights: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines import stages

    rollback_vertical(VERTICAL, settings=nights, actor="cli:bob", reason="drift")
    assert cli.main(["unblock", VERTICAL, "v2"]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert cli.main(["unblock", VERTICAL, "v9", "--reason", "x"]) == 2
    assert "not in the model registry" in capsys.readouterr().err
    assert cli.main(["unblock", VERTICAL, "v2", "--reason", "false alarm: dashboard bug"]) == 0
    assert "v2 unblocked" in capsys.readouterr().out
    assert cli.main(["unblock", VERTICAL, "v2", "--reason", "again"]) == 0
    assert "not blocked" in capsys.readouterr().out

    assert stages.deploy(VERTICAL, "2024-01-02", settings=nights, run_id="manual__rerun")["deployed"]
    assert _pointer(nights) == "v2"
    unblock = Registry.from_settings(nights).events(VERTICAL, kinds=("unblock",))
    assert [(e.model_version, e.reason) for e in unblock] == [("v2", "false alarm: dashboard bug")]


def test_a_locked_registry_stops_the_deploy_before_the_pointer_moves(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from pipelines import stages
    from pipelines.errors import RegistryError
    from pipelines.registry import schema as registry_schema

    monkeypatch.setattr(registry_schema, "SQLITE_BUSY_TIMEOUT_MS", 300)
    _night(settings, tmp_path, "v1", "2024-01-01", champion=None)
    holder = sqlite3.connect(settings.home / "registry.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(RegistryError, match=r"\[finance, 2024-01-01\].*locked") as err:
            stages.deploy(VERTICAL, "2024-01-01", settings=settings, run_id="scheduled__1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert err.value.exit_code == 9
    assert _pointer(settings) is None  # production never changed
    assert not (settings.home / "bucket" / VERTICAL / "versions").exists()
    assert Registry.from_settings(settings).deployments(VERTICAL) == []


def test_a_bad_registry_url_stops_the_deploy_before_the_pointer_moves(settings: Settings, tmp_path: Path) -> None:
    import dataclasses

    from pipelines import stages
    from pipelines.errors import RegistryError

    _night(settings, tmp_path, "v1", "2024-01-01", champion=None)
    broken = dataclasses.replace(settings, registry_url="postgresql+psycopg://registry:pw@127.0.0.1:1/mlops")
    with pytest.raises(RegistryError, match=r"\[finance\].*127\.0\.0\.1:1.*check that the database is up"):
        stages.deploy(VERTICAL, "2024-01-01", settings=broken)
    assert _pointer(settings) is None


def test_a_death_between_pointer_and_registry_is_reconciled_by_the_next_read(
    nights: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import stages
    from pipelines.models_view.overview import collect_vertical

    _night(nights, tmp_path, "v3", "2024-01-03", champion="v2")

    def die(*_a: Any, **_k: Any) -> None:
        raise SystemExit("kill -9 after the pointer flip")

    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(Registry, "record_deployment", die)
        stages.deploy(VERTICAL, "2024-01-03", settings=nights, run_id="scheduled__3")
    assert _pointer(nights) == "v3"  # serving already follows v3 ...
    registry = Registry.from_settings(nights)
    assert registry.pending_intent(VERTICAL) is not None  # ... and the registry knew it was coming

    # The next read (the Models view, status) confirms it: everyone agrees on v3.
    view = collect_vertical(registry, nights, VERTICAL)
    assert view.champion is not None and view.champion.model_version == "v3"
    assert cli.main(["status", "--json"]) == 0
    mine = next(row for row in json.loads(capsys.readouterr().out) if row["vertical"] == VERTICAL)
    assert mine["champion"]["model_version"] == mine["production"]["model_version"] == "v3"
    assert mine["production"]["pending"] is None and mine["production"]["by"] == "airflow:scheduled__3"
    move = registry.events(VERTICAL, kinds=("deploy",), limit=1)[0]
    assert move.details["reconciled"] is True and move.details["previous_version"] == "v2"
    # The rerun of that night changes nothing more.
    again = stages.deploy(VERTICAL, "2024-01-03", settings=nights, run_id="scheduled__3")
    assert again["model_version"] == "v3" and len(registry.deployments(VERTICAL)) == 3


def test_a_failed_upload_closes_its_intent_and_leaves_production(
    nights: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import stages
    from pipelines.release import deploy as deploy_module

    _night(nights, tmp_path, "v3", "2024-01-03", champion="v2")

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise DeployError("the bucket refused the upload", vertical=VERTICAL)

    monkeypatch.setattr(deploy_module, "_publish", refuse)
    with pytest.raises(DeployError, match="refused the upload"):
        stages.deploy(VERTICAL, "2024-01-03", settings=nights, run_id="scheduled__3")
    registry = Registry.from_settings(nights)
    assert _pointer(nights) == "v2" and registry.champion(VERTICAL).model_version == "v2"  # type: ignore[union-attr]
    assert registry.pending_intent(VERTICAL) is None
    closed = registry.events(VERTICAL, limit=1)[0]
    assert closed.kind == "intent_closed" and "refused the upload" in closed.details["outcome"]


def test_a_locked_registry_stops_a_rollback_before_the_pointer_moves(
    deployed: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    from pipelines.registry import schema as registry_schema

    monkeypatch.setattr(registry_schema, "SQLITE_BUSY_TIMEOUT_MS", 300)
    monkeypatch.setattr("pipelines.registry.store._shared_engines", {})  # fresh engines pick the short timeout
    holder = sqlite3.connect(deployed.home / "registry.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert cli.main(["rollback", VERTICAL, "--reason", "drift"]) == 9
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[finance] could not write the model registry" in err and "locked" in err
    assert read_pointer(deployed.bucket_url, VERTICAL)["version"] == "v2"  # type: ignore[index]
    assert not _outbox(deployed)
