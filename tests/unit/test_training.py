from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.config import VerticalSpec
from pipelines.errors import TrainingError
from pipelines.model.features import Preprocessor
from pipelines.model.modeling import TabularMLP, load_model_dir, save_model_dir
from pipelines.model.training import EpochShuffledBatches, _hparams, split_validation, split_window, train_model


def make_spec(**overrides: Any) -> VerticalSpec:
    raw: dict[str, Any] = {
        "name": "demo",
        "description": "unit-test vertical",
        "owner": "ml-team",
        "source": {"kind": "sql", "table": "loans"},
        "key": "id",
        "label": {"column": "risk", "positive": "bad"},
        "features": {"numeric": ["amount", "age"], "categorical": ["city"]},
        "window": {"train_days": 10, "holdout_days": 3},
        "model": {"hidden": [8], "epochs": 3, "batch_size": 32},
        "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
        "alerts": {"emails": ["ml@example.com"]},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return VerticalSpec.model_validate(raw)


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.normal(size=n)
    city = rng.choice(["oslo", "paris", "rome"], size=n)
    score = 2 * amount + (city == "rome") + rng.normal(scale=0.5, size=n)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "amount": amount,
            "age": rng.integers(18, 80, size=n),
            "city": city,
            "risk": np.where(score > 0, "bad", "good"),
        }
    )


def dated(days: list[str], risks: list[str] | None = None) -> pd.DataFrame:
    frame = make_rows(len(days)).assign(event_date=days)
    return frame if risks is None else frame.assign(risk=risks)


# -- split_window --------------------------------------------------------------


def test_split_window_boundaries() -> None:
    days = ["2023-12-31", "2024-01-01", "2024-01-07", "2024-01-08", "2024-01-10", "2024-01-11"]
    frame = dated(days, ["bad", "good", "bad", "good", "bad", "good"])
    train, holdout = split_window(frame, make_spec(), "2024-01-10")
    # Window 01-01..01-10; holdout = the last 3 days 01-08..01-10; outside rows dropped.
    assert train["event_date"].tolist() == ["2024-01-01", "2024-01-07"]
    assert holdout["event_date"].tolist() == ["2024-01-08", "2024-01-10"]
    assert list(train.columns) == list(frame.columns)


@pytest.mark.parametrize(
    "convert",
    [
        pd.to_datetime,
        lambda s: [date.fromisoformat(v) for v in s],
        lambda s: [f"{v}T12:30:00" for v in s],
    ],
    ids=["timestamps", "dates", "iso-datetimes"],
)
def test_split_window_accepts_date_types(convert: Any) -> None:
    days = ["2024-01-06", "2024-01-07", "2024-01-08"]
    frame = dated(days, ["bad", "good", "bad"]).assign(event_date=convert(days))
    train, holdout = split_window(frame, make_spec(), "2024-01-10")
    assert (len(train), len(holdout)) == (2, 1)


def test_split_window_orders_by_date_then_key() -> None:
    frame = dated(["2024-01-05", "2024-01-02", "2024-01-05", "2024-01-09"], ["bad", "good", "bad", "good"])
    frame["id"] = [7, 9, 3, 1]
    train, _ = split_window(frame.iloc[::-1], make_spec(), "2024-01-10")
    assert train["id"].tolist() == [9, 3, 7]


def test_a_window_in_day_order_splits_into_slices_of_its_memory_with_the_same_rows() -> None:
    days = [f"2024-01-{d:02d}" for d in range(1, 11) for _ in range(3)]
    frame = dated(days, ["bad", "good", "good"] * 10)
    spec = make_spec(window={"train_days": 10, "holdout_days": 3, "validation_days": 2})
    train, holdout = split_window(frame, spec, "2024-01-10")
    shuffled_train, shuffled_holdout = split_window(frame.sample(frac=1.0, random_state=0), spec, "2024-01-10")
    # The snapshot writes its window sorted by day and key: both parts share the window's buffers ...
    assert np.shares_memory(train["amount"].to_numpy(), frame["amount"].to_numpy())
    assert np.shares_memory(holdout["amount"].to_numpy(), frame["amount"].to_numpy())
    # ... and are the same frames the copying path builds from any other order.
    assert not np.shares_memory(shuffled_train["amount"].to_numpy(), frame["amount"].to_numpy())
    pd.testing.assert_frame_equal(train, shuffled_train)
    pd.testing.assert_frame_equal(holdout, shuffled_holdout)
    assert (len(train), len(holdout), train.index.tolist()[:2]) == (21, 9, [0, 1])
    fit, validation = split_validation(train, spec, "2024-01-10")
    assert np.shares_memory(validation["amount"].to_numpy(), frame["amount"].to_numpy())
    assert fit["event_date"].max() == "2024-01-05" and validation["event_date"].tolist()[0] == "2024-01-06"
    # Copy-on-write: writing to a part never reaches the window it was sliced from.
    before = frame["amount"].copy()
    train.loc[0, "amount"] = 1e9
    pd.testing.assert_series_equal(frame["amount"], before)


