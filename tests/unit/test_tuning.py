"""Validation split, thresholds in the artefact, tabular options, warm start and sweeps (tiny frames)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.config import VerticalSpec
from pipelines.errors import TrainingError
from pipelines.model.modeling import load_model_dir
from pipelines.model.training import WarmStartSource, split_validation, split_window, train_model, warm_start_compatible
from pipelines.model.tuning import apply_params, run_sweep, sweep_reason
from pipelines.model.version_ids import model_version_id

DS = "2024-03-10"


def make_spec(**model: Any) -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "demo",
            "description": "unit-test vertical",
            "owner": "ml-team",
            "source": {"kind": "sql", "table": "loans"},
            "key": "id",
            "label": {"column": "risk", "positive": "bad"},
            "features": {"numeric": ["amount", "age"], "categorical": ["city"]},
            "window": {"train_days": 60, "holdout_days": 10, "validation_days": 10},
            "model": {"hidden": [8], "epochs": 3, "batch_size": 64, **model},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["ml@example.com"]},
        }
    )


def make_window(rows_per_day: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = [date.fromisoformat(DS) - timedelta(days=d) for d in range(60)]
    n = rows_per_day * len(days)
    amount = rng.normal(size=n)
    city = rng.choice([f"c{i}" for i in range(12)], size=n)
    score = 1.5 * amount + (city == "c3") + rng.normal(scale=0.8, size=n) - 1.0
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "event_date": [str(d) for d in days for _ in range(rows_per_day)],
            "amount": amount,
            "age": rng.integers(18, 80, size=n),
            "city": city,
            "risk": np.where(score > 0, "bad", "good"),
        }
    )


@pytest.fixture(scope="module")
def parts() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    spec = make_spec()
    train, holdout = split_window(make_window(), spec, DS)
    fit, validation = split_validation(train, spec, DS)
    assert validation is not None
    return fit, validation, holdout


# -- the validation split ------------------------------------------------------


def test_validation_is_the_days_just_before_the_holdout(
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    fit, validation, holdout = parts
    # Holdout 03-01..03-10, validation the 10 days before (02-20..02-29), fit everything earlier.
    assert (validation["event_date"].min(), validation["event_date"].max()) == ("2024-02-20", "2024-02-29")
    assert fit["event_date"].max() == "2024-02-19"
    assert holdout["event_date"].min() == "2024-03-01"
    assert not set(validation["id"]) & set(holdout["id"])


def test_no_validation_days_returns_the_train_split_whole() -> None:
    spec = VerticalSpec.model_validate({**make_spec().model_dump(), "window": {"train_days": 60, "holdout_days": 10}})
    train, _ = split_window(make_window(), spec, DS)
    fit, validation = split_validation(train, spec, DS)
    assert validation is None and len(fit) == len(train)


def test_single_class_validation_is_refused() -> None:
    spec = make_spec()
    frame = make_window()
    late = frame["event_date"] >= "2024-02-20"
    train, _ = split_window(frame.assign(risk=np.where(late, "good", frame["risk"])), spec, DS)
    with pytest.raises(TrainingError, match="validation split has a single class"):
        split_validation(train, spec, DS)


def test_threshold_options_need_a_validation_split() -> None:
    raw = make_spec().model_dump()
    raw["window"] = {"train_days": 60, "holdout_days": 10}
    raw["model"]["threshold"] = {"objective": "max_f1"}
    with pytest.raises(ValueError, match=r"window\.validation_days"):
        VerticalSpec.model_validate(raw)


# -- threshold, early stopping and options in the artefact ---------------------


def test_chosen_threshold_travels_in_the_artefact(
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    fit, validation, holdout = parts
    spec = make_spec(
        epochs=30,
        early_stopping={"patience": 2},
        threshold={"objective": "max_f1", "calibration": "platt"},
        wide=True,
        batch_norm=True,
        embedding_dim=3,
        embedding_min_categories=5,
    )
    result = train_model(fit, spec, model_dir=tmp_path / "m", checkpoint_dir=tmp_path / "c", validation=validation)
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["decision_threshold"] == result.decision_threshold != 0.5
    assert manifest["threshold_choice"]["objective"] == "max_f1"
    assert manifest["architecture"]["wide"] and manifest["architecture"]["batch_norm"]
    assert manifest["architecture"]["embeddings"] == [[2, 14, 3]]  # 12 cities + other + missing
    assert result.best_epoch is not None and result.best_epoch <= result.epochs_run <= 30
    # The loaded model (what evaluate and serving use) predicts at the chosen threshold, calibrated.
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.decision_threshold == result.decision_threshold
    prob = loaded.predict_proba(holdout)
    np.testing.assert_array_equal(loaded.predict(holdout), (prob >= result.decision_threshold).astype(int))
    assert loaded.module.calibration is not None and float(loaded.module.calibration[0]) != 1.0
    # The reliability diagram's data: every validation row lands in one of 10 bins, after calibration.
    reliability = manifest["reliability"]
    assert reliability["split"] == "validation" and reliability["calibration"] == "platt"
    assert len(reliability["bins"]) == 10 and sum(b["count"] for b in reliability["bins"]) == len(validation)


# -- warm start ---------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Any:
    fit, validation, _ = parts
    root = tmp_path_factory.mktemp("champion")
    spec = make_spec(warm_start={"enabled": True, "epochs": 2})
    train_model(fit, spec, model_dir=root / "m", checkpoint_dir=root / "c", validation=validation)
    return load_model_dir(root / "m")


def test_warm_start_begins_from_the_champions_weights(
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], champion: Any, tmp_path: Path
) -> None:
    import pytorch_lightning as pl

    fit, validation, _ = parts
    spec = make_spec(warm_start={"enabled": True, "epochs": 2})
    assert warm_start_compatible(champion, spec) is None
    seen: dict[str, torch.Tensor] = {}

    class Snapshot(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            net: Any = pl_module.model
            seen.update({k: v.detach().clone() for k, v in net.state_dict().items()})

    result = train_model(
        fit,
        spec,
        model_dir=tmp_path / "m",
        checkpoint_dir=tmp_path / "c",
        validation=validation,
        warm_start=WarmStartSource("mv-champion", champion),
        callbacks=[Snapshot()],
    )
    expected = champion.module.state_dict()
    assert set(seen) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(seen[name], value, rtol=0, atol=0)
    assert result.warm_start_from == "mv-champion" and result.epochs_run == 2
    # Fine-tuning moved the weights away from the champion's.
    after = load_model_dir(tmp_path / "m").module.state_dict()
    assert not torch.equal(after["net.0.weight"], expected["net.0.weight"])


def test_incompatible_champion_means_cold(champion: Any) -> None:
    wider = make_spec(hidden=[16], warm_start={"enabled": True})
    assert "architecture" in (warm_start_compatible(champion, wider) or "")
    other_features = VerticalSpec.model_validate(
        {**make_spec().model_dump(), "features": {"numeric": ["amount"], "categorical": ["city"]}}
    )
    assert "features" in (warm_start_compatible(champion, other_features) or "")


def test_model_version_covers_the_warm_start_source() -> None:
    spec = make_spec()
    cold = model_version_id(spec, data_version="dv-1", code="code-1")
    warm_a = model_version_id(spec, data_version="dv-1", code="code-1", warm_start_from="mv-a")
    warm_b = model_version_id(spec, data_version="dv-1", code="code-1", warm_start_from="mv-b")
    assert len({cold, warm_a, warm_b}) == 3
    assert warm_a == model_version_id(spec, data_version="dv-1", code="code-1", warm_start_from="mv-a")


# -- sweeps --------------------------------------------------------------------


def sweep_spec(**tuning: Any) -> VerticalSpec:
    space = {"width": [4, 8], "depth": [1], "epochs": [1, 2], "batch_size": [64], "embedding_dim": [0]}
    return make_spec(tuning={"enabled": True, "seed": 7, "space": space, **tuning})


def test_sweep_respects_its_trial_budget_and_is_deterministic(
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], tmp_path: Path, settings: Any
) -> None:
    from pipelines.model.tuning import list_studies, study_storage_url

    fit, validation, _ = parts
    spec = sweep_spec(trials=3)
    # Studies live beside the registry (its own file: Optuna's Alembic table must not meet the registry's).
    storage = study_storage_url(settings)
    assert storage != settings.registry_url and storage.endswith("optuna.db")
    first = run_sweep(spec, fit, validation, storage=storage, name="demo:2024-03-10")
    again = run_sweep(spec, fit, validation, storage=f"sqlite:///{tmp_path / 'b.db'}", name="demo:2024-03-10")
    assert first["trials"] == 3
    assert (first["best_params"], first["best_value"]) == (again["best_params"], again["best_value"])
    # A rerun on the same storage finds the finished study: no extra trials.
    rerun = run_sweep(spec, fit, validation, storage=storage, name="demo:2024-03-10")
    assert rerun["trials"] == 3 and rerun["best_params"] == first["best_params"]
    # What `python -m pipelines tuning demo` lists.
    [listed] = list_studies(settings, "demo")
    assert (listed["study"], listed["trials"], listed["best_params"]) == ("demo:2024-03-10", 3, first["best_params"])
    tuned = apply_params(spec, first["best_params"])
    assert tuned.model.hidden == [first["best_params"]["width"]]
    assert tuned.training_hash() != spec.training_hash()  # the model version covers the chosen config


def test_sweep_stops_at_its_time_budget(parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    fit, validation, _ = parts
    result = run_sweep(
        sweep_spec(trials=200, timeout_seconds=1), fit, validation, storage=f"sqlite:///{tmp_path / 's.db'}", name="x"
    )
    assert 1 <= result["trials"] < 200
    # The budget was spent: a rerun of the night reuses the study as it is (same configuration).
    rerun = run_sweep(
        sweep_spec(trials=200, timeout_seconds=1), fit, validation, storage=f"sqlite:///{tmp_path / 's.db'}", name="x"
    )
    assert (rerun["trials"], rerun["best_params"]) == (result["trials"], result["best_params"])


def test_sweep_nights() -> None:
    weekly = sweep_spec(when=["weekly", "after_rejection", "first_run"], weekday=6)
    assert sweep_reason(weekly, "2024-03-10", last_sweep=None, last_rejected=False) == "first run: no sweep yet"
    assert str(sweep_reason(weekly, "2024-03-10", last_sweep="2024-03-03", last_rejected=False)).startswith("weekly")
    assert sweep_reason(weekly, "2024-03-11", last_sweep="2024-03-10", last_rejected=False) is None
    assert sweep_reason(weekly, "2024-03-11", last_sweep="2024-03-10", last_rejected=True) is not None
    assert sweep_reason(make_spec(), "2024-03-10", last_sweep=None, last_rejected=True) is None


# -- which champion a night warm-starts from ----------------------------------------


@pytest.fixture(scope="module")
def champion_dir(
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    fit, validation, _ = parts
    root = tmp_path_factory.mktemp("champion-dir")
    train_model(fit, make_spec(), model_dir=root / "m", checkpoint_dir=root / "c", validation=validation)
    return root / "m"


def deploy_champion(settings: Any, model_dir: Path, version: str, ds: str) -> None:
    from pipelines.release.deploy import deploy_version

    deploy_version(
        bucket_url=settings.bucket_url,
        vertical="demo",
        model_version=version,
        model_dir=model_dir,
        metrics={"challenger": {"confusion_matrix": [[1, 0], [0, 1]]}},
        lineage={"data_version": "dv-x"},
        model_card=f"# {version}\n",
        ds=ds,
    )


def test_night_warm_starts_from_the_deployed_champion_and_reruns_reuse_the_source(
    settings: Any, champion_dir: Path
) -> None:
    from pipelines.layout import Layout
    from pipelines.model.tuning import choose_warm_start
    from pipelines.registry.store import Registry

    spec = make_spec(warm_start={"enabled": True})
    layout = Layout(settings, "demo")
    with Registry.from_settings(settings) as registry:
        assert choose_warm_start(spec, DS, settings=settings, registry=registry, layout=layout)[0] is None

        deploy_champion(settings, champion_dir, "mv-champ", "2024-03-09")
        warm, note = choose_warm_start(spec, DS, settings=settings, registry=registry, layout=layout)
        assert warm is not None and warm.version == "mv-champ" and note["from"] == "mv-champ"
        # Loaded from the bucket: the weights are the deployed ones.
        deployed = load_model_dir(champion_dir).module.state_dict()
        for name, value in warm.model.module.state_dict().items():
            torch.testing.assert_close(value, deployed[name], rtol=0, atol=0)

        # An incompatible spec trains cold and says why.
        cold, why = choose_warm_start(
            make_spec(hidden=[16], warm_start={"enabled": True}),
            DS,
            settings=settings,
            registry=registry,
            layout=layout,
        )
        assert cold is None and "incompatible" in why["why"]

        # This date's own model is now in production (it was promoted): a rerun of the date
        # warm-starts from what that model recorded, not from itself.
        registry.record_model(
            vertical="demo",
            model_version="mv-tonight",
            data_version="dv-x",
            ds=DS,
            dag_run_id=None,
            metrics=None,
            lineage={"warm_start": {"from": "mv-champ", "why": "compatible champion"}},
        )
        deploy_champion(settings, champion_dir, "mv-tonight", DS)
        rerun, _ = choose_warm_start(spec, DS, settings=settings, registry=registry, layout=layout)
        assert rerun is not None and rerun.version == "mv-champ"

        disabled, why = choose_warm_start(make_spec(), DS, settings=settings, registry=registry, layout=layout)
        assert disabled is None and "enabled is false" in why["why"]


def test_a_sweep_trains_on_at_most_max_rows_a_seeded_sample_in_row_order() -> None:
    from pipelines.model.tuning import sweep_rows

    frame = pd.DataFrame({"id": range(1000)})
    sample = sweep_rows(frame, 100, seed=0)
    assert len(sample) == 100 and sample["id"].is_monotonic_increasing and sample.index.tolist() == list(range(100))
    assert sample.equals(sweep_rows(frame, 100, seed=0))
    assert not sample.equals(sweep_rows(frame, 100, seed=1))
    assert sweep_rows(frame, None, seed=0) is frame and sweep_rows(frame, 5000, seed=0) is frame


def test_batch_norm_never_gets_a_single_row_batch() -> None:
    from pipelines.model.training import EpochShuffledBatches

    folded = EpochShuffledBatches(9, 4, seed=1, no_single_row_batch=True)
    assert [len(b) for b in folded] == [4, 5] and len(folded) == 2
    assert sorted(i for b in folded for i in b) == list(range(9))
    # Without batch norm the batches are as they always were.
    assert [len(b) for b in EpochShuffledBatches(9, 4, seed=1)] == [4, 4, 1]


# -- where studies live ----------------------------------------------------------


def test_postgres_study_url_is_a_schema_of_its_own() -> None:
    from pipelines.model.tuning import study_storage_url
    from tests.conftest import make_settings

    plain = make_settings(Path("/tmp/x"), registry_url="postgresql+psycopg://u:pw@db:5432/reg")
    assert study_storage_url(plain) == "postgresql+psycopg://u:pw@db:5432/reg?options=-csearch_path%3Doptuna"
    scoped = make_settings(Path("/tmp/x"), registry_url="postgresql+psycopg://db/reg?options=-c%20search_path%3Dml")
    assert study_storage_url(scoped) == "postgresql+psycopg://db/reg?options=-csearch_path%3Dml_optuna"
    with pytest.raises(TrainingError, match="PIPELINES_TUNING_URL"):
        study_storage_url(make_settings(Path("/tmp/x"), registry_url="mysql://db/reg"))


@pytest.mark.postgres
def test_studies_share_the_registry_database_on_postgres(pg_schema_url: str, tmp_path: Path) -> None:
    """Optuna's tables (and its alembic_version) go to their own schema; the registry's stay untouched."""
    import optuna
    from sqlalchemy import create_engine, text

    from pipelines.model.tuning import _storage, list_studies, study_storage_url
    from pipelines.registry.migrations import current_revision, upgrade
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, registry_url=pg_schema_url)
    head = upgrade(pg_schema_url)
    schema = pg_schema_url.rsplit("%3D", 1)[1]
    try:
        study = optuna.create_study(study_name="demo:2024-03-10", storage=_storage(settings))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
        [listed] = list_studies(settings, "demo")
        assert (listed["study"], listed["trials"]) == ("demo:2024-03-10", 2)
        assert current_revision(pg_schema_url) == head  # the registry's migrations still see their own revision
        engine = create_engine(study_storage_url(settings))
        with engine.connect() as conn:
            where = set(
                conn.execute(
                    text("SELECT table_schema FROM information_schema.tables WHERE table_name = 'studies'")
                ).scalars()
            )
            assert f"{schema}_optuna" in where and schema not in where
        engine.dispose()
    finally:
        admin = create_engine(pg_schema_url)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}_optuna" CASCADE'))
        admin.dispose()


def test_sqlite_studies_sit_beside_the_registry_in_a_write_ahead_log(tmp_path: Path) -> None:
    """A sweep commits every parameter and report: on SQLite they go to a WAL file (no fsync per
    commit, as the registry's), and the study stays readable from another connection meanwhile."""
    import sqlite3

    import optuna

    from pipelines.model.tuning import _storage, list_studies
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, registry_url=f"sqlite:///{tmp_path / 'state' / 'registry.db'}")
    study = optuna.create_study(study_name="demo:2024-03-10", storage=_storage(settings))
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    path = tmp_path / "state" / "optuna.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM trials").fetchone()[0] == 2
    [listed] = list_studies(settings, "demo")
    assert (listed["study"], listed["trials"]) == ("demo:2024-03-10", 2)
