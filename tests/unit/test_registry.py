"""The model registry: migrations, idempotent writes, champion history, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from pipelines.errors import DeployError, PipelineError, VersioningError
from pipelines.registry import migrations as registry_migrations
from pipelines.registry.store import (
    Base,
    DecisionRow,
    DeploymentRow,
    ModelVersionRow,
    Registry,
    create_registry_engine,
)

RULES = [{"rule": "f1>=0.5", "passed": True, "observed": 0.6, "required": 0.5, "detail": "ok"}]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_url(f"sqlite:///{tmp_path / 'registry.db'}")
    yield reg
    reg.close()


def _model(reg: Registry, version: str, *, data: str = "d1", ds: str = "2024-01-01", **kw: object) -> None:
    reg.record_model(
        vertical="finance",
        model_version=version,
        data_version=data,
        ds=ds,
        metrics=kw.pop("metrics", {"f1": 0.6}),  # type: ignore[arg-type]
        lineage={"code_version": "abc", "seed": 42},
        **kw,  # type: ignore[arg-type]
    )


def _count(reg: Registry, row: type) -> int:
    with reg.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(row)).scalar_one()


# -- schema and engine ------------------------------------------------------------


def test_create_all_is_idempotent(registry: Registry) -> None:
    registry.create_all()
    registry.create_all()
    tables = set(inspect(registry.engine).get_table_names())
    assert {"model_versions", "decisions", "deployments"} <= tables


def test_sqlite_uses_wal_and_a_busy_timeout(registry: Registry) -> None:
    with registry.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 10_000


def test_unsupported_backend_says_what_to_set() -> None:
    with pytest.raises(PipelineError, match="PIPELINES_REGISTRY_URL"):
        create_registry_engine("mysql+pymysql://u:secret@db/registry")


# -- models ------------------------------------------------------------------------


def test_record_model_twice_keeps_one_row(registry: Registry) -> None:
    _model(registry, "m1", dag_run_id="scheduled__1")
    again = registry.record_model(
        vertical="finance",
        model_version="m1",
        data_version="d1",
        ds="2024-01-02",
        metrics={"f1": 0.7},
        lineage={"code_version": "abc"},
    )
    assert _count(registry, ModelVersionRow) == 1
    assert again.metrics == {"f1": 0.7}  # refreshed by the rerun
    assert again.ds == "2024-01-01"  # the first logical date that produced it
    assert again.dag_run_id == "scheduled__1"  # a CLI rerun does not erase the Airflow run


def test_same_model_version_with_other_data_version_is_refused(registry: Registry) -> None:
    _model(registry, "m1", data="d1")
    with pytest.raises(VersioningError, match="derived from the data version"):
        _model(registry, "m1", data="d2")
    record = registry.model("finance", "m1")
    assert record is not None and record.data_version == "d1"


def test_records_are_detached_and_frozen(registry: Registry) -> None:
    _model(registry, "m1")
    record = registry.model("finance", "m1")
    assert record is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.model_version = "x"  # type: ignore[misc]
    record.metrics["f1"] = 0.0
    assert registry.model("finance", "m1").metrics == {"f1": 0.6}  # type: ignore[union-attr]
    assert record.created_at.tzinfo is not None


def test_unknown_model_is_none(registry: Registry) -> None:
    assert registry.model("finance", "nope") is None
    assert registry.champion("finance") is None
    assert registry.previous_champion("finance") is None
    assert registry.last_decision("finance") is None


# -- decisions -----------------------------------------------------------------------


def test_decision_rerun_updates_one_row(registry: Registry) -> None:
    registry.record_decision(vertical="finance", ds="2024-01-01", model_version="m1", approved=False, reasons=[])
    second = registry.record_decision(
        vertical="finance", ds="2024-01-01", model_version="m1", approved=True, reasons=RULES, champion_version="m0"
    )
    assert _count(registry, DecisionRow) == 1
    assert second.approved and second.reasons == RULES and second.champion_version == "m0"
    assert second.updated_at >= second.created_at


def test_forced_decision_survives_an_automatic_rerun(registry: Registry) -> None:
    key: dict[str, Any] = {"vertical": "finance", "ds": "2024-01-01", "model_version": "m1"}
    registry.record_decision(**key, approved=False, reasons=RULES)
    forced = registry.record_decision(**key, approved=True, reasons=RULES, forced=True, forced_reason="hotfix")
    assert forced.forced and forced.approved
    rerun = registry.record_decision(**key, approved=False, reasons=RULES)
    assert rerun.forced and rerun.approved and rerun.forced_reason == "hotfix"
    again = registry.record_decision(**key, approved=True, reasons=[], forced=True, forced_reason="second look")
    assert again.forced_reason == "second look"
    assert _count(registry, DecisionRow) == 1


def test_decision_records_who_decided(registry: Registry) -> None:
    key: dict[str, Any] = {"vertical": "finance", "ds": "2024-01-01", "model_version": "m1"}
    assert registry.record_decision(**key, approved=False, reasons=RULES).actor is None
    auto = registry.record_decision(**key, approved=False, reasons=RULES, actor="airflow:scheduled__1")
    assert auto.actor == "airflow:scheduled__1"
    # A CLI rerun (`dvc exp run`, `pipelines gate`) adds its own event; it does not take the decision over.
    assert registry.record_decision(**key, approved=False, reasons=RULES, actor="cli:root").actor == auto.actor
    registry.record_decision(
        **key, approved=True, reasons=RULES, forced=True, forced_reason="hotfix", actor="cli:alice"
    )
    rerun = registry.record_decision(**key, approved=False, reasons=RULES, actor="airflow:scheduled__2")
    assert (rerun.forced, rerun.forced_reason, rerun.actor) == (True, "hotfix", "cli:alice")  # the person's call stands


def test_forced_decision_needs_a_reason(registry: Registry) -> None:
    with pytest.raises(PipelineError, match="forced_reason"):
        registry.record_decision(
            vertical="finance", ds="2024-01-01", model_version="m1", approved=True, reasons=[], forced=True
        )


def test_decisions_are_newest_first(registry: Registry) -> None:
    for ds, version in [("2024-01-02", "m2"), ("2024-01-01", "m1"), ("2024-01-03", "m3")]:
        registry.record_decision(vertical="finance", ds=ds, model_version=version, approved=True, reasons=[])
    registry.record_decision(vertical="other", ds="2024-02-01", model_version="x", approved=True, reasons=[])
    assert [d.model_version for d in registry.decisions("finance", limit=10)] == ["m3", "m2", "m1"]
    assert [d.model_version for d in registry.decisions("finance", limit=2)] == ["m3", "m2"]
    assert registry.last_decision("finance").model_version == "m3"  # type: ignore[union-attr]
    assert registry.decision("finance", "2024-01-01", "m1") is not None
    assert registry.decision("finance", "2024-01-01", "m2") is None


# -- deployments and champion ------------------------------------------------------------


def exercise_champion_history(reg: Registry) -> None:
    """Deploy, re-deploy, deploy, roll back: the scenario both backends must pass."""
    _model(reg, "m1")
    _model(reg, "m2", data="d2", ds="2024-01-02")

    first = reg.record_deployment(vertical="finance", model_version="m1", actor="airflow:run1", ds="2024-01-01")
    assert first is not None and first.previous_version is None and first.seq == 1
    assert reg.champion("finance").model_version == "m1"  # type: ignore[union-attr]
    assert reg.previous_champion("finance") is None

    assert reg.record_deployment(vertical="finance", model_version="m1", actor="airflow:run1") is None
    assert len(reg.deployments("finance")) == 1

    second = reg.record_deployment(vertical="finance", model_version="m2", actor="airflow:run2", ds="2024-01-02")
    assert second is not None and second.previous_version == "m1"
    assert reg.champion("finance").model_version == "m2"  # type: ignore[union-attr]
    assert reg.previous_champion("finance").model_version == "m1"  # type: ignore[union-attr]

    back = reg.record_deployment(
        vertical="finance", model_version="m1", actor="cli:alice", action="rollback", reason="m2 misroutes loans"
    )
    assert back is not None and back.action == "rollback" and back.previous_version == "m2"
    assert reg.champion("finance").model_version == "m1"  # type: ignore[union-attr]
    assert reg.previous_champion("finance").model_version == "m2"  # type: ignore[union-attr]

    history = reg.deployments("finance")
    assert [(d.model_version, d.action, d.actor) for d in history] == [
        ("m1", "rollback", "cli:alice"),
        ("m2", "deploy", "airflow:run2"),
        ("m1", "deploy", "airflow:run1"),
    ]
    assert [d.model_version for d in reg.deployments("finance", limit=1)] == ["m1"]
    assert history[0].at.tzinfo is not None

    # The trail: every move is an event; the rollback blocks the version it left, with its reason.
    trail = [(e.kind, e.model_version, e.actor, e.reason) for e in reg.events("finance")]
    assert trail == [
        ("block", "m2", "cli:alice", "m2 misroutes loans"),
        ("rollback", "m1", "cli:alice", "m2 misroutes loans"),
        ("deploy", "m2", "airflow:run2", None),
        ("deploy", "m1", "airflow:run1", None),
    ]
    assert reg.events("finance")[-1].run_id == "run1"
    production = reg.production("finance")
    assert production is not None
    assert (production.model_version, production.action, production.rolled_back_from, production.reason) == (
        "m1",
        "rollback",
        "m2",
        "m2 misroutes loans",
    )
    assert production.by == "cli:alice" and production.pending is None


def test_champion_follows_deploys_and_rollbacks(registry: Registry) -> None:
    exercise_champion_history(registry)


def test_deployment_of_an_unregistered_model_is_refused(registry: Registry) -> None:
    with pytest.raises(DeployError, match="record_model"):
        registry.record_deployment(vertical="finance", model_version="ghost", actor="cli:me")
    assert _count(registry, DeploymentRow) == 0


def test_deployment_takes_previous_version_from_the_bucket(registry: Registry) -> None:
    _model(registry, "m2")
    record = registry.record_deployment(vertical="finance", model_version="m2", actor="cli:me", previous_version="m1")
    assert record is not None and record.previous_version == "m1"


def test_a_pointer_move_needs_an_actor(registry: Registry) -> None:
    _model(registry, "m1")
    with pytest.raises(PipelineError, match="needs an actor"):
        registry.record_deployment(vertical="finance", model_version="m1", actor=" ", action="rollback")
    assert _count(registry, DeploymentRow) == 0


def test_bad_action_is_refused(registry: Registry) -> None:
    _model(registry, "m1")
    with pytest.raises(PipelineError, match="deploy' or 'rollback"):
        registry.record_deployment(vertical="finance", model_version="m1", actor="me", action="promote")  # type: ignore[arg-type]


def test_concurrent_writers_share_one_sqlite_file(tmp_path: Path) -> None:
    """Two processes' worth of engines appending at once: no lock errors, no seq gaps."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    setup = Registry.from_url(url)
    versions = [f"m{i}" for i in range(12)]
    for version in versions:
        _model(setup, version)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        reg = Registry(create_registry_engine(url))  # its own pool, like another process
        try:
            for version in versions[offset::2]:
                reg.record_deployment(vertical="finance", model_version=version, actor=f"t{offset}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    seqs = sorted(d.seq for d in setup.deployments("finance", limit=100))
    assert seqs == list(range(1, len(versions) + 1))
    setup.close()


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def pg_registry(pg_schema_url: str) -> Iterator[Registry]:
    reg = Registry.from_url(pg_schema_url)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def url(registry_url: str) -> str:
    return registry_url


@pytest.mark.postgres
def test_postgres_upserts_and_champion_history(pg_registry: Registry) -> None:
    assert pg_registry.engine.dialect.name == "postgresql"
    pg_registry.create_all()
    exercise_champion_history(pg_registry)
    _model(pg_registry, "m1", metrics={"f1": 0.9})
    assert _count(pg_registry, ModelVersionRow) == 2
    key: dict[str, Any] = {"vertical": "finance", "ds": "2024-01-01", "model_version": "m1"}
    pg_registry.record_decision(**key, approved=True, reasons=RULES, forced=True, forced_reason="ok")
    kept = pg_registry.record_decision(**key, approved=False, reasons=[])
    assert kept.forced and kept.approved
    assert _count(pg_registry, DecisionRow) == 1


# -- migrations (both backends) ---------------------------------------------------------


def _schema_diffs(url: str) -> list[Any]:
    """What autogenerate would still have to do to turn the database into ``Base.metadata``."""
    engine = create_registry_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_registry_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> None:
    engine = create_registry_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def test_revision_history_is_linear_and_head_is_known() -> None:
    script = ScriptDirectory.from_config(registry_migrations.alembic_config())
    assert script.get_heads() == [registry_migrations.HEAD_REVISION]
    assert script.get_bases() == [registry_migrations.INITIAL_REVISION]
    assert registry_migrations.MIGRATIONS_DIR.is_relative_to(Path(registry_migrations.__file__).parent)


def test_migrated_schema_matches_the_models(url: str) -> None:
    assert registry_migrations.upgrade(url) == registry_migrations.HEAD_REVISION
    assert _schema_diffs(url) == []
    assert registry_migrations.upgrade(url) == registry_migrations.HEAD_REVISION  # a no-op at head


def test_initial_revision_is_the_schema_create_all_made(url: str) -> None:
    """0001 is the pre-migration schema: the models less what later revisions added."""
    registry_migrations.upgrade(url, registry_migrations.INITIAL_REVISION)
    diffs = [(d[0], d[2], d[3].name) if d[0] == "add_column" else (d[0], d[1].name) for d in _schema_diffs(url)]
    assert sorted(diffs) == [
        ("add_column", "decisions", "actor"),
        ("add_index", "ix_events_vertical_id"),
        ("add_table", "events"),
        ("add_table", "run_leases"),
    ]


def test_first_use_migrates_a_fresh_database(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini, no cwd-relative paths
    reg = Registry(create_registry_engine(url))
    assert reg.verticals() == []
    assert registry_migrations.current_revision(reg.engine) == registry_migrations.HEAD_REVISION
    reg.close()


def test_a_create_all_database_is_stamped_and_upgraded(url: str) -> None:
    # What the registry made before migrations: the tables, rows, no alembic_version.
    registry_migrations.upgrade(url, registry_migrations.INITIAL_REVISION)
    _execute(
        url,
        "DROP TABLE alembic_version",
        "INSERT INTO decisions (vertical, ds, model_version, approved, forced, reasons, created_at, updated_at) "
        "VALUES ('finance', '2024-01-01', 'm1', true, false, '[]', '2024-01-02 00:00:00', '2024-01-02 00:00:00')",
    )
    assert registry_migrations.current_revision(url) is None

    reg = Registry(create_registry_engine(url))
    kept = reg.decision("finance", "2024-01-01", "m1")
    assert kept is not None and kept.approved and kept.actor is None
    assert registry_migrations.current_revision(reg.engine) == registry_migrations.HEAD_REVISION
    reg.close()
    assert _schema_diffs(url) == []


def test_a_foreign_database_is_refused(url: str) -> None:
    _execute(url, "CREATE TABLE model_versions (id INTEGER PRIMARY KEY)")
    with pytest.raises(PipelineError, match="empty database or schema"):
        registry_migrations.upgrade(url)


def test_a_database_from_newer_code_says_what_to_do(url: str) -> None:
    registry_migrations.upgrade(url)
    _execute(url, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(PipelineError, match="upgrade this worker's package"):
        Registry(create_registry_engine(url)).verticals()


def test_downgrade_to_base_and_up_again(url: str) -> None:
    registry_migrations.upgrade(url)
    assert registry_migrations.downgrade(url, "base") is None
    assert _tables(url) <= {"alembic_version"}
    registry_migrations.upgrade(url)
    assert _schema_diffs(url) == []


def test_new_revision_drafts_the_next_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "registry_migrations"
    shutil.copytree(registry_migrations.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(registry_migrations, "MIGRATIONS_DIR", copy)
    path = registry_migrations.new_revision("0003_nothing", "nothing changed")
    assert path == copy / "versions" / "v0003_nothing.py"
    draft = path.read_text()
    assert f"down_revision: str | None = {registry_migrations.HEAD_REVISION!r}" in draft
    upgrade_body = draft.split("def upgrade() -> None:")[1].split("def downgrade")[0]
    assert "pass" in upgrade_body and "op." not in upgrade_body  # the models equal head: nothing to do


# -- queries for the Models view (both backends) --------------------------------------------


def test_models_view_queries(url: str) -> None:
    reg = Registry(create_registry_engine(url))
    _model(reg, "m1")
    _model(reg, "m2", data="d2", ds="2024-01-02")
    reg.record_decision(vertical="finance", ds="2024-01-01", model_version="m1", approved=True, reasons=RULES)
    reg.record_decision(vertical="finance", ds="2024-01-02", model_version="m2", approved=False, reasons=RULES)
    reg.record_decision(vertical="retail", ds="2024-01-02", model_version="r1", approved=False, reasons=[])
    reg.record_deployment(vertical="finance", model_version="m1", actor="airflow:run1", ds="2024-01-01")

    assert reg.verticals() == ["finance", "retail"]
    assert [m.model_version for m in reg.models("finance")] == ["m2", "m1"]
    assert [m.model_version for m in reg.models("finance", limit=1)] == ["m2"]
    newest, oldest = reg.history("finance")
    assert (newest.decision.model_version, newest.deployed, newest.is_champion) == ("m2", False, False)
    assert newest.deployed_at is None and newest.deployed_by is None
    assert (oldest.decision.model_version, oldest.deployed, oldest.is_champion) == ("m1", True, True)
    assert oldest.deployed_by == "airflow:run1" and oldest.deployed_at is not None
    assert [h.decision.model_version for h in reg.history("finance", limit=1)] == ["m2"]
    assert reg.history("nobody") == []
    reg.close()


def test_retraining_does_not_blank_recorded_metrics(settings):
    from pipelines.registry.store import Registry

    registry = Registry.from_settings(settings)
    args = {"vertical": "finance", "model_version": "mv-aaaaaaaaaaaa", "data_version": "dv-1", "ds": "2026-11-27"}
    registry.record_model(**args, metrics=None, lineage={"step": "train"})
    registry.record_model(**args, metrics={"f1": 0.6}, lineage={"step": "evaluate"})
    registry.record_model(**args, metrics=None, lineage={"step": "train again"})
    model = registry.model("finance", "mv-aaaaaaaaaaaa")
    assert model is not None and model.metrics == {"f1": 0.6}


# -- the audit trail, sticky rollback, deploy intents (both backends) ---------------------


def test_reruns_add_events_and_never_rewrite_the_first_producer(url: str) -> None:
    reg = Registry(create_registry_engine(url))
    lineage = {"dag_run_id": "scheduled__1", "code_version": "abc"}
    reg.record_model(
        vertical="finance", model_version="m1", data_version="d1", ds="2024-01-01", metrics=None,
        lineage=lineage, dag_run_id="scheduled__1",
    )  # fmt: skip
    key: dict[str, Any] = {"vertical": "finance", "ds": "2024-01-01", "model_version": "m1"}
    reg.record_decision(**key, approved=True, reasons=RULES, actor="airflow:scheduled__1")
    first = reg.events("finance")
    # A cleared Airflow run, then `dvc exp run` on a laptop: both rerun train, evaluate and gate.
    for run_id in ("manual__2", None):
        reg.record_model(
            vertical="finance", model_version="m1", data_version="d1", ds="2024-01-01", metrics={"f1": 0.6},
            lineage={"dag_run_id": run_id, "code_version": "abc"}, dag_run_id=run_id,
        )  # fmt: skip
        rejected = [{**RULES[0], "passed": False, "detail": "f1 below floor"}]
        reg.record_decision(
            **key, approved=False, reasons=rejected, actor=f"airflow:{run_id}" if run_id else "cli:root"
        )

    model = reg.model("finance", "m1")
    assert model is not None and model.dag_run_id == "scheduled__1" and model.lineage == lineage
    assert model.metrics == {"f1": 0.6}  # measurements are refreshed; provenance is not
    decision = reg.decision("finance", "2024-01-01", "m1")
    assert decision is not None and decision.actor == "airflow:scheduled__1" and not decision.approved
    trail = reg.events("finance")
    assert [(e.kind, e.actor, e.run_id, e.details["approved"]) for e in trail] == [
        ("decision", "cli:root", None, False),
        ("decision", "airflow:manual__2", "manual__2", False),
        ("decision", "airflow:scheduled__1", "scheduled__1", True),
    ]
    assert trail[0].details["failed"] == ["f1 below floor"]
    assert trail[-1] == first[0]  # the earlier event is exactly as it was written
    assert _count(reg, DecisionRow) == 1
    reg.close()


def test_a_rolled_back_version_stays_blocked_until_forced_or_unblocked(url: str) -> None:
    reg = Registry(create_registry_engine(url))
    _model(reg, "m1")
    _model(reg, "m2", data="d2", ds="2024-01-02")
    reg.record_deployment(vertical="finance", model_version="m1", actor="airflow:run1")
    reg.record_deployment(vertical="finance", model_version="m2", actor="airflow:run2")
    with pytest.raises(PipelineError, match="needs a reason") as refused:
        reg.record_deployment(vertical="finance", model_version="m1", actor="cli:bob", action="rollback", reason=" ")
    assert refused.value.exit_code == 2 and reg.block("finance", "m2") is None
    reg.record_deployment(vertical="finance", model_version="m1", actor="cli:bob", action="rollback", reason="drift")

    block = reg.block("finance", "m2")
    assert block is not None and (block.actor, block.reason, block.kind) == ("cli:bob", "drift", "block")
    assert [b.model_version for b in reg.blocks("finance")] == ["m2"]
    assert reg.block("finance", "m1") is None
    # An automatic rerun's decision does not lift it; a forced one does.
    key: dict[str, Any] = {"vertical": "finance", "ds": "2024-01-02", "model_version": "m2"}
    reg.record_decision(**key, approved=True, reasons=RULES, actor="airflow:run3")
    assert reg.block("finance", "m2") is not None
    reg.record_decision(**key, approved=True, reasons=RULES, forced=True, forced_reason="fixed", actor="cli:al")
    assert reg.block("finance", "m2") is None and reg.blocks("finance") == []

    # Roll back again, then lift the block explicitly (a reason is required).
    reg.record_deployment(vertical="finance", model_version="m2", actor="cli:al")
    reg.record_deployment(vertical="finance", model_version="m1", actor="cli:bob", action="rollback", reason="again")
    with pytest.raises(PipelineError, match="needs a reason"):
        reg.unblock(vertical="finance", model_version="m2", actor="cli:al", reason="")
    lifted = reg.unblock(vertical="finance", model_version="m2", actor="cli:al", reason="root cause fixed")
    assert lifted is not None and lifted.kind == "unblock" and reg.block("finance", "m2") is None
    assert reg.unblock(vertical="finance", model_version="m2", actor="cli:al", reason="twice") is None
    reg.close()


def test_an_intent_the_pointer_proves_is_reconciled_into_the_deployment(url: str) -> None:
    reg = Registry(create_registry_engine(url))
    _model(reg, "m1")
    _model(reg, "m2", data="d2", ds="2024-01-02")
    reg.record_deployment(vertical="finance", model_version="m1", actor="airflow:run1")
    with pytest.raises(DeployError, match="not in the registry"):
        reg.record_intent(vertical="finance", model_version="ghost", actor="airflow:run2")
    intent = reg.record_intent(
        vertical="finance", model_version="m2", actor="airflow:run2", ds="2024-01-02", previous_version="m1"
    )
    assert reg.pending_intent("finance") == intent
    production = reg.production("finance")
    assert production is not None and production.model_version == "m1" and production.pending == intent

    # The process died before the pointer moved: nothing to confirm, nothing written.
    assert reg.reconcile("finance", "m1") is None and reg.pending_intent("finance") == intent
    # ... or after: the pointer names m2, so the move is recorded as the intent's actor.
    moved = reg.reconcile("finance", "m2")
    assert moved is not None and (moved.model_version, moved.previous_version, moved.actor, moved.ds) == (
        "m2",
        "m1",
        "airflow:run2",
        "2024-01-02",
    )
    assert reg.pending_intent("finance") is None and reg.champion("finance").model_version == "m2"  # type: ignore[union-attr]
    assert reg.events("finance", limit=1)[0].details["reconciled"] is True
    assert reg.reconcile("finance", "m2") is None  # idempotent
    # A retried deploy that finds its version already recorded closes its own intent.
    reg.record_intent(vertical="finance", model_version="m2", actor="airflow:run2")
    assert reg.record_deployment(vertical="finance", model_version="m2", actor="airflow:run2") is None
    assert reg.pending_intent("finance") is None
    assert reg.events("finance", limit=1)[0].details["outcome"] == "already in production"
    assert len(reg.deployments("finance")) == 2
    reg.close()


def test_a_malformed_or_unreachable_registry_is_a_registry_error(tmp_path: Path) -> None:
    from pipelines.errors import RegistryError

    with pytest.raises(RegistryError, match="PIPELINES_REGISTRY_URL") as bad:
        Registry.from_url("postgresql+nosuchdriver://x@127.0.0.1/db")
    assert bad.value.exit_code == RegistryError.exit_code != 1
    down = Registry.from_url("postgresql+psycopg://registry:s3cret@127.0.0.1:1/mlops")
    with pytest.raises(RegistryError, match=r"\[finance\].*127\.0\.0\.1:1.*check that the database is up") as err:
        down.champion("finance")
    assert "s3cret" not in str(err.value)
    down.close()


def test_a_write_locked_sqlite_registry_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from pipelines.errors import RegistryError
    from pipelines.registry import schema as registry_schema

    monkeypatch.setattr(registry_schema, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "locked.db"
    reg = Registry(create_registry_engine(f"sqlite:///{path}"))
    _model(reg, "m1")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    try:
        with pytest.raises(RegistryError, match=r"\[finance, 2024-01-01\].*locked.*retry when it is done"):
            reg.record_intent(vertical="finance", model_version="m1", actor="airflow:run1", ds="2024-01-01")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert reg.pending_intent("finance") is None
    reg.close()


@pytest.mark.postgres
def test_a_dropped_postgres_schema_is_a_registry_error(pg_schema_url: str) -> None:
    from pipelines.errors import RegistryError

    reg = Registry(create_registry_engine(pg_schema_url))
    _model(reg, "m1")
    _execute(pg_schema_url, "DROP TABLE events", "DROP TABLE deployments")  # a DBA's mistake, mid-flight
    with pytest.raises(RegistryError, match=r"\[finance\].*UndefinedTable.*registry upgrade"):
        reg.record_intent(vertical="finance", model_version="m1", actor="airflow:run1")
    reg.close()
