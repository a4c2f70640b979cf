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

from pipelines.config import VerticalSpec, parse_ds
from pipelines.errors import TrainingError
from pipelines.layout import write_json_atomic
from pipelines.model.features import Preprocessor, label_vector

LAST_CHECKPOINT = "last.ckpt"
FINGERPRINT_FILE = "fingerprint.json"
#: Optimiser steps per Lightning training step (`ChunkedBatches`); epochs, checkpoints,
#: validation and early stopping are unaffected (all per epoch).
STEPS_PER_CHUNK = 64
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
    #: Rows of the validation split (0: none); the epoch whose weights were kept (early stopping).
    validation_rows: int = 0
    best_epoch: int | None = None
    decision_threshold: float = 0.5
    threshold: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    #: The champion version whose weights this model started from; None: trained cold.
    warm_start_from: str | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form for a stage record."""
        return {**asdict(self), "model_dir": str(self.model_dir)}


# -- splitting -----------------------------------------------------------------


def split_window(frame: pd.DataFrame, spec: VerticalSpec, ds: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a window into (train, holdout) by event date.

    Holdout: the last ``window.holdout_days`` days ending at ``ds`` (less
    ``label.delay_days``: days still awaiting their outcome) inclusive.
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
    # With a label delay the holdout ends at the last day whose outcome is known (label.delay_days).
    end = _labelled_end(ds, spec)
    days = _event_dates(frame[column], spec, ds)
    holdout_start = end - timedelta(days=spec.window.holdout_days - 1)
    window_start = parse_ds(ds, vertical=spec.name, error=TrainingError) - timedelta(days=spec.window.train_days - 1)
    # The order from the date and key columns alone, then each part taken from the frame once:
    # sorting the whole frame first held a third copy of a window of millions of rows.
    keys = pd.DataFrame({"_day": days.to_numpy()})
    if spec.key in frame.columns:
        keys[spec.key] = frame[spec.key].array
    ordered = keys.sort_values(_sort_columns(frame, spec), kind="stable")
    day = ordered["_day"]
    holdout_rows = ordered.index[(day >= holdout_start) & (day <= end)]
    train_rows = ordered.index[(day >= window_start) & (day < holdout_start)]
    train = _rows_at(frame, train_rows.to_numpy())
    holdout = _rows_at(frame, holdout_rows.to_numpy())
    _check_split(train, holdout, spec, ds, window_start=window_start, holdout_start=holdout_start, end=end)
    return train, holdout


def _rows_at(frame: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """``frame``'s rows at ``positions``, renumbered from 0.

    A snapshot's window is written sorted by day and key, so a split's rows are usually one
    ascending run: then the part is a slice sharing the window's memory (copy-on-write) instead of
    a copy.  At 5M rows the two copies of a split held 2 GB beside the window.  Same rows, same
    order, same values either way.
    """
    if len(positions) and positions[-1] - positions[0] == len(positions) - 1 and bool(np.all(np.diff(positions) == 1)):
        return frame.iloc[positions[0] : positions[-1] + 1].reset_index(drop=True)
    return frame.take(positions).reset_index(drop=True)


def _labelled_end(ds: str, spec: VerticalSpec) -> date:
    """The last event day with a known outcome on the night of ``ds``."""
    return parse_ds(ds, vertical=spec.name, error=TrainingError) - timedelta(days=spec.label.delay_days)


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


def split_validation(train: pd.DataFrame, spec: VerticalSpec, ds: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Split the train part of `split_window` into (fit, validation) by event date.

    Validation: the last ``window.validation_days`` days before the holdout
    (never the holdout itself); fit: the earlier days.  With no validation
    days the train part comes back whole and validation is None.  Raises
    `TrainingError` when the validation split is empty or has a single class
    (early stopping and threshold choice need both), or fit has a single class.
    """
    days = spec.window.validation_days
    if not days:
        return train, None
    end = _labelled_end(ds, spec)
    holdout_start = end - timedelta(days=spec.window.holdout_days - 1)
    validation_start = holdout_start - timedelta(days=days)
    event_days = _event_dates(train[spec.source.event_time], spec, ds)
    mask = (event_days >= validation_start).to_numpy()
    # Slices of ``train`` when it is in day order (as `split_window` returns it), copies otherwise.
    fit = _rows_at(train, np.flatnonzero(~mask))
    validation = _rows_at(train, np.flatnonzero(mask))
    where = (
        f"validation {validation_start}..{holdout_start - timedelta(days=1)} has {len(validation)} rows, "
        f"fit (earlier days) has {len(fit)}"
    )
    for name, part in (("fit", fit), ("validation", validation)):
        positives = int(label_vector(part, spec.label).sum()) if len(part) else 0
        if positives in (0, len(part)):
            raise TrainingError(
                f"the {name} split has a single class or no rows ({positives} positive of {len(part)}); {where}. "
                "Adjust window.validation_days (or widen window.train_days)",
                vertical=spec.name,
                ds=ds,
            )
    return fit, validation


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

    def __init__(
        self,
        n_rows: int,
        batch_size: int,
        seed: int,
        *,
        no_single_row_batch: bool = False,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        #: Rows each epoch visits: the first ``samples`` of its permutation (``model.samples_per_epoch``).
        self.samples = n_rows if samples_per_epoch is None else min(samples_per_epoch, n_rows)
        # Batch norm cannot train on a batch of one row: fold such a last row into the batch before.
        self.fold_last = no_single_row_batch and self.samples > batch_size and self.samples % batch_size == 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng(derive_seed(self.seed, self.epoch, "shuffle")).permutation(self.n_rows)
        order = order[: self.samples]
        starts = list(range(0, self.samples, self.batch_size))
        if self.fold_last:
            starts.pop()
        for i, start in enumerate(starts):
            end = self.samples if i == len(starts) - 1 else start + self.batch_size
            yield order[start:end].tolist()

    def __len__(self) -> int:
        return (self.samples + self.batch_size - 1) // self.batch_size - int(self.fold_last)


class ChunkedBatches:
    """`EpochShuffledBatches` grouped ``steps`` mini-batches at a time: what one Lightning step trains on.

    The mini-batches and their order are exactly the wrapped sampler's; `set_epoch`
    (which Lightning calls on a loader's sampler every epoch) is passed through.
    """

    def __init__(self, batches: EpochShuffledBatches, steps: int = STEPS_PER_CHUNK) -> None:
        self.batches = batches
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[list[int]]]:
        chunk: list[list[int]] = []
        for batch in self.batches:
            chunk.append(batch)
            if len(chunk) == self.steps:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def __len__(self) -> int:
        return (len(self.batches) + self.steps - 1) // self.steps


