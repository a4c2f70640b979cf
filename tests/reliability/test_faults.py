"""Fault injection: every fault leaves production whole and a rerun finishes the job.

Each test injects one fault into a real run (SIGKILL at a point reached
deterministically, a database or relay on a closed port, a corrupted object
in the bucket, a full disk) and checks what a user relies on: the error says
what broke, production is the old model or the new one (never half of
either), nothing valid is lost, and a rerun ends with the same versions and
no duplicate registry rows or bucket versions.

The kills go through ``_fault_runner.py``, which runs ``python -m pipelines``
and SIGKILLs itself at the named point (no cleanup code gets to run).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from pipelines import stages
from pipelines.config import PROJECT_ROOT, Settings

from .. import warm_cli
from ..conftest import short_window_specs

VERTICAL = "finance"
DS = "2026-11-27"
BAD_DS = "2026-11-28"
RUNNER = Path(__file__).with_name("_fault_runner.py")
STAGES_TO_GATE = ("extract", "validate", "snapshot", "train", "evaluate", "gate")


# -- fixtures ---------------------------------------------------------------------------------


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PIPELINES_HOME"] = str(home)
    if "PIPELINES_SPECS_DIR" in os.environ:  # the gated home's specs (`_two_trial_specs`)
        env["PIPELINES_SPECS_DIR"] = os.environ["PIPELINES_SPECS_DIR"]
    env.update(extra)
    return env


def _two_trial_specs(home: Path) -> Path:
    """The repo's specs with finance sweeping 2 trials instead of 12, beside ``home``.

    The faults are about what a kill or an outage leaves behind, not the model's
    quality: a 2-trial sweep writes the same study, records and checkpoints at a
    fraction of the first run's cost.
    """
    import yaml

    tuning = yaml.safe_load((PROJECT_ROOT / "verticals" / f"{VERTICAL}.yaml").read_text())["model"]["tuning"]
    return short_window_specs(home.parent / "specs", VERTICAL, model={"tuning": {**tuning, "trials": 2}})


@pytest.fixture(scope="module")
def gated_home(tmp_path_factory: pytest.TempPathFactory, seeded_warehouse: Path) -> Path:
    """A data root where finance ran extract..gate for DS (approved, nothing deployed yet), with `_two_trial_specs`."""
    home = tmp_path_factory.mktemp("gated") / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("PIPELINES_", "AIRFLOW_CONN_")):
                mp.delenv(name)
        mp.setenv("PIPELINES_HOME", str(home))
        mp.setenv("PIPELINES_SPECS_DIR", str(_two_trial_specs(home)))
        for stage in STAGES_TO_GATE:
            getattr(stages, stage)(VERTICAL, DS)
    gate = json.loads((home / "runs" / VERTICAL / DS / "gate.json").read_text())
    assert gate["approved"], gate
    return home


@pytest.fixture
def home(gated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the gated data root; the environment points at it (and at its specs)."""
    home = tmp_path / "state"
    shutil.copytree(gated_home, home, symlinks=True)
    for name in list(os.environ):
        if name.startswith(("PIPELINES_", "AIRFLOW_CONN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(gated_home.parent / "specs"))
    return home


def _settings() -> Settings:
    return Settings.from_env()


def _record(home: Path, stage: str, ds: str = DS) -> dict[str, Any]:
    return dict(json.loads((home / "runs" / VERTICAL / ds / f"{stage}.json").read_text()))


def _pipelines(
    home: Path, *args: str, fault: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m pipelines ARGS`` in its own process (`tests.warm_cli`); with ``fault``, through the fault runner."""
    command = [sys.executable, str(RUNNER), fault] if fault else [sys.executable, "-m", "pipelines"]
    return warm_cli.run([*command, *args], cwd=PROJECT_ROOT, env=_clean_env(home, **(env or {})), timeout=600)


def _pipelines_here(*args: str) -> tuple[int, str]:
    """``main(ARGS)`` of ``python -m pipelines`` in this process: (exit code, stdout).

    For the checks and follow-up reruns around a fault; every fault itself runs in
    a real process (``_pipelines``), as does at least one rerun of each kind.
    """
    from pipelines.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _deployments(settings: Settings, model_version: str) -> list[Any]:
    from pipelines.registry.store import Registry

    return [
        d
        for d in Registry.from_settings(settings).deployments(VERTICAL, limit=1000)
        if d.model_version == model_version and d.action == "deploy"
    ]


def _assert_consistent(home: Path, model_version: str) -> None:
    """Pointer, bucket, registry, status and the serving loader all name ``model_version``, once."""
    from pipelines.registry.store import Registry
    from pipelines.release.bucket import list_versions, read_pointer, verify_version
    from pipelines.release.serving import load_production

    settings = _settings()
    pointer = read_pointer(settings.bucket_url, VERTICAL)
    assert pointer is not None and pointer["version"] == model_version
    verify_version(settings.bucket_url, VERTICAL, model_version)
    assert list_versions(settings.bucket_url, VERTICAL) == [model_version], "a second bucket version appeared"
    champion = Registry.from_settings(settings).champion(VERTICAL)
    assert champion is not None and champion.model_version == model_version
    assert len(_deployments(settings, model_version)) == 1, "the deployment was recorded twice"
    # `status --json` in this process (the faults themselves run as real processes, and
    # test_corrupt_weights... runs `status` as one): no interpreter start per check.
    code, out = _pipelines_here("status", "--json")
    assert code == 0
    row = next(r for r in json.loads(out) if r["vertical"] == VERTICAL)
    assert row["champion"]["model_version"] == model_version
    assert {k: row["production"][k] for k in ("version", "ok", "problem")} == {
        "version": model_version,
        "ok": True,
        "problem": None,
    }
    assert load_production(VERTICAL, bucket_url=settings.bucket_url).version == model_version


def _killed(proc: subprocess.CompletedProcess[str], fault: str) -> None:
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL at {fault}, got {proc.returncode}:\n{proc.stderr}"
    assert f"SIGKILL at {fault}" in proc.stderr


# -- 1. kill -9 during training ----------------------------------------------------------------


@pytest.mark.slow
def test_kill_during_training_resumes_to_the_same_model_version_and_weights(home: Path, gated_home: Path):
    """A worker lost mid-fit: the retry resumes from last.ckpt and ends bit-identical to an unkilled run."""
    from pipelines.registry.store import Registry

    clean = _record(gated_home, "train")
    version = clean["model_version"]
    # Only the data is prepared: no model, no checkpoint, no train record.
    shutil.rmtree(home / "models")
    shutil.rmtree(home / "checkpoints", ignore_errors=True)
    for stage in ("train", "evaluate", "gate"):
        (home / "runs" / VERTICAL / DS / f"{stage}.json").unlink()

    killed = _pipelines(home, "train", VERTICAL, "--date", DS, fault="train-epoch:3")
    _killed(killed, "train-epoch:3")
    assert (home / "checkpoints" / VERTICAL / version / "last.ckpt").is_file()
    assert not (home / "models" / VERTICAL / version / "model.json").exists(), "the kill came after the fit"

    rerun = _pipelines(home, "train", VERTICAL, "--date", DS)  # the task's retry
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trained = _record(home, "train")
    assert trained["model_version"] == version
    assert trained["resumed_from_checkpoint"] is True
    resumed = (home / "models" / VERTICAL / version / "weights.pt").read_bytes()
    assert resumed == (gated_home / "models" / VERTICAL / version / "weights.pt").read_bytes()
    models = Registry.from_settings(_settings()).models(VERTICAL, limit=1000)
    assert [m.model_version for m in models] == [version], "the retry registered a second model"


# -- 2, 3. kill -9 during deploy ----------------------------------------------------------------


@pytest.mark.slow
def test_kill_between_upload_and_pointer_flip_keeps_production_and_a_rerun_completes(home: Path):
    from pipelines.registry.store import Registry
    from pipelines.release.bucket import list_versions, read_pointer, verify_version

    version = _record(home, "gate")["model_version"]
    killed = _pipelines(home, "deploy", VERTICAL, "--date", DS, fault="before-pointer")
    _killed(killed, "before-pointer")

    settings = _settings()
    assert read_pointer(settings.bucket_url, VERTICAL) is None, "production moved before the kill"
    assert Registry.from_settings(settings).champion(VERTICAL) is None
    # What was uploaded is complete and verified, ready for the rerun to point at.
    assert list_versions(settings.bucket_url, VERTICAL) == [version]
    verify_version(settings.bucket_url, VERTICAL, version)

    rerun = _pipelines(home, "deploy", VERTICAL, "--date", DS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _record(home, "deploy")["model_version"] == version
    _assert_consistent(home, version)


@pytest.mark.slow
def test_kill_between_pointer_flip_and_registry_write_is_repaired_by_a_rerun(home: Path):
    from pipelines.release.bucket import read_pointer
    from pipelines.release.serving import check_production

    version = _record(home, "gate")["model_version"]
    killed = _pipelines(home, "deploy", VERTICAL, "--date", DS, fault="after-pointer")
    _killed(killed, "after-pointer")

    settings = _settings()
    pointer = read_pointer(settings.bucket_url, VERTICAL)
    # The pointer moved last, so it names a complete, verified version (never a half-written one).
    assert pointer is not None and pointer["version"] == version
    assert check_production(VERTICAL, bucket_url=settings.bucket_url) == {
        "version": version,
        "ok": True,
        "problem": None,
    }

    rerun = _pipelines(home, "deploy", VERTICAL, "--date", DS)  # a rerun (a new process) repairs the registry
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_consistent(home, version)
    assert _pipelines_here("deploy", VERTICAL, "--date", DS)[0] == 0  # a second one changes nothing
    _assert_consistent(home, version)


# -- 4. registry unavailable --------------------------------------------------------------------


@pytest.mark.slow
def test_registry_unavailable_fails_deploy_cleanly_before_production_changes(home: Path):
    from pipelines.release.bucket import list_versions, read_pointer

    down = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test"
    proc = _pipelines(home, "deploy", VERTICAL, "--date", DS, env={"PIPELINES_REGISTRY_URL": down})
    assert proc.returncode != 0
    settings = _settings()
    assert read_pointer(settings.bucket_url, VERTICAL) is None, "production moved although the registry was down"
    assert list_versions(settings.bucket_url, VERTICAL) == []
    assert "Traceback" not in proc.stderr and proc.returncode == 9, proc.stderr  # RegistryError, one line
    assert "registry" in proc.stderr.lower()

    assert _pipelines_here("deploy", VERTICAL, "--date", DS)[0] == 0  # the rerun, once the registry is back
    _assert_consistent(home, _record(home, "gate")["model_version"])


# -- 5, 6. SMTP down ------------------------------------------------------------------------------


def _message(subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["To"] = "owner@example.com"
    message.set_content(body)
    return message


def _smtp_down(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": _closed_port(),
        "extra": {"disable_ssl": True, "disable_tls": True},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))


def test_smtp_down_keeps_the_alert_and_the_next_delivery_sends_it_exactly_once(settings, smtp_server, monkeypatch):
    from pipelines.notify.alerts import AlertDeliveryError, deliver, flush_undelivered, undelivered

    relay = os.environ["AIRFLOW_CONN_SMTP_DEFAULT"]
    _smtp_down(monkeypatch)
    with pytest.raises(AlertDeliveryError, match=r"kept at .*undelivered") as caught:
        deliver(_message("first", "the relay was down"), settings, dedupe_key="finance-x-quality")
    assert isinstance(caught.value, OSError)  # callers that treat a failed send as an I/O fault keep doing so
    assert len(undelivered(settings)) == 1
    # A retried task while the relay is still down: queued once, not twice.
    with pytest.raises(AlertDeliveryError):
        deliver(_message("first", "the relay was down"), settings, dedupe_key="finance-x-quality")
    assert len(undelivered(settings)) == 1
    # Without any relay configured there is nothing to flush through: said, and nothing dropped.
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT")
    with pytest.raises(AlertDeliveryError, match="no SMTP relay is configured"):
        flush_undelivered(settings)
    assert len(undelivered(settings)) == 1

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", relay)
    deliver(_message("second", "relay is back"), settings, dedupe_key="finance-y-report")
    assert [m["Subject"] for m in smtp_server.messages] == ["first", "second"]
    assert undelivered(settings) == []

    # The retried task itself sends the queued message: it goes out once, not twice.
    _smtp_down(monkeypatch)
    with pytest.raises(AlertDeliveryError):
        deliver(_message("third", "retried task"), settings, dedupe_key="finance-z-report")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", relay)
    deliver(_message("third", "retried task"), settings, dedupe_key="finance-z-report")
    assert [m["Subject"] for m in smtp_server.messages] == ["first", "second", "third"]
    assert undelivered(settings) == []
    # The task retried after the outage: the first alert went out already, so nothing more is sent.
    deliver(_message("first", "the relay was down"), settings, dedupe_key="finance-x-quality")
    deliver(_message("second", "relay is back"), settings, dedupe_key="finance-y-report")
    assert [m["Subject"] for m in smtp_server.messages] == ["first", "second", "third"]
    assert "the relay was down" in smtp_server.messages[0].get_content()


@pytest.mark.slow
def test_smtp_down_during_a_data_quality_failure_the_alert_is_flushed_later(home: Path, smtp_server, monkeypatch):
    """The run still stops on bad data; the alert waits in the outbox and `alerts flush` sends it once."""
    from pipelines.errors import DataQualityError

    relay = os.environ["AIRFLOW_CONN_SMTP_DEFAULT"]
    with sqlite3.connect(home / "warehouse.db") as db:
        db.execute("update finance_loans set age = -3 where event_date = ?", (BAD_DS,))
    _smtp_down(monkeypatch)
    stages.extract(VERTICAL, BAD_DS)
    with pytest.raises(DataQualityError, match="NOT SENT"):
        stages.validate(VERTICAL, BAD_DS)
    assert "undelivered" in _record(home, "validate", BAD_DS)["alert"]
    assert smtp_server.messages == []

    still_down = _pipelines(
        home, "alerts", "flush", env={"AIRFLOW_CONN_SMTP_DEFAULT": os.environ["AIRFLOW_CONN_SMTP_DEFAULT"]}
    )
    assert still_down.returncode == 1 and "1 still queued" in still_down.stdout
    pending = _pipelines(home, "alerts", "pending")
    assert pending.returncode == 0 and len(pending.stdout.splitlines()) == 1

    for _ in range(2):  # the second flush finds nothing left to send
        flushed = _pipelines(home, "alerts", "flush", env={"AIRFLOW_CONN_SMTP_DEFAULT": relay})
        assert flushed.returncode == 0, flushed.stderr
    assert len(smtp_server.messages) == 1
    alert = smtp_server.messages[0]
    assert f"[data quality] {VERTICAL} {BAD_DS}" in alert["Subject"]
    assert "expect_column_values_to_be_between" in alert.get_body(("plain",)).get_content()
    # A rerun of validate once the relay is back does not mail the same alert again.
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", relay)
    with pytest.raises(DataQualityError):
        stages.validate(VERTICAL, BAD_DS)
    assert len(smtp_server.messages) == 1


# -- 7. bucket unreachable ------------------------------------------------------------------------


@pytest.mark.slow
def test_bucket_unreachable_is_a_deploy_error_naming_the_url_and_production_is_unchanged(home: Path, monkeypatch):
    from pipelines.errors import DeployError
    from pipelines.registry.store import Registry

    url = "s3://models-unreachable/prod"
    monkeypatch.setenv("PIPELINES_BUCKET_URL", url)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKFAULTS",
        "AWS_SECRET_ACCESS_KEY": "faults-secret",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    import s3fs

    # fsspec caches one S3 filesystem per set of options: an earlier test's (live SeaweedFS) must not answer.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(DeployError, match=url) as caught:
            stages.deploy(VERTICAL, DS)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # nor may this one (a closed port) answer a later test
    assert caught.value.exit_code == 7
    assert "PIPELINES_BUCKET_URL" in str(caught.value)
    assert Registry.from_settings(_settings()).champion(VERTICAL) is None
    assert not (home / "runs" / VERTICAL / DS / "deploy.json").exists()


# -- 8, 9. source database down -------------------------------------------------------------------


def _source_down(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"postgresql://reader@127.0.0.1:{_closed_port()}/warehouse"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", url)
    return url


@pytest.mark.slow
def test_source_down_is_a_source_error_and_stored_partitions_are_untouched(home: Path, monkeypatch):
    from pipelines.errors import SourceError
    from pipelines.layout import Layout

    layout = Layout(_settings(), VERTICAL)
    validated = {p.name: p.read_bytes() for p in layout.validated(DS).parent.iterdir()}
    _source_down(monkeypatch)
    with pytest.raises(SourceError, match=r"warehouse_default.*unreachable") as caught:
        stages.extract(VERTICAL, "2026-11-29")
    assert caught.value.exit_code == 3
    assert "AIRFLOW_CONN_WAREHOUSE_DEFAULT" in str(caught.value)
    assert {p.name: p.read_bytes() for p in layout.validated(DS).parent.iterdir()} == validated
    assert not layout.raw("2026-11-29").exists()


@pytest.mark.airflow
def test_source_down_in_airflow_is_retried_with_backoff_and_mails_once(settings, tmp_path, monkeypatch):
    """A real down source fails extract as a retryable fault; only the last try's failure callback mails."""
    if "airflow" not in sys.modules:  # Airflow reads its home once, at first import: keep it throw-away
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
        monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.sdk.exceptions import AirflowException

    from pipelines.errors import SourceError
    from pipelines.orchestration.dag_factory import build_vertical_dag
    from pipelines.orchestration.notifiers import FailureNotifier
    from pipelines.orchestration.tasks import FAILURE_RECORD, run_stage

    _source_down(monkeypatch)
    context = {"logical_date": datetime(2026, 11, 29, tzinfo=UTC), "run_id": "scheduled__faults", "params": {}}
    with pytest.raises(SourceError, match="unreachable") as caught:
        run_stage("extract", VERTICAL, context)
    # Not an AirflowFailException: Airflow retries it instead of failing the run at once.
    assert not isinstance(caught.value, AirflowException)
    assert (settings.home / "runs" / VERTICAL / "2026-11-29" / f"{FAILURE_RECORD}.json").exists()
    task = build_vertical_dag(VERTICAL).get_task("extract")
    assert task.retries >= 1 and task.retry_exponential_backoff > 1
    assert not task.on_retry_callback, "a retry must not mail the owners"
    notifiers = [c for c in task.on_failure_callback if isinstance(c, FailureNotifier)]
    assert len(notifiers) == 1  # fires once, after the last retry


# -- 10. corrupt artefact in the bucket -----------------------------------------------------------


@pytest.mark.slow
def test_corrupt_weights_in_the_bucket_are_refused_by_the_loader_and_shown_by_status(home: Path):
    from pipelines.errors import DeployError
    from pipelines.release.bucket import Bucket
    from pipelines.release.serving import load_production

    stages.deploy(VERTICAL, DS)
    settings = _settings()
    version = _record(home, "deploy")["model_version"]
    bucket = Bucket.open(settings.bucket_url)
    weights = Path(bucket.version(VERTICAL, version)) / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))

    with pytest.raises(DeployError, match=r"weights.pt.*expected sha256.*refusing"):
        load_production(VERTICAL, bucket_url=settings.bucket_url, cache_dir=home / "fresh-cache")
    status = _pipelines(home, "status", "--json")
    row = next(r for r in json.loads(status.stdout) if r["vertical"] == VERTICAL)
    assert row["production"]["version"] == version and row["production"]["ok"] is False
    assert "weights.pt" in row["production"]["problem"]
    text = _pipelines(home, "status")
    assert f"PRODUCTION BROKEN ({version})" in text.stdout


# -- 11, 12. disk full while writing a partition ----------------------------------------------------


class _FullDisk:
    """A file object that writes part of the data, then fails as a full disk does."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        self._fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _assert_nothing_half_written(home: Path, validated_before: dict[str, bytes]) -> None:
    from pipelines.layout import Layout

    layout = Layout(_settings(), VERTICAL)
    raw_dir = layout.raw(DS).parent
    assert not layout.raw(DS).exists()
    assert list(raw_dir.iterdir()) == [], f"leftovers: {list(raw_dir.iterdir())}"
    assert {p.name: p.read_bytes() for p in layout.validated(DS).parent.iterdir()} == validated_before


@pytest.mark.slow
def test_disk_full_while_writing_a_partition_leaves_nothing_half_written(home: Path, monkeypatch):
    from pipelines import layout as layout_module
    from pipelines.errors import SourceError
    from pipelines.layout import Layout

    layout = Layout(_settings(), VERTICAL)
    validated_before = {p.name: p.read_bytes() for p in layout.validated(DS).parent.iterdir()}
    real_fdopen = os.fdopen
    monkeypatch.setattr(layout_module.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(SourceError, match=r"No space left on device.*Free space under"):
        stages.extract(VERTICAL, DS)
    monkeypatch.setattr(layout_module.os, "fdopen", real_fdopen)
    _assert_nothing_half_written(home, validated_before)

    stages.extract(VERTICAL, DS)  # space freed: the rerun writes the whole partition
    # Canonical bytes: the re-pulled day equals the copy validated before.
    assert layout.raw(DS).read_bytes() == validated_before[f"{DS}.parquet"]


@pytest.fixture
def tiny_tmpfs(home: Path) -> Iterator[Path]:
    """A real full disk: a 1 MiB tmpfs over the raw-partition folder (needs root and mount)."""
    raw_dir = home / "data" / VERTICAL / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real tmpfs needs root; the injected ENOSPC test covers the same path")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(raw_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield raw_dir
    finally:
        subprocess.run(["umount", "-l", str(raw_dir)], check=False)


@pytest.mark.slow
def test_real_full_disk_while_writing_a_partition(home: Path, tiny_tmpfs: Path):
    from pipelines.errors import SourceError
    from pipelines.layout import Layout

    layout = Layout(_settings(), VERTICAL)
    validated_before = {p.name: p.read_bytes() for p in layout.validated(DS).parent.iterdir()}
    partition = validated_before[f"{DS}.parquet"]
    filler = tiny_tmpfs / ".filler"
    with filler.open("wb", buffering=0) as fh:  # fill the disk, leaving less than one partition of room
        with pytest.raises(OSError) as full:
            while True:
                fh.write(b"\0" * 4096)
        assert full.value.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - len(partition) // 2)  # free about half a partition

    with pytest.raises(SourceError, match="No space left on device"):
        stages.extract(VERTICAL, DS)
    filler.unlink()
    _assert_nothing_half_written(home, validated_before)
    stages.extract(VERTICAL, DS)
    assert layout.raw(DS).read_bytes() == partition
