"""``python -m pipelines …`` with one fault armed: the process SIGKILLs itself at a named point.

Run as ``python tests/reliability/_fault_runner.py <fault> <pipelines args…>``, or
``… <fault> orchestration <args…>`` for ``python -m pipelines.orchestration`` (`make run`).
The kill is ``SIGKILL`` sent to itself, so nothing gets to clean up (no
``finally``, no ``atexit``), exactly like a worker lost to the OOM killer or a
pulled plug; and it lands at a point reached deterministically, not after a
sleep.  Faults:

``train-epoch:N``
    right after Lightning saved the checkpoint of epoch N (1-based).
``interrupt-epoch:N``
    not a kill: ``SIGINT`` to itself at the same point, what Ctrl-C at the
    console sends the foreground process.
``before-pointer``
    when the deploy is about to replace ``production.json`` (the version
    folder is uploaded and verified; production has not moved).
``after-pointer``
    right after ``production.json`` was replaced, before anything else runs
    (the registry has not yet recorded the deployment).

The pointer faults hook ``os.replace`` (how the ``file://`` bucket writes the
pointer atomically), so they hold whatever the deploy protocol does around
the pointer flip.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

POINTER_FILE = "production.json"


def _die() -> None:
    sys.stderr.write(f"fault runner: SIGKILL at {sys.argv[1]}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _interrupt() -> None:
    sys.stderr.write(f"fault runner: SIGINT at {sys.argv[1]}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGINT)


def _arm_training_kill(epoch: int, act: Callable[[], None] = _die) -> None:
    from pytorch_lightning.callbacks import ModelCheckpoint

    original = ModelCheckpoint.on_train_epoch_end

    def on_train_epoch_end(self: Any, trainer: Any, pl_module: Any) -> None:
        original(self, trainer, pl_module)  # last.ckpt for this epoch is on disk now
        if trainer.current_epoch + 1 >= epoch:
            act()

    ModelCheckpoint.on_train_epoch_end = on_train_epoch_end  # type: ignore[method-assign]


def _arm_pointer_kill(after: bool) -> None:
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fspath(dst)) != POINTER_FILE:
            real_replace(src, dst, *args, **kwargs)
            return
        if not after:
            _die()
        real_replace(src, dst, *args, **kwargs)
        _die()

    os.replace = replace


def main() -> int:
    fault, args = sys.argv[1], sys.argv[2:]
    if fault.startswith("train-epoch:"):
        _arm_training_kill(int(fault.split(":", 1)[1]))
    elif fault.startswith("interrupt-epoch:"):
        # Ctrl-C's default action, whatever the launching shell left (a background job ignores SIGINT).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _arm_training_kill(int(fault.split(":", 1)[1]), act=_interrupt)
    elif fault in ("before-pointer", "after-pointer"):
        _arm_pointer_kill(after=fault == "after-pointer")
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    if args[:1] == ["orchestration"]:
        from pipelines.orchestration.__main__ import main as orchestration_main

        return orchestration_main(args[1:])
    from pipelines.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
