"""State by URL: every stage on its own "worker" (a fresh, empty home), the shared state on S3.

Nothing one stage hands to the next may live on one disk: records,
partitions, models, checkpoints and reports go through ``PIPELINES_STATE_URL``
(SeaweedFS on loopback), the data through the S3 DVC remote (read back by md5
on a worker whose data repo never saw the snapshot), and the registry is a
database outside every home.  A rerun on yet other fresh workers duplicates
nothing.  Timings print with ``-s``.

The first night, eight stages on eight fresh workers, is built once per module
(`first_night`) and restored before each test: its objects are copied aside on
the same server and copied back, with the registry file, so every test starts
from exactly that night under the same prefix (records name their objects by
URL).  The tests are about where state lives, not model quality: the spec is
finance's, with a 2-trial tuning sweep (which writes what a 12-trial one does) on a
half-year window.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
import s3fs
import yaml

from pipelines.config import PROJECT_ROOT

from ..conftest import short_window_specs
from .airflow_support import ORCHESTRATION_OVERLAY, REGISTRY_TABLES
from .conftest import DS, Cli, S3Server
from .test_s3_deploy import VERSION_FILES

pytestmark = pytest.mark.slow
VERTICAL = "finance"
STAGES = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")
#: The night after the first one (a Saturday: no tuning sweep, a warm start).
NIGHT = "2026-11-28"
#: Nothing listens on the discard port.
DOWN = "http://127.0.0.1:9"
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE")


def _fs(server: S3Server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=server.access_key, secret=server.secret_key, endpoint_url=server.endpoint, skip_instance_cache=True
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _local_paths(values: Iterator[str], scratch: Path) -> list[str]:
    """Values that name a worker's local file: an absolute path, a file:// URI, or anything under the homes."""
    return [v for v in values if v.startswith(("/", "file:")) or str(scratch) in v]


def _shared_env(server: S3Server, prefix: str, *, registry: Path, source: Path, endpoint: str = "") -> dict[str, str]:
    """What every worker shares: state, bucket and DVC remote on S3, registry and warehouse outside the homes.

    No AWS environment: all three take their credentials from one Airflow connection
    (URI form) through the one resolver; ``endpoint`` overrides the server's (a dead one).
    """
    url = quote(endpoint or server.endpoint, safe="")
    return {
        "AIRFLOW_CONN_S3_STATE": f"aws://{server.access_key}:{server.secret_key}@/"
        f"?endpoint_url={url}&region_name=us-east-1",
        "PIPELINES_STATE_CONN_ID": "s3_state",
        "PIPELINES_BUCKET_CONN_ID": "s3_state",
        "PIPELINES_DVC_CONN_ID": "s3_state",
        "PIPELINES_STATE_URL": f"s3://{prefix}/state",
        "PIPELINES_BUCKET_URL": f"s3://{prefix}/bucket",
        "PIPELINES_DVC_REMOTE": f"s3://{prefix}/dvc",
        "PIPELINES_REGISTRY_URL": f"sqlite:///{registry}",
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": f"sqlite:///{source}",
    }


def _specs(folder: Path) -> Path:
    """The repo's specs; finance's tuning sweep tries 2 configurations instead of 12, on the orchestration
    overlay's half-year window (`airflow_support.ORCHESTRATION_OVERLAY`: same gate, still approved)."""
    tuning = yaml.safe_load((PROJECT_ROOT / "verticals" / f"{VERTICAL}.yaml").read_text())["model"]["tuning"]
    window = ORCHESTRATION_OVERLAY[VERTICAL]["window"]
    return short_window_specs(folder, VERTICAL, model={"tuning": {**tuning, "trials": 2}}, window=window)


