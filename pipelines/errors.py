"""One error hierarchy for every stage.

Messages name the vertical, the logical date and what to do, so an alert or a
CLI error is actionable without reading a traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: every failure the pipeline raises on purpose."""

    #: Exit code the CLI uses for this kind of failure.
    exit_code: int = 1

    def __init__(self, message: str, *, vertical: str | None = None, ds: str | None = None) -> None:
        self.vertical = vertical
        self.ds = ds
        where = ", ".join(p for p in (vertical, ds) if p)
        super().__init__(f"[{where}] {message}" if where else message)


class SpecError(PipelineError):
    """A vertical spec or a suite file is missing or invalid."""

    exit_code = 2


class InvalidArgumentError(PipelineError):
    """A command-line argument, DAG param or trigger conf is out of range (a date before the data, ...)."""

    exit_code = 2


class SourceError(PipelineError):
    """The vertical's source is unreachable or returned unusable data."""

    exit_code = 3


class DataQualityError(PipelineError):
    """A Great Expectations suite failed; the partition was quarantined."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        vertical: str | None = None,
        ds: str | None = None,
        report_path: str | None = None,
    ) -> None:
        super().__init__(message, vertical=vertical, ds=ds)
        self.report_path = report_path


class VersioningError(PipelineError):
    """DVC could not version, push or read a data snapshot."""

    exit_code = 5


class TrainingError(PipelineError):
    """Training could not produce a model (bad window, diverged, ...)."""

    exit_code = 6


class DeployError(PipelineError):
    """The deployment bucket refused a write, or an artefact failed verification."""

    exit_code = 7


class StageOrderError(PipelineError):
    """A stage ran before the stage it depends on produced its record."""

    exit_code = 8


class RegistryError(PipelineError):
    """The model registry database could not be read or written (down, locked, wrong URL or schema)."""

    exit_code = 9


class RunAlreadyActive(PipelineError):
    """Another run of the same vertical holds its run lease (see `pipelines.registry.run_lock`).

    Exit code 75 is ``EX_TEMPFAIL`` (sysexits.h): nothing is wrong with the
    request, it can simply be retried once the other run has finished.
    """

    exit_code = 75
