"""``python -m pipelines reproduce``: a deployed version rebuilt from its bucket lineage alone.

The rebuild runs on an EMPTY data root: only the bucket URL, the DVC remote and
the registry point at the original run's, so everything it needs must come from
shared storage (the proof that nothing lives only on one disk).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from pipelines.release.bucket import json_bytes

from .conftest import DS, NEXT_DS, Cli, S3Server

pytestmark = pytest.mark.slow


def _deployed(finance_ran: Cli) -> tuple[str, Path]:
    pointer = json.loads((finance_ran.home / "bucket" / "finance" / "production.json").read_text())
    return str(pointer["version"]), finance_ran.home / "bucket"


def _elsewhere(tmp_path: Path, finance_ran: Cli, bucket: Path) -> Cli:
    """A CLI on an empty home that reaches only the original run's shared storage."""
    home = tmp_path / "empty-home"
    home.mkdir()
    original = finance_ran.home
    env = {
        "PIPELINES_BUCKET_URL": bucket.as_uri(),
        "PIPELINES_DVC_REMOTE": str(original / "dvc-remote"),
        "PIPELINES_REGISTRY_URL": f"sqlite:///{original / 'registry.db'}",
    }
    return Cli(home, env)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_deployed_version_is_rebuilt_from_its_lineage_alone(finance_ran: Cli, tmp_path: Path):
    version, bucket = _deployed(finance_ran)
    lineage = json.loads((bucket / "finance" / "versions" / version / "lineage.json").read_text())
    # The lineage carries what a rebuild needs beside the data md5: the resolved spec, code and libraries.
    assert lineage["spec"]["name"] == "finance" and lineage["libraries"]["torch"] == metadata.version("torch")
    before = {"bucket": _tree_digest(bucket), "registry": (finance_ran.home / "registry.db").read_bytes()}
    elsewhere = _elsewhere(tmp_path, finance_ran, bucket)

    proc = elsewhere("reproduce", "finance", version, fresh=True)  # a new interpreter rebuilds the same bytes

    recorded = json.loads((bucket / "finance" / "versions" / version / "checksums.json").read_text())
    assert proc.stdout.strip() == f"reproduced: identical weights (weights.pt sha256 {recorded['files']['weights.pt']})"
    # Never touches production: the bucket (pointer included) and the registry are byte-for-byte unchanged.
    assert _tree_digest(bucket) == before["bucket"]
    assert (finance_ran.home / "registry.db").read_bytes() == before["registry"]


def _tamper(bucket: Path, version: str, change: dict) -> None:
    """Rewrite lineage.json and its checksum, as a deploy from another environment would have."""
    folder = bucket / "finance" / "versions" / version
    lineage = json.loads((folder / "lineage.json").read_text())
    for key, value in change.items():
        if isinstance(value, dict):
            lineage[key] = {**lineage[key], **value}
        else:
            lineage[key] = value
    data = json_bytes(lineage)
    (folder / "lineage.json").write_bytes(data)
    manifest = json.loads((folder / "checksums.json").read_text())
    manifest["files"]["lineage.json"] = hashlib.sha256(data).hexdigest()
    (folder / "checksums.json").write_bytes(json_bytes(manifest))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"libraries": {"torch": "2.0.0"}}, f"library torch: recorded 2.0.0, installed {metadata.version('torch')}"),
        ({"data_md5": "0" * 32}, "data md5: recorded " + "0" * 32),
    ],
    ids=["library-version", "data-md5"],
)
def test_a_differing_recorded_input_is_named_exactly(finance_ran: Cli, tmp_path: Path, change: dict, expected: str):
    version, original = _deployed(finance_ran)
    bucket = tmp_path / "bucket-copy"
    shutil.copytree(original, bucket)
    _tamper(bucket, version, change)

    proc = _elsewhere(tmp_path, finance_ran, bucket)("reproduce", "finance", version, check=False)

    assert proc.returncode == 10, proc.stderr[-3000:]
    differing = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("differs:")]
    assert len(differing) == 1 and differing[0].startswith(f"differs: {expected}"), proc.stdout
    assert proc.stdout.startswith("not reproduced"), proc.stdout


def test_a_version_not_in_the_bucket_is_refused_in_one_line(finance_ran: Cli, tmp_path: Path):
    _, bucket = _deployed(finance_ran)
    proc = _elsewhere(tmp_path, finance_ran, bucket)("reproduce", "finance", "mv-000000000000", check=False)
    assert proc.returncode == 10
    assert "cannot reproduce mv-000000000000" in proc.stderr and "checksums.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_warm_started_version_fetches_its_parent_from_the_bucket(finance_next_night: Cli, tmp_path: Path):
    """Night 2 fine-tunes night 1's champion (the golden second night, as in test_cli_pipeline).

    The rebuild needs that parent too.
    """
    finance_ran = finance_next_night  # DS ran, then NEXT_DS (deployed)
    version, bucket = _deployed(finance_ran)
    lineage = json.loads((bucket / "finance" / "versions" / version / "lineage.json").read_text())
    parent = lineage["warm_start"]["from"]
    assert lineage["logical_date"] == NEXT_DS and parent == finance_ran.record("finance", DS, "train")["model_version"]

    proc = _elsewhere(tmp_path, finance_ran, bucket)("reproduce", "finance", version)
    assert proc.stdout.startswith("reproduced: identical weights"), proc.stdout

    copy = tmp_path / "bucket-without-parent"
    shutil.copytree(bucket, copy)
    shutil.rmtree(copy / "finance" / "versions" / parent)
    (tmp_path / "other").mkdir()
    proc = _elsewhere(tmp_path / "other", finance_ran, copy)("reproduce", "finance", version, check=False)
    assert proc.returncode == 10
    assert f"it was warm-started from {parent}, whose weights cannot be loaded from the bucket" in proc.stderr


def test_a_version_in_s3_is_rebuilt_from_s3_alone(finance_ran: Cli, s3_server: S3Server, tmp_path: Path):
    """The production shape: the bucket and the DVC remote are S3 prefixes, the rebuilding home is empty."""
    import s3fs

    version, bucket = _deployed(finance_ran)
    prefix = f"{s3_server.bucket}/reproduce-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(
        key=s3_server.access_key, secret=s3_server.secret_key, endpoint_url=s3_server.endpoint, skip_instance_cache=True
    )
    fs.put(str(bucket / "finance"), f"{prefix}/bucket/", recursive=True)
    fs.put(str(finance_ran.home / "dvc-remote"), f"{prefix}/", recursive=True)
    home = tmp_path / "empty-home"
    home.mkdir()
    env = {
        **s3_server.env(),
        "PIPELINES_BUCKET_URL": f"s3://{prefix}/bucket",
        "PIPELINES_DVC_REMOTE": f"s3://{prefix}/dvc-remote",
        "PIPELINES_REGISTRY_URL": f"sqlite:///{finance_ran.home / 'registry.db'}",
    }

    proc = Cli(home, env)("reproduce", "finance", version)

    assert proc.stdout.startswith("reproduced: identical weights"), proc.stdout