@dataclass
class Night:
    """A prefix of the S3 server holding finance's first night (state, bucket, DVC remote) and its registry."""

    server: S3Server
    root: Path  # every worker's home, the registry and the warehouse are under it
    prefix: str
    registry: Path
    up: dict[str, str]
    down: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    homes: Iterator[int] = field(default_factory=lambda: iter(range(10_000)))

    @property
    def fs(self) -> s3fs.S3FileSystem:
        return _fs(self.server)

    def stage(self, name: str, ds: str, env: dict[str, str] | None = None, *, label: str = "") -> Any:
        """``name`` on a fresh worker (an empty home: no data, no DVC repo, no model, no records)."""
        env = self.up if env is None else env
        home = self.root / "workers" / f"{next(self.homes)}-{label or ds}-{name}"
        home.mkdir(parents=True)
        return Cli(home, env)(name, VERTICAL, "--date", ds, check=env is self.up)

    def record(self, stage: str, ds: str = DS) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(f"{self.prefix}/state/runs/{VERTICAL}/{ds}/{stage}.json"))

    def counts(self) -> dict[str, int]:
        with sqlite3.connect(self.registry) as db:
            return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in REGISTRY_TABLES}

    def bucket(self) -> dict[str, str]:
        fs = self.fs
        return {k: str(v.get("ETag")) for k, v in fs.find(f"{self.prefix}/bucket", detail=True).items()}

    # -- the first night, kept aside ---------------------------------------------------------

    def save(self) -> None:
        self._copy(self.prefix, self._saved)
        shutil.copytree(self.registry.parent, self._saved_registry)

    def restore(self) -> None:
        """Exactly the first night again: the prefix's objects as saved, the registry and study databases."""
        self._copy(self._saved, self.prefix)
        shutil.rmtree(self.registry.parent)
        shutil.copytree(self._saved_registry, self.registry.parent)

    @property
    def _saved(self) -> str:
        return f"{self.prefix}-first-night"

    @property
    def _saved_registry(self) -> Path:
        # The folder: the tuning sweep's studies live beside the registry (optuna.db).
        return self.registry.parent.with_name("registry-first-night")

    def _copy(self, source: str, target: str) -> None:
        """Make ``target`` hold what ``source`` holds: server-side copies, nothing else left."""
        fs = self.fs
        stale = fs.find(target)
        if stale:
            fs.rm(stale)
        # SeaweedFS keeps a folder whose last object went, and s3fs then finds the empty folder
        # itself (a worker's pull of that folder fails on it): delete them, deepest first.
        fs.invalidate_cache()
        folders = [root for root, _, _ in fs.walk(target)]
        bucket = target.split("/", 1)[0]
        for folder in sorted(folders, key=lambda path: path.count("/"), reverse=True):
            fs.call_s3("delete_object", Bucket=bucket, Key=folder.split("/", 1)[1] + "/")
        keys = fs.find(source)
        assert keys, f"nothing under s3://{source}"
        fs.copy(keys, [target + key[len(source) :] for key in keys])
        fs.invalidate_cache()
        assert len(fs.find(target)) == len(keys)


@pytest.fixture(scope="module")
def first_night(
    s3_server: S3Server, seeded_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Night]:
    """Finance's first night (`DS`), each stage on a fresh worker, state on S3: built once, saved aside."""
    root = tmp_path_factory.mktemp("state-s3")
    source = root / "source" / "warehouse.db"  # the warehouse is a server in production: outside every home
    source.parent.mkdir()
    shutil.copyfile(seeded_warehouse, source)
    registry = root / "registry" / "registry.db"  # likewise the registry database (and optuna.db beside it)
    registry.parent.mkdir()
    prefix = f"{s3_server.bucket}/{uuid.uuid4().hex[:12]}"
    specs = {"PIPELINES_SPECS_DIR": str(_specs(root / "specs"))}
    up = {**_shared_env(s3_server, prefix, registry=registry, source=source), **specs}
    down = {
        **_shared_env(s3_server, prefix, registry=registry, source=source, endpoint=DOWN),
        **specs,
        # One attempt: the stage's own failure path is what is under test here; botocore's
        # retries before the same error are waited out by the unreachable-store test.
        "AWS_MAX_ATTEMPTS": "1",
    }
    night = Night(s3_server, root, prefix, registry, up, down)
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_VARIABLES:
            patch.delenv(name, raising=False)  # the workers' subprocesses inherit this environment
        for name in STAGES:
            started = time.monotonic()
            night.stage(name, DS, label="first")
            night.timings[name] = round(time.monotonic() - started, 1)
    night.save()
    yield night


