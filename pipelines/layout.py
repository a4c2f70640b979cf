"""Where every artefact lives under the data root (``PIPELINES_HOME``).

::

    <home>/
      warehouse.db                          embedded demo source (``seed``)
      registry.db                           model registry (SQLite default)
      data/<vertical>/raw/<ds>.parquet      one extracted day, as pulled
      data/<vertical>/validated/<ds>.parquet  days that passed the suite
      data/<vertical>/quarantine/<ds>.parquet  days that failed, kept for triage
      dvc/<vertical>/                       one git+DVC repo per vertical (no shared lock)
      dvc-remote/                           DVC remote (content addressed, shared)
      models/<vertical>/<model_version>/    trained artefacts (weights, preprocessing)
      checkpoints/<vertical>/<model_version>/  Lightning checkpoints for resume
      runs/<vertical>/<ds>/<stage>.json     each stage's record (what the next one reads)
      reports/<vertical>/<ds>/              quality report, data docs, run summary
      gx/                                   Great Expectations project (data docs site)
      bucket/                               deployment bucket (``file://`` default)
      outbox/                               emails when no SMTP is configured

Stages exchange only these paths and small JSON records, so each stage can run
in its own process (an Airflow task, a CLI call, a ``dvc repro`` stage).  With
``PIPELINES_STATE_URL`` set, the same tree lives under that URL and ``<home>`` is
only this worker's scratch copy (`pipelines.state`): records are read from and
written to the state store directly, and the stages pull and push the files
they read and write.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import StageOrderError
from pipelines.state import StateStore, open_state


@dataclass(frozen=True)
class Layout:
    settings: Settings
    vertical: str

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def state(self) -> StateStore:
        """Where the files below are shared between workers (the home folder itself by default)."""
        return open_state(self.settings)

    def raw(self, ds: str) -> Path:
        return self.home / "data" / self.vertical / "raw" / f"{ds}.parquet"

    def validated(self, ds: str) -> Path:
        return self.home / "data" / self.vertical / "validated" / f"{ds}.parquet"

    def quarantine(self, ds: str) -> Path:
        return self.home / "data" / self.vertical / "quarantine" / f"{ds}.parquet"

    @property
    def dvc_repo(self) -> Path:
        return self.home / "dvc" / self.vertical

    def model_dir(self, model_version: str) -> Path:
        return self.home / "models" / self.vertical / model_version

    def checkpoint_dir(self, model_version: str) -> Path:
        return self.home / "checkpoints" / self.vertical / model_version

    def run_dir(self, ds: str) -> Path:
        return self.home / "runs" / self.vertical / ds

    def report_dir(self, ds: str) -> Path:
        return self.home / "reports" / self.vertical / ds

    @property
    def latest_report_dir(self) -> Path:
        """Stable path of the newest report (what ``dvc metrics`` reads)."""
        return self.home / "reports" / self.vertical / "latest"

    # -- stage records -------------------------------------------------------

    def record_path(self, ds: str, stage: str) -> Path:
        return self.run_dir(ds) / f"{stage}.json"

    def write_record(self, ds: str, stage: str, record: dict[str, Any]) -> Path:
        path = self.record_path(ds, stage)
        write_json_atomic(path, record)
        self.state.push(path)
        return path

    def read_record(self, ds: str, stage: str, *, needed_by: str) -> dict[str, Any]:
        path = self.record_path(ds, stage)
        if not self.state.is_home:
            # Always the shared copy: another worker may have rewritten it since this one cached it.
            path.unlink(missing_ok=True)
            self.state.pull(path)
        if not path.exists():
            raise StageOrderError(
                f"stage {needed_by!r} needs the {stage!r} record at {self.state.uri(path)}; "
                f"run `python -m pipelines {stage} {self.vertical} --date {ds}` first",
                vertical=self.vertical,
                ds=ds,
            )
        return json.loads(path.read_text())

    def has_record(self, ds: str, stage: str) -> bool:
        return self.state.exists(self.record_path(ds, stage))

    def clear_records(self, ds: str, stages: list[str]) -> None:
        for stage in stages:
            self.state.remove(self.record_path(ds, stage))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())
