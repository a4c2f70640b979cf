"""Connections that exist only in Airflow's metadata DB reach sources, alerts and the bucket.

No ``AIRFLOW_CONN_*`` variable and no AWS environment: the warehouse, the SMTP
relay (aiosmtpd on loopback) and the S3 bucket (SeaweedFS on loopback) are
known to Airflow's metadata DB alone.  A process in Airflow's server context
(``_AIRFLOW_PROCESS_CONTEXT=server``: the chain the API server answers a
worker's connection requests from) installs the orchestration layer's lookup,
``airflow.sdk.Connection.get``, and runs the real extract stage, the alert
delivery and the bucket through it (on the orchestration overlay's specs: the
extract pulls finance's half-year window, not a year).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from .airflow_support import airflow_env, migrated_airflow_home, orchestration_specs, probe_json
from .conftest import DS, S3Server

pytestmark = pytest.mark.slow

PROBE = r"""
import json, sys
from email.message import EmailMessage

from airflow.models import Connection as MetadataConnection
from airflow.utils.session import create_session

with create_session() as session:
    for conn in json.loads(sys.argv[1]):
        session.add(MetadataConnection(**conn))

from pipelines.notify import alerts
from pipelines import connections, stages
from pipelines.release.bucket import Bucket
from pipelines.config import Settings
from pipelines.orchestration import connections as airflow_connections

ids = ("warehouse_default", "smtp_default", "bucket_meta", "pii_default")
before = {conn_id: connections.get(conn_id) is not None for conn_id in ids}
airflow_connections.install()
settings = Settings.from_env()
extracted = stages.extract("finance", sys.argv[2], settings=settings)
message = EmailMessage()
message["Subject"] = "data-quality probe"
message["To"] = "owners@example.com"
message.set_content("sent through a relay only the metadata DB knows")
where = alerts.deliver(message, settings, dedupe_key="probe")
bucket = Bucket.open(settings.bucket_url)
bucket.fs.pipe_file(f"{bucket.root}/probe.txt", b"written with metadata-DB credentials")
from pipelines.config import load_spec
from pipelines.data.pii import resolve_pii_key

pii = resolve_pii_key(load_spec("healthcare", settings), settings).source
print(json.dumps({"before": before, "extracted": extracted, "where": where, "pii": pii}))
"""


def test_connections_only_in_the_metadata_db_work(
    tmp_path: Path, s3_server: S3Server, smtp_server, seeded_warehouse: Path
) -> None:
    airflow_home = tmp_path / "airflow"
    shutil.copytree(migrated_airflow_home(), airflow_home)  # our own copy of the migrated metadata DB
    source = tmp_path / "source.db"
    shutil.copyfile(seeded_warehouse, source)
    relay = json.loads(os.environ["AIRFLOW_CONN_SMTP_DEFAULT"])
    prefix = f"{s3_server.bucket}/{uuid.uuid4().hex[:12]}"
    metadata = [
        {"conn_id": "warehouse_default", "conn_type": "sqlite", "host": str(source)},
        {
            "conn_id": "smtp_default",
            "conn_type": "smtp",
            "host": relay["host"],
            "port": relay["port"],
            "extra": json.dumps(relay["extra"]),
        },
        {
            "conn_id": "bucket_meta",
            "conn_type": "aws",
            "login": s3_server.access_key,
            "password": s3_server.secret_key,
            "extra": json.dumps({"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"}),
        },
        # The PII pseudonymisation secret (healthcare's spec lists PII columns), as its password.
        {"conn_id": "pii_default", "conn_type": "generic", "password": "metadata-db-only-secret-0123456789"},
    ]
    home = tmp_path / "home"  # no warehouse.db: the fallback to the demo warehouse would find no table
    home.mkdir()
    env = airflow_env(
        home,
        airflow_home,
        _AIRFLOW_PROCESS_CONTEXT="server",
        PIPELINES_BUCKET_URL=f"s3://{prefix}",
        PIPELINES_BUCKET_CONN_ID="bucket_meta",
        PIPELINES_SPECS_DIR=str(orchestration_specs(tmp_path / "specs")),
    )
    for name in list(env):
        if name.startswith(("AIRFLOW_CONN_", "AWS_")) or name == "PIPELINES_PII_KEY":
            del env[name]
    out = probe_json(PROBE, json.dumps(metadata), DS, env=env)
    assert out["before"] == {
        "warehouse_default": False,
        "smtp_default": False,
        "bucket_meta": False,
        "pii_default": False,
    }
    assert out["extracted"]["rows"] > 0
    assert out["where"].startswith(f"smtp://{relay['host']}:{relay['port']}")
    assert [m["Subject"] for m in smtp_server.messages] == ["data-quality probe"]
    assert out["pii"] == "connection 'pii_default'"  # the PII secret, too, from the metadata DB only
    import s3fs

    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key, endpoint_url=s3_server.endpoint)
    assert fs.cat_file(f"{prefix}/probe.txt") == b"written with metadata-DB credentials"