@pytest.fixture
def night(first_night: Night, monkeypatch: pytest.MonkeyPatch) -> Night:
    """`first_night` restored: the same prefix, objects and registry rows as right after it."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    first_night.restore()
    return first_night


def test_each_stage_on_a_fresh_worker_with_state_on_s3(night: Night) -> None:
    prefix, fs = night.prefix, night.fs
    summary = night.record("report")
    assert summary["deployed"] and summary["approved"], summary
    pointer = json.loads(fs.cat_file(f"{prefix}/bucket/{VERTICAL}/production.json"))
    assert pointer["version"] == summary["model_version"]
    trained = night.record("train")
    assert trained["model_dir"] == f"s3://{prefix}/state/models/{VERTICAL}/{trained['model_version']}"
    assert fs.exists(f"{prefix}/state/models/{VERTICAL}/{trained['model_version']}/weights.pt")
    # The data lives in the S3 DVC remote under its md5, which the records carry.
    md5 = night.record("snapshot")["md5"]
    assert fs.exists(f"{prefix}/dvc/files/md5/{md5[:2]}/{md5[2:]}")
    assert night.record("snapshot")["id"] == f"dv-{md5[:12]}"
    rows, listing = night.counts(), night.bucket()

    again = {}
    for stage in STAGES:
        started = time.monotonic()
        night.stage(stage, DS, label="rerun")
        again[stage] = round(time.monotonic() - started, 1)
    assert night.record("report")["model_version"] == summary["model_version"]
    assert night.record("snapshot")["id"] == f"dv-{md5[:12]}"  # same data, same version on another worker
    assert night.record("deploy")["deployed"] is True  # kept: the model in production is this run's
    assert night.counts() == rows, "a rerun on fresh workers added registry rows"
    assert night.bucket() == listing, "a rerun on fresh workers changed the bucket"

    # Nothing a record or a registry row holds names one worker's disk.
    fs.invalidate_cache()
    keys = [key for key in fs.find(f"{prefix}/state/runs") if key.endswith(".json")]
    assert {key.rsplit("/", 1)[-1].removesuffix(".json") for key in keys} >= set(STAGES)  # (+ drift)
    records = [json.loads(fs.cat_file(key)) for key in keys]
    assert _local_paths(_strings(records), night.root) == []
    with sqlite3.connect(night.registry) as db:
        cells = [
            str(cell)
            for table in REGISTRY_TABLES
            for row in db.execute(f"select * from {table}").fetchall()
            for cell in row
            if isinstance(cell, str)
        ]
    assert cells and _local_paths(iter(cells), night.root) == []
    print(f"\n[state on s3] first night per stage (s): {night.timings}\n[state on s3] rerun per stage (s): {again}")


def test_the_first_night_deploys_a_complete_version_to_s3_that_serves(
    night: Night, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real nightly run (finance) with the bucket on S3: pointer, card files, serving, size.

    (Was test_s3_deploy.py's ``test_cli_run_deploys_to_s3_and_serves``, which ran its own
    first night with the bucket on S3; this night's stages deploy through the same code.)
    """
    url = f"s3://{night.prefix}/bucket"
    deployed = night.record("deploy")
    assert deployed["deployed"] and deployed["uri"].startswith(url)

    fs = night.fs
    version = deployed["model_version"]
    found = fs.find(f"{night.prefix}/bucket/{VERTICAL}/versions/{version}", detail=True)
    files = {key.rsplit("/", 1)[-1]: info["size"] for key, info in found.items()}
    # finance has a validation split, so its card also carries the reliability diagram; a nightly run's
    # card draws the holdout curves and the per-slice figure from evaluate's scores; both of its
    # ONNX exports pass the gate's export rules (seeded), so they ship in the version folder too.
    card_figures = {"reliability.svg", "holdout_curves.svg", "slices.svg"}
    assert set(files) == VERSION_FILES | card_figures | {"model.onnx", "model.int8.onnx"}
    card = json.loads(fs.cat_file(f"{night.prefix}/bucket/{VERTICAL}/versions/{version}/model_card.json"))
    assert card["model_version"] == version and card["confusion_matrix"]["image"] == "confusion_matrix.svg"
    assert card["reliability"]["image"] == "reliability.svg"
    assert card["slices"]["column"] == "home_ownership" and card["slices"]["image"] == "slices.svg"

    # Served in this process, with the standard AWS environment (no connection id) as credentials.
    from pipelines.release.deploy import load_production

    for name, value in night.server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PIPELINES_BUCKET_CONN_ID", raising=False)
    validated = tmp_path / "validated.parquet"
    fs.get_file(f"{night.prefix}/state/data/{VERTICAL}/validated/{DS}.parquet", str(validated))
    raw = pd.read_parquet(validated)
    served = load_production(VERTICAL, bucket_url=url, cache_dir=tmp_path / "serve")
    prob = served.predict_proba(raw)
    assert len(prob) == len(raw) and ((prob >= 0) & (prob <= 1)).all()
    detail = ", ".join(f"{name} {size}" for name, size in sorted(files.items()))
    print(f"\n[s3 figures] deployed version {version}: {sum(files.values())} bytes ({detail})")


