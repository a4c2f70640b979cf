"""Train a vertical's model with PyTorch Lightning: reproducible and resumable.

Identical inputs give a bit-identical ``weights.pt``: everything random is
seeded from ``spec.model.seed`` — the initial weights once, and the shuffle
order and dropout masks per epoch from (seed, epoch).  Because nothing random
depends on how many epochs already ran in this process, a task that is killed
and retried resumes from ``last.ckpt`` and ends with the same bytes as one
uninterrupted run.

torch and Lightning are imported inside the functions that need them, so
importing this module (e.g. for `split_window`) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import VerticalSpec
from pipelines.errors import TrainingError
from pipelines.features import Preprocessor, label_vector
from pipelines.layout import write_json_atomic

LAST_CHECKPOINT = "last.ckpt"
FINGERPRINT_FILE = "fingerprint.json"
# Lightning's informational chatter (GPU available, checkpoint dir not empty, few workers)
# buries the lines that matter in a task log; keep only warnings and errors.
_NOISY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
_EXPECTED_WARNINGS = (
    r".*does not have many workers.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    # torch 2.13 deprecated LeafSpec, which pytorch-lightning 2.6 still builds: harmless.
    r".*isinstance\(treespec, LeafSpec\).*",
)


@dataclass(frozen=True)
class TrainResult:
    """What the train stage records about one trained model."""

    model_dir: Path
    #: Epochs completed in total, including those restored from a checkpoint.
    epochs_run: int
    resumed_from_checkpoint: bool
    train_rows: int
    weights_sha256: str
    #: Epoch the run continued from (0 for a fresh run).
    resumed_at_epoch: int = 0
    train_positives: int = 0

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form for a stage record."""
        return {**asdict(self), "model_dir": str(self.model_dir)}


# -- splitting -----------------------------------------------------------------