def test_split_window_empty_holdout_names_counts() -> None:
    frame = dated(["2024-01-02", "2024-01-03"], ["bad", "good"])
    with pytest.raises(TrainingError, match=r"\[demo, 2024-01-10\].*holdout 2024-01-08\.\.2024-01-10 has 0 rows"):
        split_window(frame, make_spec(), "2024-01-10")


def test_split_window_empty_train() -> None:
    frame = dated(["2024-01-09", "2024-01-10"], ["bad", "good"])
    with pytest.raises(TrainingError, match=r"train 2024-01-01\.\.2024-01-07 has 0 rows"):
        split_window(frame, make_spec(), "2024-01-10")


def test_split_window_single_class_train() -> None:
    frame = dated(["2024-01-02", "2024-01-03", "2024-01-09"], ["good", "good", "bad"])
    with pytest.raises(TrainingError, match=r"single class \(0 of 2 rows are risk='bad'\)"):
        split_window(frame, make_spec(), "2024-01-10")


def test_split_window_input_errors() -> None:
    frame = dated(["2024-01-02", "2024-01-09"], ["bad", "good"])
    with pytest.raises(TrainingError, match="no event-time column 'event_date'"):
        split_window(frame.drop(columns="event_date"), make_spec(), "2024-01-10")
    with pytest.raises(TrainingError, match="use YYYY-MM-DD"):
        split_window(frame, make_spec(), "10/01/2024")
    with pytest.raises(TrainingError, match="not ISO dates"):
        split_window(frame.assign(event_date=["2024-01-02", "yesterday"]), make_spec(), "2024-01-10")
    with pytest.raises(TrainingError, match="1 missing value"):
        split_window(frame.assign(event_date=["2024-01-02", None]), make_spec(), "2024-01-10")


# -- pieces of training ------------------------------------------------------


def test_shuffled_batches_depend_only_on_seed_and_epoch() -> None:
    sampler = EpochShuffledBatches(10, 4, seed=5)
    first = list(sampler)
    assert [len(b) for b in first] == [4, 4, 2]
    assert len(sampler) == 3
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert list(EpochShuffledBatches(10, 4, seed=5)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_each_validation_epoch_scores_every_validation_row_in_one_batch() -> None:
    """Early stopping and the sweep read the epoch's AUROC, which needs the whole split at once."""
    import torch

    from pipelines.model.training import _lightning_classes

    data_module_class, _ = _lightning_classes()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)).astype(np.float32), rng.integers(0, 2, size=(300, 1)).astype(np.float32)
    validation = (rng.normal(size=(97, 4)).astype(np.float32), rng.integers(0, 2, size=(97, 1)).astype(np.float32))
    data = data_module_class(x, y, batch_size=16, seed=1, validation=validation)
    for _epoch in range(2):  # the same batch every epoch, not a loader used up after one
        [batch] = list(data.val_dataloader())
        features, labels = batch
        assert torch.equal(features, torch.from_numpy(validation[0]))
        assert torch.equal(labels, torch.from_numpy(validation[1]))
    assert data_module_class(x, y, batch_size=16, seed=1).val_dataloader() == []


def test_samples_per_epoch_trains_each_epoch_on_a_fresh_seeded_sample() -> None:
    sampler = EpochShuffledBatches(100, 8, seed=5, samples_per_epoch=20)
    first = [i for batch in sampler for i in batch]
    assert len(first) == 20 and len(set(first)) == 20 and len(sampler) == 3
    assert [i for b in EpochShuffledBatches(100, 8, seed=5, samples_per_epoch=20) for i in b] == first
    sampler.set_epoch(1)
    assert set(i for b in sampler for i in b) != set(first)  # over the epochs other rows are seen
    # A budget above the split's size is every row, as without one.
    assert list(EpochShuffledBatches(10, 4, seed=5, samples_per_epoch=50)) == list(EpochShuffledBatches(10, 4, seed=5))


def test_samples_per_epoch_is_recorded_and_the_model_still_learns(tmp_path: Path) -> None:
    spec = make_spec(model={"epochs": 12, "samples_per_epoch": 150, "learning_rate": 0.01})
    result = train_model(make_rows(600), spec, model_dir=tmp_path / "m", checkpoint_dir=tmp_path / "c")
    model = load_model_dir(tmp_path / "m")
    assert model.metadata["hparams"]["samples_per_epoch"] == 150
    holdout = make_rows(300, seed=1)
    accuracy = ((model.predict_proba(holdout) >= 0.5) == (holdout["risk"] == "bad")).mean()
    assert accuracy > 0.8 and result.epochs_run == 12
    # Without a budget the hparams carry no such key (the demo verticals' model versions are unchanged).
    assert "samples_per_epoch" not in _hparams(make_spec(), np.zeros((2, 2)), np.array([0.0, 1.0]))


