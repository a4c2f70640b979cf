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

from pipelines import registry_migrations
from pipelines.errors import DeployError, PipelineError, VersioningError
from pipelines.registry import (
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

    back = reg.record_deployment(vertical="finance", model_version="m1", actor="cli:alice", action="rollback")
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
    diffs = _schema_diffs(url)
    named = sorted((d[0], d[1].name) if d[0] == "add_table" else (d[0], d[2], d[3].name) for d in diffs)
    assert named == [("add_column", "decisions", "actor"), ("add_table", "run_leases")]


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
    from pipelines.registry import Registry

    registry = Registry.from_settings(settings)
    args = {"vertical": "finance", "model_version": "mv-aaaaaaaaaaaa", "data_version": "dv-1", "ds": "2026-11-27"}
    registry.record_model(**args, metrics=None, lineage={"step": "train"})
    registry.record_model(**args, metrics={"f1": 0.6}, lineage={"step": "evaluate"})
    registry.record_model(**args, metrics=None, lineage={"step": "train again"})
    model = registry.model("finance", "mv-aaaaaaaaaaaa")
    assert model is not None and model.metrics == {"f1": 0.6}
