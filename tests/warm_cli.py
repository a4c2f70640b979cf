"""``python -m pipelines …`` as a child forked from an interpreter that already imported the stack.

A CLI process spends most of a short command importing Great Expectations,
torch, Lightning, DVC, Optuna and scikit-learn: 22.5 s (19.4 CPU-s) on the
2-core CI machines (``python -c "import pipelines.cli, great_expectations,
pytorch_lightning, dvc.repo, optuna, sklearn, ..."``), often more than the
command itself.  The CLI, state and reliability tiers start many of them.

`run` starts each command in its own process forked from a server that did
those imports once (``multiprocessing``'s forkserver, one per test process):
its own pid, environment, working directory, argv, stdin, stdout, stderr and
exit status, ``__main__`` run by ``runpy`` as ``python -m`` does, and atexit
handlers run at the end.  What the fork shares with the server is only what
importing those libraries left in memory.  Two things differ from a fresh
interpreter, so tests that depend on them use real subprocesses (``fresh=True``
in `tests.integration.conftest.Cli`):

* the import itself (an import-time failure, a module reading the environment
  at import), checked by the CLI tests that start ``python -m pipelines``;
* str hashing: every child shares the server's hash secret, so a result that
  depended on set order would look reproducible across two forked runs.  The
  tests that compare two runs' model versions start at least one of them fresh.

Airflow is never preloaded: it reads ``AIRFLOW_HOME`` and its configuration at
import.  ``python -m pipelines.orchestration`` (`make run`'s path) is forked all the
same: the child imports Airflow after the fork, with its own environment, and its
tasks find the stack already imported, as the embedded executor's workers do.
"""

from __future__ import annotations

import atexit
import gc
import io
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

#: What a ``run`` of the pipelines imports (lazily, inside the stages), heaviest first.
PRELOAD = (
    "great_expectations",
    "pytorch_lightning",
    "torch",
    "dvc.repo",
    "dvc.api",
    "optuna",
    "sklearn.metrics",
    "scipy.stats",
    "s3fs",  # Lightning imports it on every fit (its object-storage check), as does state on S3
    "onnx",
    "onnxruntime",
    "pyarrow.parquet",
    "pandas",
    "sqlalchemy",
    "jinja2",
    "pipelines.cli",
    "pipelines.stages",
)


#: The ``python -m`` commands `run` forks: the CLI, and `make run`'s Airflow path.
MODULES = ("pipelines", "pipelines.orchestration")
#: ``__name__`` of this file when a forked child runs it (`run`).
_CHILD = "warm_cli_child"
#: ``TESTS_FRESH_PROCESSES=1`` starts every command as a real subprocess (to compare, or to rule the fork out).
FRESH_ENV = "TESTS_FRESH_PROCESSES"


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


_CONTEXT = _context()


def run(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path | str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)``, forked warm.

    ``argv`` is ``[sys.executable, "-m", MODULE, ...]`` (MODULE one of `MODULES`) or
    ``[sys.executable, script.py, ...]``; anything else runs as a real subprocess.
    """
    argv = list(argv)
    if _target(argv) is None:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    process = start(argv, env=env, cwd=cwd)
    out, err = process.communicate(timeout=timeout)
    assert process.returncode is not None
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def start(argv: Sequence[str], *, env: dict[str, str], cwd: Path | str) -> WarmProcess | subprocess.Popen[str]:
    """``subprocess.Popen(argv, env=env, cwd=cwd, stdout=PIPE, stderr=PIPE, text=True)``, forked warm (see `run`)."""
    argv = list(argv)
    target = _target(argv)
    if target is None:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return WarmProcess(argv, target, env=env, cwd=cwd)


class WarmProcess:
    """A forked command, with the part of `subprocess.Popen`'s interface the tests use."""

    def __init__(self, argv: list[str], target: tuple[str, str], *, env: dict[str, str], cwd: Path | str) -> None:
        self.args = argv
        self._folder = tempfile.TemporaryDirectory(prefix="warm-cli-")
        self._out, self._err = Path(self._folder.name) / "stdout", Path(self._folder.name) / "stderr"
        request = {
            "target": target,
            "args": argv[3:] if target[0] == "module" else argv[2:],
            "env": dict(env),
            "cwd": str(cwd),
            "out": str(self._out),
            "err": str(self._err),
        }
        # The child runs this very file (the forkserver cannot import the test tree by module name).
        self._child = _CONTEXT.Process(
            target=runpy.run_path, args=(__file__,), kwargs={"init_globals": {"REQUEST": request}, "run_name": _CHILD}
        )
        self._child.start()
        assert self._child.pid is not None
        self.pid: int = self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.exitcode

    def poll(self) -> int | None:
        return self._child.exitcode

    def kill(self) -> None:
        self._child.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the exit (killing the child after ``timeout``, then raising, as `subprocess.run` does)."""
        try:
            self._child.join(timeout)
            if self._child.exitcode is None:
                self._child.kill()
                self._child.join()
                raise subprocess.TimeoutExpired(self.args, timeout or 0, _read(self._out), _read(self._err))
            return _read(self._out), _read(self._err)
        finally:
            self._folder.cleanup()


def _target(argv: list[str]) -> tuple[str, str] | None:
    if os.environ.get(FRESH_ENV) == "1" or len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] == "-m" and len(argv) >= 3 and argv[2] in MODULES:
        return ("module", argv[2])
    if argv[1].endswith(".py") and not argv[1].startswith("-"):
        return ("path", argv[1])
    return None


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _child(*, target: tuple[str, str], args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked child: become ``python -m pipelines ARGS`` (or ``python SCRIPT ARGS``), then exit."""
    # What the server imported stays out of this child's collections (its pages stay shared, never
    # walked or copied), as the product's worker preloading does (pipelines/orchestration/worker_preload.py).
    gc.freeze()
    # Titled with the command it becomes, as ``ps`` and `make test-profile`'s largest processes show
    # it, not with the forkserver's command line a fork keeps.  Before the environment is replaced:
    # setproctitle (an Airflow dependency) finds the memory it rewrites through the original one.
    from setproctitle import setproctitle

    command = [target[1]] if target[0] == "path" else ["-m", target[1]]
    setproctitle(" ".join([sys.executable, *command, *args]))
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(sink, fd)
        os.close(sink)
    sys.stdout = _text_stream(1)
    sys.stderr = _text_stream(2)
    kind, name = target
    code = 0
    try:
        if kind == "module":
            sys.argv = [name, *args]  # runpy puts the module's file first, as ``-m`` does
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [name, *args]
            sys.path.insert(0, str(Path(name).resolve().parent))  # as `python script.py` puts its folder first
            runpy.run_path(name, run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends a child with os._exit, which skips them
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message"): printed, status 1
    return 1


def _text_stream(fd: int) -> io.TextIOWrapper:
    # PYTHONUNBUFFERED (set for the suite) makes the real streams write through; so do these.
    return io.TextIOWrapper(
        open(fd, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )


if __name__ == _CHILD:
    _child(**globals()["REQUEST"])
