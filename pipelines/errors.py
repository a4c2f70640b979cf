"""One error hierarchy for every stage.

Messages name the vertical, the logical date and what to do, so an alert or a
CLI error is actionable without reading a traceback.

Each class says whether a retry can help (``retryable``): a fault of something
outside the run (a source, the bucket, the registry database, DVC's remote,
another run holding the vertical) may be gone a few minutes later; a bad spec,
bad data, a training split that cannot be trained on or a stage run out of
order are the same on every try. The orchestration layer retries only the
first kind (`pipelines.orchestration.tasks.run_stage`).
"""

from __future__ import annotations

from typing import ClassVar


class PipelineError(Exception):
    """Base class: every failure the pipeline raises on purpose."""

    #: Exit code the CLI uses for this kind of failure.
    exit_code: int = 1
    #: Whether retrying the same stage later can succeed. Raised as the base class it is a
    #: broken invariant (a schema mismatch, a programming error): the same on every try.
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, vertical: str | None = None, ds: str | None = None) -> None:
        self.vertical = vertical
        self.ds = ds
        where = ", ".join(p for p in (vertical, ds) if p)
        super().__init__(f"[{where}] {message}" if where else message)


class SpecError(PipelineError):
    """A vertical spec or a suite file is missing or invalid."""

    exit_code = 2
    retryable = False


class InvalidArgumentError(PipelineError):
    """A command-line argument, DAG param or trigger conf is out of range (a date before the data, ...)."""

    exit_code = 2
    retryable = False


class SourceError(PipelineError):
    """The vertical's source is unreachable or returned unusable data."""

    exit_code = 3
    retryable = True  # a source that is down comes back; a late delivery arrives


class DataQualityError(PipelineError):
    """A Great Expectations suite failed; the partition was quarantined."""

    exit_code = 4
    retryable = False  # the same rows fail the same checks

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
    retryable = True  # DVC's remote or lock is a shared, external resource


class TrainingError(PipelineError):
    """Training could not produce a model (bad window, diverged, ...)."""

    exit_code = 6
    retryable = False  # same data, spec and seed: the same split, the same failure


class DeployError(PipelineError):
    """The deployment bucket refused a write, or an artefact failed verification."""

    exit_code = 7
    retryable = True  # the bucket refusing or failing a write is the common case; a rerun redeploys


class StageOrderError(PipelineError):
    """A stage ran before the stage it depends on produced its record."""

    exit_code = 8
    retryable = False  # the earlier stage has to run first; retrying this one cannot


class RegistryError(PipelineError):
    """The model registry database could not be read or written (down, locked, wrong URL or schema)."""

    exit_code = 9
    retryable = True  # the database can be down or locked for a moment


class ReproductionError(PipelineError):
    """A rebuild from a deployed version's lineage did not give its weights, or could not be attempted."""

    exit_code = 10
    retryable = False  # the same recorded inputs and environment give the same answer


class RunAlreadyActive(PipelineError):
    """Another run of the same vertical holds its run lease (see `pipelines.registry.run_lock`).

    Exit code 75 is ``EX_TEMPFAIL`` (sysexits.h): nothing is wrong with the
    request, it can simply be retried once the other run has finished.
    """

    exit_code = 75
    retryable = True  # the other run finishes