def split_window(frame: pd.DataFrame, spec: VerticalSpec, ds: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a window into (train, holdout) by event date.

    Holdout: the last ``window.holdout_days`` days ending at ``ds`` inclusive.
    Train: the earlier days of the ``window.train_days`` window.  Rows dated
    after ``ds`` or before the window are dropped.  Both parts come back sorted
    by event date then key, so training never depends on the order partitions
    were read in.  Raises `TrainingError` when either part is empty or the
    train part has a single class.
    """
    column = spec.source.event_time
    if column not in frame.columns:
        raise TrainingError(
            f"window has no event-time column {column!r} (source.event_time); columns are "
            f"{sorted(map(str, frame.columns))[:30]}",
            vertical=spec.name,
            ds=ds,
        )
    end = _parse_ds(ds, spec)
    days = _event_dates(frame[column], spec, ds)
    holdout_start = end - timedelta(days=spec.window.holdout_days - 1)
    window_start = end - timedelta(days=spec.window.train_days - 1)
    ordered = frame.assign(_day=days).sort_values(_sort_columns(frame, spec), kind="stable")
    holdout_mask = (ordered["_day"] >= holdout_start) & (ordered["_day"] <= end)
    train_mask = (ordered["_day"] >= window_start) & (ordered["_day"] < holdout_start)
    train = ordered[train_mask].drop(columns="_day").reset_index(drop=True)
    holdout = ordered[holdout_mask].drop(columns="_day").reset_index(drop=True)
    _check_split(train, holdout, spec, ds, window_start=window_start, holdout_start=holdout_start, end=end)
    return train, holdout


def _parse_ds(ds: str, spec: VerticalSpec) -> date:
    try:
        return date.fromisoformat(ds)
    except ValueError as exc:
        raise TrainingError(f"logical date {ds!r} is not YYYY-MM-DD", vertical=spec.name, ds=ds) from exc


def _event_dates(values: pd.Series, spec: VerticalSpec, ds: str) -> pd.Series:
    try:
        parsed = pd.to_datetime(values, errors="raise", format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise TrainingError(
            f"event-time column {values.name!r} holds values that are not ISO dates: {exc}",
            vertical=spec.name,
            ds=ds,
        ) from exc
    missing = int(parsed.isna().sum())
    if missing:
        raise TrainingError(
            f"event-time column {values.name!r} has {missing} missing value(s); "
            "the quality suite should reject such partitions",
            vertical=spec.name,
            ds=ds,
        )
    return parsed.dt.date


def _sort_columns(frame: pd.DataFrame, spec: VerticalSpec) -> list[str]:
    return ["_day", spec.key] if spec.key in frame.columns else ["_day"]


def _check_split(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    spec: VerticalSpec,
    ds: str,
    *,
    window_start: date,
    holdout_start: date,
    end: date,
) -> None:
    where = (
        f"train {window_start}..{holdout_start - timedelta(days=1)} has {len(train)} rows, "
        f"holdout {holdout_start}..{end} has {len(holdout)} rows"
    )
    if train.empty or holdout.empty:
        raise TrainingError(
            f"cannot split the window: {where}; backfill the missing days or adjust window.holdout_days",
            vertical=spec.name,
            ds=ds,
        )
    positives = int(label_vector(train, spec.label).sum())
    if positives in (0, len(train)):
        raise TrainingError(
            f"train split has a single class ({positives} of {len(train)} rows are "
            f"{spec.label.column}={spec.label.positive!r}); {where}. A classifier needs both classes: "
            "check the label mapping (label.positive) or widen window.train_days",
            vertical=spec.name,
            ds=ds,
        )


# -- seeded, resumable shuffling ---------------------------------------------


def derive_seed(seed: int, epoch: int, purpose: str) -> int:
    """A 63-bit seed from (seed, epoch, purpose): independent streams, no process state."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class EpochShuffledBatches:
    """Batch sampler whose order depends only on (seed, epoch).

    Lightning calls `set_epoch` before every epoch, including the first epoch
    after a resume, so a restored run sees exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng(derive_seed(self.seed, self.epoch, "shuffle")).permutation(self.n_rows)
        for start in range(0, self.n_rows, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.n_rows + self.batch_size - 1) // self.batch_size


# -- training ----------------------------------------------------------------


def train_model(train: pd.DataFrame, spec: VerticalSpec, *, model_dir: Path, checkpoint_dir: Path) -> TrainResult:
    """Fit preprocessing and the MLP on ``train``; write the model directory.

    Resumes from ``checkpoint_dir/last.ckpt`` when a previous attempt left one
    (the checkpoint dir must belong to this model version: a checkpoint made
    from other data or hyperparameters is refused, not silently continued).
    """
    from pipelines.modeling import save_model_dir

    preprocessor = Preprocessor.fit(train, spec.features)
    x = preprocessor.transform(train)
    y = label_vector(train, spec.label)
    hparams = _hparams(spec, x, y)
    resume_from = _prepare_checkpoint_dir(checkpoint_dir, _fingerprint(x, y, hparams), spec)

    with _torch_process_settings():
        module, epochs_run, resumed_at = _fit(
            x, y, hparams, spec, checkpoint_dir=checkpoint_dir, resume_from=resume_from
        )
    if epochs_run != spec.model.epochs:
        # Only a checkpoint from a run with more epochs gets here; its weights are not this spec's model.
        raise TrainingError(
            f"checkpoint in {checkpoint_dir} is at epoch {epochs_run}, past model.epochs={spec.model.epochs}; "
            f"delete {checkpoint_dir} to retrain from scratch",
            vertical=spec.name,
        )

    label = {"column": spec.label.column, "positive": spec.label.positive}
    save_model_dir(
        model_dir,
        module.model,
        preprocessor,
        hparams={**hparams, "epochs": spec.model.epochs},
        decision_threshold=spec.model.decision_threshold,
        label=label,
    )
    return TrainResult(
        model_dir=model_dir,
        epochs_run=epochs_run,
        resumed_from_checkpoint=resume_from is not None,
        train_rows=len(train),
        weights_sha256=hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest(),
        resumed_at_epoch=resumed_at,
        train_positives=int(y.sum()),
    )


@contextmanager
def _torch_process_settings() -> Iterator[None]:
    """One intra-op thread and deterministic kernels while training; restore both after.

    One thread: these nets are far too small to gain from more, and on a busy
    host (several verticals training at once) spin-waiting threads made a 3 s
    fit take 18 s.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        # Both are process-wide (Trainer(deterministic=True) sets the flag): give the host its own back.
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _hparams(spec: VerticalSpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    positives = float(y.sum())
    # Inverse class ratio: a rare positive class weighs as much as the common one.
    pos_weight = (len(y) - positives) / positives if spec.model.balance_classes and positives else 1.0
    return {
        "input_dim": int(x.shape[1]),
        "hidden": list(spec.model.hidden),
        "dropout": spec.model.dropout,
        "learning_rate": spec.model.learning_rate,
        "weight_decay": spec.model.weight_decay,
        "batch_size": spec.model.batch_size,
        "pos_weight": pos_weight,
        "seed": spec.model.seed,
    }


def _fingerprint(x: np.ndarray, y: np.ndarray, hparams: dict[str, Any]) -> str:
    # Epochs are left out on purpose: raising them and rerunning continues training.
    digest = hashlib.sha256(x.tobytes())
    digest.update(y.tobytes())
    digest.update(json.dumps(hparams, sort_keys=True).encode())
    return digest.hexdigest()


def _prepare_checkpoint_dir(checkpoint_dir: Path, fingerprint: str, spec: VerticalSpec) -> Path | None:
    """Return the checkpoint to resume from, if any; record what this dir is for."""
    marker = checkpoint_dir / FINGERPRINT_FILE
    last = checkpoint_dir / LAST_CHECKPOINT
    if last.exists():
        recorded = json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None
        if recorded != fingerprint:
            raise TrainingError(
                f"checkpoint {last} was made from other training data or hyperparameters; "
                f"delete {checkpoint_dir} to retrain from scratch",
                vertical=spec.name,
            )
        return last
    write_json_atomic(marker, {"fingerprint": fingerprint})
    return None


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    hparams: dict[str, Any],
    spec: VerticalSpec,
    *,
    checkpoint_dir: Path,
    resume_from: Path | None,
) -> tuple[Any, int, int]:
    """Run the Trainer; return (lightning module, epochs completed, epoch resumed at)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    data_cls, module_cls = _lightning_classes()
    pl.seed_everything(spec.model.seed, workers=True, verbose=False)
    module = module_cls(**hparams)
    data = data_cls(x, y, batch_size=spec.model.batch_size, seed=spec.model.seed)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=spec.model.epochs,
        deterministic=True,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        default_root_dir=checkpoint_dir,
        callbacks=[checkpoint],
    )
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    _check_finite(module, spec)
    resumed_at = module.start_epoch if module.start_epoch is not None else trainer.current_epoch
    return module.cpu(), int(trainer.current_epoch), int(resumed_at) if resume_from else 0


def _check_finite(module: Any, spec: VerticalSpec) -> None:
    import torch

    if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
        raise TrainingError(
            "training diverged: the weights hold NaN or inf; lower model.learning_rate",
            vertical=spec.name,
        )


@cache
def _lightning_classes() -> tuple[type, type]:
    """Build the Lightning classes on first use, so importing this module skips Lightning."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pipelines.modeling import TabularMLP

    class TabularDataModule(pl.LightningDataModule):
        """In-memory tensors; batches from `EpochShuffledBatches`."""

        def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int) -> None:
            super().__init__()
            self.dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
            self.batch_size = batch_size
            self.seed = seed

        def train_dataloader(self) -> DataLoader:
            sampler = EpochShuffledBatches(len(self.dataset), self.batch_size, self.seed)
            # batch_size=None: the sampler yields whole batches, indexed in one tensor op.
            # Own generator: a DataLoader draws a base seed from the global RNG each time it
            # starts an epoch, which would shift the dropout masks of a resumed run.
            return DataLoader(
                self.dataset,
                sampler=sampler,
                batch_size=None,
                num_workers=0,
                generator=torch.Generator().manual_seed(self.seed),
            )

    class TabularClassifier(pl.LightningModule):
        """`TabularMLP` trained with BCE-with-logits and AdamW."""

        def __init__(
            self,
            *,
            input_dim: int,
            hidden: list[int],
            dropout: float,
            learning_rate: float,
            weight_decay: float,
            batch_size: int,
            pos_weight: float,
            seed: int,
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = TabularMLP(input_dim, hidden, dropout)
            self.loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
            self.start_epoch: int | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def on_train_start(self) -> None:
            # Runs after a checkpoint is restored: the epoch this run starts at.
            self.start_epoch = self.current_epoch

        def on_train_epoch_start(self) -> None:
            # Dropout masks from (seed, epoch), not from however much RNG earlier epochs used.
            torch.manual_seed(derive_seed(self.hparams["seed"], self.current_epoch, "dropout"))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.loss(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(
                self.parameters(), lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
            )

    return TabularDataModule, TabularClassifier