# -- training ----------------------------------------------------------------


@dataclass(frozen=True)
class WarmStartSource:
    """A champion to fine-tune from: its version and loaded model (`pipelines.model.modeling.ScoringModel`)."""

    version: str
    model: Any


def train_model(
    train: pd.DataFrame,
    spec: VerticalSpec,
    *,
    model_dir: Path,
    checkpoint_dir: Path,
    validation: pd.DataFrame | None = None,
    warm_start: WarmStartSource | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Fit preprocessing and the MLP on ``train``; write the model directory.

    With ``validation`` (the split `split_validation` returns), training stops
    early on the validation loss when the spec asks (keeping the best epoch's
    weights), and the decision threshold and calibration are chosen on it.
    With ``warm_start`` (a compatible champion, see `warm_start_compatible`),
    the champion's preprocessing is reused and its weights are the starting
    point, fine-tuned for ``model.warm_start.epochs``.  ``callbacks`` are
    extra Lightning callbacks (a tuning trial's pruning).

    Resumes from ``checkpoint_dir/last.ckpt`` when a previous attempt left one
    (the checkpoint dir must belong to this model version: a checkpoint made
    from other data or hyperparameters is refused, not silently continued).
    """
    from pipelines.model.modeling import save_model_dir
    from pipelines.model.thresholds import choose_threshold, fit_calibration, reliability_bins

    preprocessor = warm_start.model.preprocessor if warm_start else fit_preprocessor(train, spec)
    x = preprocessor.transform(train)
    y = label_vector(train, spec.label)
    hparams = _hparams(spec, x, y, preprocessor=preprocessor, warm_start=warm_start)
    max_epochs = spec.model.warm_start.epochs if warm_start else spec.model.epochs
    x_val = y_val = None
    if validation is not None:
        x_val, y_val = preprocessor.transform(validation), label_vector(validation, spec.label)
    fingerprint = _fingerprint(x, y, hparams, x_val, y_val)
    resume_from = _prepare_checkpoint_dir(checkpoint_dir, fingerprint, spec)
    initial = None if warm_start is None else warm_start.model.module.state_dict()

    with _torch_process_settings():
        module, epochs_run, resumed_at, best_epoch = _fit(
            x,
            y,
            hparams,
            spec,
            checkpoint_dir=checkpoint_dir,
            resume_from=resume_from,
            validation=None if x_val is None or y_val is None else (x_val, y_val),
            max_epochs=max_epochs,
            initial_state=initial,
            callbacks=callbacks or [],
        )
    if epochs_run > max_epochs:
        # Only a checkpoint from a run with more epochs gets here; its weights are not this spec's model.
        raise TrainingError(
            f"checkpoint in {checkpoint_dir} is at epoch {epochs_run}, past "
            f"{'model.warm_start.epochs' if warm_start else 'model.epochs'}={max_epochs}; "
            f"delete {checkpoint_dir} to retrain from scratch",
            vertical=spec.name,
        )
    model = module.model
    threshold_record = calibration_record = reliability = None
    threshold = spec.model.decision_threshold
    if x_val is not None and y_val is not None:
        logits = _logits(model, x_val)
        calibration = fit_calibration(y_val, logits, spec.model.threshold.calibration)
        val_prob = calibration.apply(logits)
        chosen = choose_threshold(y_val, val_prob, spec.model.threshold, fixed=spec.model.decision_threshold)
        # Observed vs predicted on validation after calibration: the model card's reliability diagram.
        reliability = {
            "split": "validation",
            "calibration": calibration.method,
            "bins": reliability_bins(y_val, val_prob),
        }
        threshold, threshold_record, calibration_record = chosen.threshold, chosen.to_dict(), calibration.to_dict()
        if calibration.method != "none":
            _set_calibration(model, calibration.scale, calibration.bias)

    label = {"column": spec.label.column, "positive": spec.label.positive}
    save_model_dir(
        model_dir,
        model,
        preprocessor,
        hparams={**hparams, "epochs": max_epochs},
        decision_threshold=threshold,
        label=label,
        extra={
            "threshold_choice": threshold_record,
            "calibration": calibration_record,
            "reliability": reliability,
            "warm_start_from": warm_start.version if warm_start else None,
            "best_epoch": best_epoch,
        },
    )
    return TrainResult(
        model_dir=model_dir,
        epochs_run=epochs_run,
        resumed_from_checkpoint=resume_from is not None,
        train_rows=len(train),
        weights_sha256=hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest(),
        resumed_at_epoch=resumed_at,
        train_positives=int(y.sum()),
        validation_rows=0 if validation is None else len(validation),
        best_epoch=best_epoch,
        decision_threshold=float(threshold),
        threshold=threshold_record,
        calibration=calibration_record,
        warm_start_from=warm_start.version if warm_start else None,
    )


def fit_preprocessor(train: pd.DataFrame, spec: VerticalSpec) -> Preprocessor:
    """The preprocessing a cold model fits on its train split."""
    return Preprocessor.fit(train, spec.features, max_categories=spec.model.max_categories)


def warm_start_compatible(champion: Any, spec: VerticalSpec) -> str | None:
    """Why ``champion`` (a loaded `ScoringModel`) cannot seed this spec's model, or None when it can.

    Compatible: the same features (names, kinds, order) and the architecture
    this spec would build on the champion's preprocessing.
    """
    from pipelines.model.modeling import architecture_of

    pre = champion.preprocessor
    if [s.name for s in pre.numeric] != list(spec.features.numeric) or [v.name for v in pre.categorical] != list(
        spec.features.categorical
    ):
        return "its features differ from the spec's"
    wanted = architecture_of(_architecture_hparams(spec, pre, calibrated=False))
    have = {**champion.metadata.get("architecture", {})}
    have = architecture_of({**have, "calibrated": False})
    if have != wanted:
        return f"its architecture {have} differs from the spec's {wanted}"
    return None


def _logits(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).double().numpy()


def _set_calibration(model: Any, scale: float, bias: float) -> None:
    import torch

    if model.calibration is None:
        raise TrainingError("the model was built without calibration buffers; set model.threshold.calibration")
    model.calibration.copy_(torch.tensor([scale, bias], dtype=model.calibration.dtype))


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


def _architecture_hparams(spec: VerticalSpec, preprocessor: Preprocessor, *, calibrated: bool) -> dict[str, Any]:
    from pipelines.model.modeling import embedding_blocks

    return {
        "input_dim": len(preprocessor.output_names),
        "hidden": list(spec.model.hidden),
        "dropout": spec.model.dropout,
        "wide": spec.model.wide,
        "batch_norm": spec.model.batch_norm,
        "embeddings": embedding_blocks(preprocessor, spec.model.embedding_dim, spec.model.embedding_min_categories),
        "calibrated": calibrated,
    }


def _hparams(
    spec: VerticalSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    preprocessor: Preprocessor | None = None,
    warm_start: WarmStartSource | None = None,
) -> dict[str, Any]:
    positives = float(y.sum())
    # Inverse class ratio: a rare positive class weighs as much as the common one.
    pos_weight = (len(y) - positives) / positives if spec.model.balance_classes and positives else 1.0
    calibrated = spec.model.threshold.calibration != "none"
    if preprocessor is None:
        arch: dict[str, Any] = {"input_dim": int(x.shape[1]), "hidden": list(spec.model.hidden)}
        arch["dropout"] = spec.model.dropout
    else:
        arch = _architecture_hparams(spec, preprocessor, calibrated=calibrated)
    scale = spec.model.warm_start.learning_rate_scale if warm_start else 1.0
    hparams = {
        **arch,
        "learning_rate": spec.model.learning_rate * scale,
        "weight_decay": spec.model.weight_decay,
        "batch_size": spec.model.batch_size,
        "pos_weight": pos_weight,
        "seed": spec.model.seed,
    }
    if spec.model.samples_per_epoch is not None:  # only when set: the demo verticals' hparams stay as they were
        hparams["samples_per_epoch"] = spec.model.samples_per_epoch
    if warm_start is not None:
        hparams["warm_start_from"] = warm_start.version
    return hparams


def _fingerprint(
    x: np.ndarray,
    y: np.ndarray,
    hparams: dict[str, Any],
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> str:
    # Epochs are left out on purpose: raising them and rerunning continues training.
    # The arrays' own buffers (C order, as tobytes() would give): no copy of a matrix of millions of rows.
    digest = hashlib.sha256(np.ascontiguousarray(x).data)
    digest.update(np.ascontiguousarray(y).data)
    digest.update(json.dumps(hparams, sort_keys=True).encode())
    if x_val is not None and y_val is not None:
        digest.update(np.ascontiguousarray(x_val).data)
        digest.update(np.ascontiguousarray(y_val).data)
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
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    max_epochs: int | None = None,
    initial_state: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> tuple[Any, int, int, int | None]:
    """Run the Trainer; return (lightning module, epochs completed, epoch resumed at, best epoch kept)."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    data_cls, module_cls = _lightning_classes()
    pl.seed_everything(spec.model.seed, workers=True, verbose=False)
    module = module_cls(**hparams)
    if initial_state is not None:
        # Warm start: the champion's weights; its calibration (if any) is reset, being re-fitted after.
        state = {k: v.clone() for k, v in initial_state.items() if k != "calibration"}
        missing, unexpected = module.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if k != "calibration"]:
            raise TrainingError(
                f"warm start: the champion's weights do not fit this architecture (missing {missing}, "
                f"unexpected {unexpected}); set model.warm_start.enabled: false or retrain cold",
                vertical=spec.name,
            )
    data = data_cls(
        x,
        y,
        batch_size=spec.model.batch_size,
        seed=spec.model.seed,
        validation=validation,
        batch_norm=bool(hparams.get("batch_norm")),
        samples_per_epoch=hparams.get("samples_per_epoch"),
    )
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, enable_version_counter=False)
    extra: list[Any] = []
    best: Any = None
    if validation is not None:
        best = ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best",
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            enable_version_counter=False,
        )
        extra.append(best)
        if spec.model.early_stopping is not None:
            extra.append(
                EarlyStopping(
                    monitor="val_loss",
                    mode="min",
                    patience=spec.model.early_stopping.patience,
                    min_delta=spec.model.early_stopping.min_delta,
                )
            )
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=max_epochs or spec.model.epochs,
        deterministic=True,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        default_root_dir=checkpoint_dir,
        num_sanity_val_steps=0,
        # No validation split: skip the validation loop entirely (not an empty one each epoch).
        limit_val_batches=0 if validation is None else 1.0,
        callbacks=[checkpoint, *extra, *(callbacks or [])],
    )
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    best_epoch = None
    if best is not None and best.best_model_path and spec.model.early_stopping is not None:
        # Early stopping keeps the best validation epoch's weights, not the last epoch's.
        saved = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(saved["state_dict"])
        best_epoch = int(saved["epoch"]) + 1
    _check_finite(module, spec)
    resumed_at = module.start_epoch if module.start_epoch is not None else trainer.current_epoch
    return module.cpu(), int(trainer.current_epoch), int(resumed_at) if resume_from else 0, best_epoch


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
    from torch.utils.data import DataLoader, Dataset

    from pipelines.model.modeling import TabularMLP

    class RowBatches(Dataset):
        """In-memory rows, fetched a chunk of mini-batches at a time (one index tensor per mini-batch).

        An item is a list of mini-batches (row-index lists from `EpochShuffledBatches`), so
        one Lightning step runs several optimiser steps (`TabularClassifier.training_step`).
        """

        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, batches: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            # One index tensor per mini-batch: indexing with the Python list (as TensorDataset
            # does) converts it element by element once per tensor, ~2x a plain loop's step.
            indices = [torch.as_tensor(rows) for rows in batches]
            return [(self.x.index_select(0, i), self.y.index_select(0, i)) for i in indices]

    class WholeSplit(Dataset):
        """A split as one item, all rows at once: the validation epoch's AUROC needs every row.

        As a `TensorDataset` in one batch, the loader fetched it row by row and stacked the rows
        again every validation epoch: a fifth of a tuning sweep's time on the demo data.
        """

        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            self.rows = (torch.from_numpy(x), torch.from_numpy(y))

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.rows

    class TabularDataModule(pl.LightningDataModule):
        """In-memory tensors; batches from `EpochShuffledBatches`; an optional validation split."""

        def __init__(
            self,
            x: np.ndarray,
            y: np.ndarray,
            *,
            batch_size: int,
            seed: int,
            validation: tuple[np.ndarray, np.ndarray] | None = None,
            batch_norm: bool = False,
            samples_per_epoch: int | None = None,
        ) -> None:
            super().__init__()
            self.dataset = RowBatches(x, y)
            self.batch_size = batch_size
            self.seed = seed
            self.batch_norm = batch_norm
            self.samples_per_epoch = samples_per_epoch
            self.validation = None if validation is None else WholeSplit(*validation)

        def train_dataloader(self) -> DataLoader:
            sampler = ChunkedBatches(
                EpochShuffledBatches(
                    len(self.dataset),
                    self.batch_size,
                    self.seed,
                    no_single_row_batch=self.batch_norm,
                    samples_per_epoch=self.samples_per_epoch,
                )
            )
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

        def val_dataloader(self) -> DataLoader:
            if self.validation is None:
                return []  # type: ignore[return-value]  # Lightning skips validation on an empty list
            # One batch (batch_size=None: the item is the batch): the epoch's AUROC needs every row at once.
            return DataLoader(self.validation, batch_size=None, shuffle=False, num_workers=0)

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
            wide: bool = False,
            batch_norm: bool = False,
            embeddings: list[list[int]] | None = None,
            calibrated: bool = False,
            warm_start_from: str | None = None,
            samples_per_epoch: int | None = None,
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = TabularMLP(
                input_dim,
                hidden,
                dropout,
                wide=wide,
                batch_norm=batch_norm,
                embeddings=embeddings,
                calibrated=calibrated,
            )
            self.loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
            self.start_epoch: int | None = None
            self.automatic_optimization = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def on_train_start(self) -> None:
            # Runs after a checkpoint is restored: the epoch this run starts at.
            self.start_epoch = self.current_epoch

        def on_train_epoch_start(self) -> None:
            # Dropout masks from (seed, epoch), not from however much RNG earlier epochs used.
            torch.manual_seed(derive_seed(self.hparams["seed"], self.current_epoch, "dropout"))

        def training_step(self, batch: list[tuple[torch.Tensor, torch.Tensor]], batch_idx: int) -> torch.Tensor:
            # Manual optimisation over a chunk of mini-batches (`ChunkedBatches`): one optimiser
            # step per mini-batch, as automatic optimisation would take, but Lightning's per-step
            # machinery (hooks, closure, progress) runs once per chunk instead of once per
            # mini-batch; that machinery cost ~0.6 ms a step, more than half a plain step here.
            optimizer = self.optimizers()
            assert not isinstance(optimizer, list)  # configure_optimizers returns one
            loss = torch.zeros(())
            for x, y in batch:
                optimizer.zero_grad()
                loss = self.loss(self(x), y)
                self.manual_backward(loss)
                optimizer.step()
            return loss.detach()

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            from pipelines.gate.evaluation import auroc

            x, y = batch
            logits = self(x)
            self.log("val_loss", self.loss(logits, y), prog_bar=False)
            score = auroc(y.cpu().numpy(), torch.sigmoid(logits).double().cpu().numpy())
            self.log("val_auroc", float(score) if score is not None else 0.5, prog_bar=False)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(
                self.parameters(), lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
            )

    return TabularDataModule, TabularClassifier
