"""State by URL: every stage on its own "worker" (a fresh, empty home), the shared state on S3.

Nothing one stage hands to the next may live on one disk: records,
partitions, models, checkpoints and reports go through ``PIPELINES_STATE_URL``
(SeaweedFS on loopback), the data through the S3 DVC remote (read back by md5
on a worker whose data repo never saw the snapshot), and the registry is a
database outside every home.  A rerun on yet other fresh workers duplicates
nothing.  Timings print with ``-s``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import s3fs

from .airflow_support import REGISTRY_TABLES
from .conftest import DS, Cli, S3Server

pytestmark = pytest.mark.slow
VERTICAL = "finance"
STAGES = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")


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


def test_each_stage_on_a_fresh_worker_with_state_on_s3(
    s3_server: S3Server, seeded_warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # the workers' subprocesses inherit this environment
    prefix = f"{s3_server.bucket}/{uuid.uuid4().hex[:12]}"
    source = tmp_path / "source" / "warehouse.db"  # the warehouse is a server in production: outside every home
    source.parent.mkdir()
    shutil.copyfile(seeded_warehouse, source)
    registry = tmp_path / "registry" / "registry.db"  # likewise the registry database
    registry.parent.mkdir()
    workers = tmp_path / "workers"
    shared = _shared_env(s3_server, prefix, registry=registry, source=source)
    fs = _fs(s3_server)

    def night(label: str) -> dict[str, float]:
        timings = {}
        for stage in STAGES:
            home = workers / f"{label}-{stage}"
            home.mkdir(parents=True)  # empty: no data, no DVC repo, no model, no records
            started = time.monotonic()
            Cli(home, shared)(stage, VERTICAL, "--date", DS)
            timings[stage] = round(time.monotonic() - started, 1)
        return timings

    def record(stage: str) -> dict[str, Any]:
        return json.loads(fs.cat_file(f"{prefix}/state/runs/{VERTICAL}/{DS}/{stage}.json"))

    def counts() -> dict[str, int]:
        with sqlite3.connect(registry) as db:
            return {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in REGISTRY_TABLES}

    def bucket() -> dict[str, str]:
        fs.invalidate_cache()
        return {k: str(v.get("ETag")) for k, v in fs.find(f"{prefix}/bucket", detail=True).items()}

    first = night("first")
    summary = record("report")
    assert summary["deployed"] and summary["approved"], summary
    pointer = json.loads(fs.cat_file(f"{prefix}/bucket/{VERTICAL}/production.json"))
    assert pointer["version"] == summary["model_version"]
    trained = record("train")
    assert trained["model_dir"] == f"s3://{prefix}/state/models/{VERTICAL}/{trained['model_version']}"
    assert fs.exists(f"{prefix}/state/models/{VERTICAL}/{trained['model_version']}/weights.pt")
    # The data lives in the S3 DVC remote under its md5, which the records carry.
    md5 = record("snapshot")["md5"]
    assert fs.exists(f"{prefix}/dvc/files/md5/{md5[:2]}/{md5[2:]}")
    assert record("snapshot")["id"] == f"dv-{md5[:12]}"
    rows, listing = counts(), bucket()

    again = night("rerun")
    assert record("report")["model_version"] == summary["model_version"]
    assert record("snapshot")["id"] == f"dv-{md5[:12]}"  # same data, same version on another worker
    assert record("deploy")["deployed"] is True  # kept: the model in production is this run's
    assert counts() == rows, "a rerun on fresh workers added registry rows"
    assert bucket() == listing, "a rerun on fresh workers changed the bucket"

    # Nothing a record or a registry row holds names one worker's disk.
    fs.invalidate_cache()
    keys = [key for key in fs.find(f"{prefix}/state/runs") if key.endswith(".json")]
    assert {key.rsplit("/", 1)[-1].removesuffix(".json") for key in keys} >= set(STAGES)  # (+ drift)
    records = [json.loads(fs.cat_file(key)) for key in keys]
    assert _local_paths(_strings(records), tmp_path) == []
    with sqlite3.connect(registry) as db:
        cells = [
            str(cell)
            for table in REGISTRY_TABLES
            for row in db.execute(f"select * from {table}").fetchall()
            for cell in row
            if isinstance(cell, str)
        ]
    assert cells and _local_paths(iter(cells), tmp_path) == []
    print(f"\n[state on s3] first night per stage (s): {first}\n[state on s3] rerun per stage (s): {again}")


def test_an_unreachable_state_store_is_a_clear_error_naming_url_and_settings(
    s3_server: S3Server, seeded_warehouse: Path, tmp_path: Path
) -> None:
    """S3 down: the stage stops (after botocore's retries) saying which URL and what to check."""
    home = tmp_path / "worker"
    home.mkdir()
    source = tmp_path / "warehouse.db"
    shutil.copyfile(seeded_warehouse, source)
    down = "http://127.0.0.1:9"  # nothing listens on the discard port
    proc = Cli(
        home,
        {
            **s3_server.env(),
            "AWS_ENDPOINT_URL": down,
            "PIPELINES_STATE_URL": f"s3://{s3_server.bucket}/down/state",
            "PIPELINES_REGISTRY_URL": f"sqlite:///{tmp_path / 'registry.db'}",
            "AIRFLOW_CONN_WAREHOUSE_DEFAULT": f"sqlite:///{source}",
        },
    )("extract", VERTICAL, "--date", DS, check=False)
    assert proc.returncode != 0
    assert f"state store s3://{s3_server.bucket}/down/state" in proc.stderr
    assert "PIPELINES_STATE_URL" in proc.stderr and down in proc.stderr
    assert "Traceback" not in proc.stderr


def test_s3_down_during_snapshot_train_or_deploy_fails_clearly_and_production_stays(
    s3_server: S3Server, seeded_warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object store goes away in the middle of a night, once per stage that writes to it.

    Each time the stage stops with a retryable error (exit 1, not a data or spec error)
    that names the URL and the setting, with no traceback; production (pointer, bucket,
    registry) is exactly as before; with S3 back, the same stage rerun on yet another
    fresh worker carries the night on.
    """
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"{s3_server.bucket}/{uuid.uuid4().hex[:12]}"
    source, registry = tmp_path / "warehouse.db", tmp_path / "registry.db"
    shutil.copyfile(seeded_warehouse, source)
    up = _shared_env(s3_server, prefix, registry=registry, source=source)
    down = _shared_env(s3_server, prefix, registry=registry, source=source, endpoint="http://127.0.0.1:9")
    fs = _fs(s3_server)
    homes = iter(range(10_000))

    def stage(name: str, ds: str, env: dict[str, str]) -> Any:
        home = tmp_path / "workers" / f"{next(homes)}-{name}"
        home.mkdir(parents=True)  # every call is a fresh worker
        return Cli(home, env)(name, VERTICAL, "--date", ds, check=env is up)

    def production() -> tuple[Any, ...]:
        fs.invalidate_cache()
        with sqlite3.connect(registry) as db:
            rows = {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in REGISTRY_TABLES}
        listing = {k: str(v.get("ETag")) for k, v in fs.find(f"{prefix}/bucket", detail=True).items()}
        return fs.cat_file(f"{prefix}/bucket/{VERTICAL}/production.json"), listing, rows

    for name in STAGES:
        stage(name, DS, up)  # a champion in production
    night = "2026-11-28"
    for name in ("extract", "validate"):
        stage(name, night, up)
    for name in ("snapshot", "train", "evaluate", "gate", "deploy"):
        if name in ("snapshot", "train", "deploy"):
            before = production()
            failed = stage(name, night, down)
            assert failed.returncode == 1, (name, failed.returncode, failed.stderr[-2000:])
            assert f"s3://{prefix}/state" in failed.stderr and "PIPELINES_STATE_URL" in failed.stderr, failed.stderr
            assert "Traceback" not in failed.stderr
            assert production() == before, f"S3 down during {name} changed production"
        stage(name, night, up)
