"""Lightning epochs vs a plain PyTorch loop: same module, data, batches, loss, optimiser, seed.

Measured: the project's training path (`pipelines.model.training._fit`: the Trainer with
its checkpoint callback, deterministic, no validation split) for ``EPOCHS`` epochs.
Baseline: the same `TabularMLP`, `EpochShuffledBatches` order, BCE-with-logits and
AdamW in a hand-written loop.  Both end with bit-identical weights (checked), so
the ratio is pure framework overhead.  Budget: <= 1.10x.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from harness import Config, Figure, median_pair, timed

EPOCHS = 2


def _data(rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.standard_normal(rows) > 1.0).astype(np.float32)
    return x, y


def plain_loop(x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], epochs: int) -> Any:
    import torch

    from pipelines.model.modeling import TabularMLP
    from pipelines.model.training import EpochShuffledBatches, derive_seed

    torch.manual_seed(hparams["seed"])
    model = TabularMLP(hparams["input_dim"], hparams["hidden"], hparams["dropout"])
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(hparams["pos_weight"]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=hparams["learning_rate"], weight_decay=hparams["weight_decay"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    sampler = EpochShuffledBatches(len(x), hparams["batch_size"], hparams["seed"])
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(derive_seed(hparams["seed"], epoch, "dropout"))
        for batch in sampler:
            index = torch.tensor(batch)
            optimiser.zero_grad()
            loss = loss_fn(model(xt[index]), yt[index])
            loss.backward()
            optimiser.step()
    return model


def run(config: Config) -> list[Figure]:
    import torch

    from pipelines.config import load_spec
    from pipelines.model.training import _fit, _hparams

    spec = load_spec("manufacturing")
    rows = 4_000 if config.quick else 400_000
    x, y = _data(rows, 30)
    hparams = _hparams(spec, x, y)
    hparams["dropout"] = 0.0  # dropout masks come from different RNG call orders in the two loops
    results: dict[str, Any] = {}

    def lightning() -> float:
        with tempfile.TemporaryDirectory(dir=config.workdir) as tmp:
            return timed(
                lambda: results.__setitem__(
                    "lightning",
                    _fit(x, y, hparams, spec, checkpoint_dir=Path(tmp), resume_from=None, max_epochs=EPOCHS),
                )
            )

    def plain() -> float:
        return timed(lambda: results.__setitem__("plain", plain_loop(x, y, hparams, EPOCHS)))

    torch.set_num_threads(torch.get_num_threads())
    m, b, samples = median_pair(config.reps, lightning, plain)
    module = results["lightning"][0].model.state_dict()
    baseline_state = results["plain"].state_dict()
    same = all(torch.equal(module[k], baseline_state[k]) for k in baseline_state)
    steps = EPOCHS * ((rows + spec.model.batch_size - 1) // spec.model.batch_size)
    return [
        Figure(
            name=f"Lightning fit vs plain PyTorch loop, {rows:,} rows x 30, {EPOCHS} epochs",
            measured=m,
            baseline=b,
            budget=1.10,
            detail=f"{steps} steps of {spec.model.batch_size}; weights bit-identical: {same}; "
            f"overhead {(m - b) / steps * 1e3:.2f} ms/step",
            samples=samples,
        )
    ]