def test_pos_weight_follows_balance_classes() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    y = np.array([1, 0, 0, 0], dtype=np.float32)
    assert _hparams(make_spec(), x, y)["pos_weight"] == 3.0
    assert _hparams(make_spec(model={"balance_classes": False}), x, y)["pos_weight"] == 1.0


# -- model directory -----------------------------------------------------------


def test_model_dir_round_trip_and_deterministic_bytes(tmp_path: Path) -> None:
    import torch

    rows = make_rows(50)
    spec = make_spec()
    pre = Preprocessor.fit(rows, spec.features)
    torch.manual_seed(0)
    module = TabularMLP(len(pre.output_names), [4], 0.0)
    hparams = {"input_dim": len(pre.output_names), "hidden": [4], "dropout": 0.0}
    for name in ("a", "b"):
        save_model_dir(tmp_path / name, module, pre, hparams=hparams, decision_threshold=0.3)
    for file in ("weights.pt", "preprocessing.json", "model.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()

    model = load_model_dir(tmp_path / "a")
    with torch.no_grad():
        expected = torch.sigmoid(module(torch.from_numpy(pre.transform(rows)))).numpy()
    proba = model.predict_proba(rows)
    assert proba == pytest.approx(expected, rel=1e-6)
    assert model.predict(rows).tolist() == (proba >= 0.3).astype(int).tolist()
    assert model.feature_names == ["amount", "age", "city"]


def test_model_dir_errors(tmp_path: Path) -> None:
    pre = Preprocessor.fit(make_rows(20), make_spec().features)
    with pytest.raises(TrainingError, match="does not match"):
        save_model_dir(
            tmp_path,
            TabularMLP(3, [2]),
            pre,
            hparams={"input_dim": 3, "hidden": [2], "dropout": 0.0},
            decision_threshold=0.5,
        )
    with pytest.raises(TrainingError, match="lacks"):
        load_model_dir(tmp_path / "nowhere")


# -- train_model -------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_four_epochs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("fresh")
    spec = make_spec(model={"epochs": 4})
    return root, train_model(make_rows(400), spec, model_dir=root / "model", checkpoint_dir=root / "ckpt")


def test_training_writes_a_loadable_model(fresh_four_epochs: tuple[Path, Any]) -> None:
    root, result = fresh_four_epochs
    assert (result.epochs_run, result.resumed_from_checkpoint, result.train_rows) == (4, False, 400)
    assert (root / "ckpt" / "last.ckpt").exists()
    model = load_model_dir(result.model_dir)
    metadata = json.loads((result.model_dir / "model.json").read_text())
    assert metadata["label"] == {"column": "risk", "positive": "bad"}
    proba = model.predict_proba(make_rows(30, seed=1))
    assert proba.shape == (30,)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert json.loads(json.dumps(result.to_record()))["model_dir"] == str(result.model_dir)


def test_training_is_bit_identical(fresh_four_epochs: tuple[Path, Any], tmp_path: Path) -> None:
    _, first = fresh_four_epochs
    again = train_model(
        make_rows(400), make_spec(model={"epochs": 4}), model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ckpt"
    )
    assert again.weights_sha256 == first.weights_sha256
    assert (tmp_path / "model" / "model.json").read_bytes() == (first.model_dir / "model.json").read_bytes()


def test_resume_continues_to_the_same_weights(fresh_four_epochs: tuple[Path, Any], tmp_path: Path) -> None:
    _, uninterrupted = fresh_four_epochs
    ckpt = tmp_path / "ckpt"
    partial = train_model(
        make_rows(400), make_spec(model={"epochs": 2}), model_dir=tmp_path / "m2", checkpoint_dir=ckpt
    )
    assert (partial.epochs_run, partial.resumed_from_checkpoint) == (2, False)

    resumed = train_model(
        make_rows(400), make_spec(model={"epochs": 4}), model_dir=tmp_path / "m4", checkpoint_dir=ckpt
    )
    assert resumed.resumed_from_checkpoint
    assert (resumed.resumed_at_epoch, resumed.epochs_run) == (2, 4)
    # Shuffles and dropout are seeded by (seed, epoch), so stopping halfway changes nothing.
    assert resumed.weights_sha256 == uninterrupted.weights_sha256

    with pytest.raises(TrainingError, match=r"at epoch 4, past model\.epochs=3"):
        train_model(make_rows(400), make_spec(model={"epochs": 3}), model_dir=tmp_path / "m3", checkpoint_dir=ckpt)


def test_checkpoint_from_other_data_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    spec = make_spec(model={"epochs": 1})
    train_model(make_rows(100), spec, model_dir=tmp_path / "a", checkpoint_dir=ckpt)
    with pytest.raises(TrainingError, match="other training data or hyperparameters"):
        train_model(make_rows(100, seed=9), spec, model_dir=tmp_path / "b", checkpoint_dir=ckpt)