def test_an_unreachable_state_store_is_a_clear_error_naming_url_and_settings(
    s3_server: S3Server, seeded_warehouse: Path, tmp_path: Path
) -> None:
    """S3 down: the stage stops (after botocore's retries) saying which URL and what to check."""
    home = tmp_path / "worker"
    home.mkdir()
    source = tmp_path / "warehouse.db"
    shutil.copyfile(seeded_warehouse, source)
    proc = Cli(
        home,
        {
            **s3_server.env(),
            "AWS_ENDPOINT_URL": DOWN,
            "PIPELINES_STATE_URL": f"s3://{s3_server.bucket}/down/state",
            "PIPELINES_REGISTRY_URL": f"sqlite:///{tmp_path / 'registry.db'}",
            "AIRFLOW_CONN_WAREHOUSE_DEFAULT": f"sqlite:///{source}",
        },
    )("extract", VERTICAL, "--date", DS, check=False)
    assert proc.returncode != 0
    assert f"state store s3://{s3_server.bucket}/down/state" in proc.stderr
    assert "PIPELINES_STATE_URL" in proc.stderr and DOWN in proc.stderr
    assert "Traceback" not in proc.stderr


def test_s3_down_during_snapshot_train_or_deploy_fails_clearly_and_production_stays(night: Night) -> None:
    """The object store goes away in the middle of a night, once per stage that writes to it.

    From the first night's champion in production, the next night runs stage by stage.
    Each time the stage stops with a retryable error (exit 1, not a data or spec error)
    that names the URL and the setting, with no traceback; production (pointer, bucket,
    registry) is exactly as before; with S3 back, the same stage rerun on yet another
    fresh worker carries the night on.
    """
    prefix, fs = night.prefix, night.fs

    def production() -> tuple[Any, ...]:
        fs.invalidate_cache()
        listing = {k: str(v.get("ETag")) for k, v in fs.find(f"{prefix}/bucket", detail=True).items()}
        return fs.cat_file(f"{prefix}/bucket/{VERTICAL}/production.json"), listing, night.counts()

    for name in ("extract", "validate"):
        night.stage(name, NIGHT)
    for name in ("snapshot", "train", "evaluate", "gate", "deploy"):
        if name in ("snapshot", "train", "deploy"):
            before = production()
            failed = night.stage(name, NIGHT, night.down)
            assert failed.returncode == 1, (name, failed.returncode, failed.stderr[-2000:])
            assert f"s3://{prefix}/state" in failed.stderr and "PIPELINES_STATE_URL" in failed.stderr, failed.stderr
            assert "Traceback" not in failed.stderr
            assert production() == before, f"S3 down during {name} changed production"
        night.stage(name, NIGHT)
    # The night carried on to its end: what the gate decided is what production holds.
    decision, deployed = night.record("gate", NIGHT), night.record("deploy", NIGHT)
    assert deployed["deployed"] is decision["approved"], (decision, deployed)
    pointer = json.loads(fs.cat_file(f"{prefix}/bucket/{VERTICAL}/production.json"))
    assert (pointer["version"] == decision["model_version"]) is decision["approved"], (pointer, decision)
