"""Security: secrets and PII stay out of everything a run writes; SQL is bound; loads are verified.

* A password planted in the source connection and in the SMTP connection
  never appears in any file a run wrote (records, reports, registry, DVC repo
  including git objects, outbox), in the emails or in the captured logs.
* The source query binds the interval; hostile names never reach SQL or paths.
* Nothing is deserialised before its checksum matched, and weights load with
  ``weights_only=True`` (a pickle payload is refused, never executed).
* PII values never reach logs, alert emails, quality reports or records.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from pipelines import stages
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.orchestration.stack import free_ports

from .. import warm_cli
from ..conftest import short_window_specs

DS = "2026-11-27"
BAD_DS = "2026-11-28"
TEXT_FILES = {".json", ".html", ".md", ".eml", ".txt", ".yml", ".yaml", ".log", ".csv"}


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PIPELINES_HOME"] = str(home)
    env.update(extra)
    return env


def _pipelines(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return warm_cli.run(
        [sys.executable, "-m", "pipelines", "-v", *args], cwd=PROJECT_ROOT, env=_clean_env(home, **env), timeout=600
    )


def _finance_tuning() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((PROJECT_ROOT / "verticals" / "finance.yaml").read_text())["model"]["tuning"])


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- everything a run wrote -------------------------------------------------------------------


def _git_objects(git_dir: Path) -> bytes:
    """Every object of a git repository, decompressed (loose and packed)."""
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
    )
    return out.stdout


def _written_bytes(root: Path) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every file under ``root``; git objects decompressed, zlib blobs inflated."""
    for path in sorted(root.rglob("*")):
        if path.is_dir() and path.name == ".git":
            yield f"{path} (objects)", _git_objects(path)
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".eml":
            data = _decoded_email(data)
        if "/.git/objects/" in str(path):
            try:
                data = zlib.decompress(data)
            except zlib.error:
                pass  # a pack file: covered by cat-file above
        yield str(path), data


def _decoded_email(raw: bytes) -> bytes:
    """The raw message plus every part's decoded payload (an HTML part may be base64 or quoted-printable)."""
    from email import message_from_bytes, policy

    message = message_from_bytes(raw, policy=policy.default)
    parts = [part.get_payload(decode=True) or b"" for part in message.walk() if not part.is_multipart()]
    return b"\n".join([raw, *parts])


def _leaks(secret: str, haystacks: dict[str, bytes]) -> list[str]:
    forms = {secret.encode(), quote(secret, safe="").encode()}
    return [where for where, data in haystacks.items() if any(form in data for form in forms)]


# -- a PostgreSQL source and an SMTP relay, each behind a password --------------------------------


class _AuthInbox:
    """aiosmtpd handler: keeps every message it accepts (raw bytes)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook
        self.messages.append(envelope.content)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_with_password() -> Iterator[tuple[_AuthInbox, dict[str, Any]]]:
    """A real SMTP server on loopback that requires AUTH; yields its inbox and the connection (with the secret)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    password = f"smtp-Pl4nted-{secrets.token_hex(8)}"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)

    inbox = _AuthInbox()
    [port] = free_ports(1)  # outside the ephemeral range: no client can hold it before the server binds
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "login": "alerts",
        "password": password,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com"},
    }
    try:
        yield inbox, conn
    finally:
        controller.stop()


@pytest.fixture
def pg_finance_source(pg_schema_url: str, seeded_warehouse: Path) -> tuple[str, str]:
    """The demo finance table in a throw-away PostgreSQL schema: (URI with a planted password, the password)."""
    import pandas as pd
    import sqlalchemy as sa

    with sqlite3.connect(seeded_warehouse) as db:
        frame = pd.read_sql("select * from finance_loans", db)
    frame["event_date"] = pd.to_datetime(frame["event_date"]).dt.date
    engine = sa.create_engine(pg_schema_url)
    try:
        frame.to_sql("finance_loans", engine, index=False)
    finally:
        engine.dispose()
    parts = urlsplit(pg_schema_url)
    password = f"src-Pl4nted-{secrets.token_hex(8)}"
    uri = f"postgresql://{parts.username}:{password}@{parts.hostname}:{parts.port}{parts.path}?{parts.query}"
    return uri, password


@pytest.mark.slow
@pytest.mark.postgres
def test_planted_connection_secrets_never_appear_in_anything_a_run_wrote(
    tmp_path: Path, pg_finance_source: tuple[str, str], smtp_with_password: tuple[_AuthInbox, dict[str, Any]]
):
    import sqlalchemy as sa

    source_uri, source_secret = pg_finance_source
    inbox, smtp_conn = smtp_with_password
    smtp_secret = smtp_conn["password"]
    home = tmp_path / "state"
    home.mkdir()
    # Every stage runs and writes as usual; a 2-trial sweep writes what a 12-trial one does.
    specs = short_window_specs(tmp_path / "specs", "finance", model={"tuning": {**_finance_tuning(), "trials": 2}})
    env = {
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": source_uri,
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_conn),
        "PIPELINES_SPECS_DIR": str(specs),
    }
    outputs: dict[str, bytes] = {}

    def run(name: str, run_env: dict[str, str], *args: str, code: int) -> None:
        proc = _pipelines(home, run_env, *args)
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = proc.stdout.encode(), proc.stderr.encode()
        assert proc.returncode == code, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"

    # 1. a good night: extract from PostgreSQL (with the password), train, deploy, mail the summary.
    run("good night", env, "run", "finance", "--date", DS, code=0)
    # 2. a bad day: quarantined, the data-quality alert mailed (with sample rows).
    engine = sa.create_engine(source_uri.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text("update finance_loans set age = -3 where event_date = :ds"), {"ds": BAD_DS})
    engine.dispose()
    # ... while the relay is down: the alert waits in outbox/undelivered/, then `alerts flush` sends it.
    relay_down = json.dumps({**smtp_conn, "port": _closed_port()})
    run("bad day", {**env, "AIRFLOW_CONN_SMTP_DEFAULT": relay_down}, "run", "finance", "--date", BAD_DS, code=4)
    assert list((home / "outbox" / "undelivered").glob("*.eml")), "the undelivered alert was not kept"
    run("flush", env, "alerts", "flush", code=0)
    # 3. a fault whose message could echo the connection: the source unreachable.
    down = source_uri.replace(f":{urlsplit(source_uri).port}/", f":{_closed_port()}/")
    run(
        "source down",
        {**env, "AIRFLOW_CONN_WAREHOUSE_DEFAULT": down},
        "extract",
        "finance",
        "--date",
        "2026-11-29",
        code=3,
    )
    run("status", env, "status", "--json", code=0)

    assert len(inbox.messages) == 2, "expected the run summary and the data-quality alert"
    haystacks = dict(_written_bytes(home))
    haystacks.update({f"email {i}": _decoded_email(m) for i, m in enumerate(inbox.messages)})
    haystacks.update(outputs)
    assert any(b"debug" in v.lower() or b"INFO" in v for k, v in outputs.items() if k.endswith("stderr"))
    for secret in (source_secret, smtp_secret):
        assert _leaks(secret, haystacks) == [], f"secret leaked into {_leaks(secret, haystacks)}"


# -- SQL binds its values; names never reach SQL or paths unchecked ----------------------------


@pytest.fixture
def warehouse_home(tmp_path: Path, seeded_warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    home.mkdir()
    shutil.copyfile(seeded_warehouse, home / "warehouse.db")
    for name in list(os.environ):
        if name.startswith(("PIPELINES_", "AIRFLOW_CONN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIPELINES_HOME", str(home))
    return home


def test_the_source_query_binds_the_interval(warehouse_home: Path):
    import sqlalchemy as sa

    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    try:
        stages.extract("finance", DS)  # a first run: one range query over the whole window
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before)
    queries = [(s, p) for s, p in seen if "finance_loans" in s]
    assert queries, seen
    for statement, parameters in queries:
        assert "2025-" not in statement and "2026-" not in statement, statement
        assert any("2026-11-2" in str(v) for v in (parameters.values() if isinstance(parameters, dict) else parameters))


def _spec_dir(
    tmp_path: Path, vertical: str = "finance", *, window: dict[str, int] | None = None, **source: str
) -> Path:
    """A specs folder holding one repo spec with its source (or window) changed."""
    import yaml

    spec = yaml.safe_load((PROJECT_ROOT / "verticals" / f"{vertical}.yaml").read_text())
    spec["source"].update(source)
    if window:
        spec["window"] = window
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / f"{vertical}.yaml").write_text(yaml.safe_dump(spec))
    return specs


def test_a_hostile_table_name_is_refused_by_the_spec_schema(warehouse_home: Path, tmp_path: Path, monkeypatch):
    from pipelines.errors import SpecError

    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(_spec_dir(tmp_path, table="finance_loans; drop table finance_loans")))
    with pytest.raises(SpecError, match="table"):
        stages.extract("finance", DS)
    with sqlite3.connect(warehouse_home / "warehouse.db") as db:
        assert db.execute("select count(*) from finance_loans").fetchone()[0] > 0


def test_a_hostile_event_column_is_quoted_as_one_identifier(warehouse_home: Path, tmp_path: Path, monkeypatch):
    import sqlalchemy as sa

    from pipelines.errors import PipelineError

    hostile = "event_date) or (1=1"
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(_spec_dir(tmp_path, event_time=hostile)))
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    try:
        with pytest.raises(PipelineError):  # refused by the schema, or "no such column" from the database
            stages.extract("finance", DS)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before)
    for statement in seen:
        assert f'"{hostile}"' in statement, statement  # one quoted identifier, never SQL
    assert not (warehouse_home / "data" / "finance" / "raw").exists() or not any(
        (warehouse_home / "data" / "finance" / "raw").iterdir()
    )


@pytest.mark.parametrize("name", ["../verticals/finance", "finance/../finance", "/etc/passwd", "x" * 300])
def test_hostile_vertical_names_never_reach_a_path(warehouse_home: Path, name: str):
    before = sorted(p.relative_to(warehouse_home) for p in warehouse_home.rglob("*"))
    proc = _pipelines(warehouse_home, {}, "extract", name, "--date", DS)
    after = sorted(p.relative_to(warehouse_home) for p in warehouse_home.rglob("*"))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert after == before, "a refused name still wrote something"


@pytest.mark.parametrize("name", ["../finance", "finance/../../x", "..", "a/b"])
def test_bucket_paths_refuse_unsafe_names(tmp_path: Path, name: str):
    from pipelines.errors import DeployError
    from pipelines.release.bucket import read_pointer, verify_version
    from pipelines.release.serving import load_version

    url = (tmp_path / "bucket").as_uri()
    with pytest.raises(DeployError, match="not a safe path segment"):
        read_pointer(url, name)
    with pytest.raises(DeployError, match="not a safe path segment"):
        verify_version(url, "finance", name)
    with pytest.raises(DeployError, match="not a safe path segment"):
        load_version("finance", name, bucket_url=url, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "bucket").exists() and not (tmp_path / "cache").exists()


# -- checksums before load, weights_only=True --------------------------------------------------


def _tiny_model_dir(path: Path) -> Path:
    import pandas as pd
    import torch

    from pipelines.config import Features
    from pipelines.model.features import Preprocessor
    from pipelines.model.modeling import TabularMLP, save_model_dir

    rows = pd.DataFrame({"amount": [1.0, 5.0, 2.5, None, 9.0], "kind": ["a", "b", "a", "c", "b"]})
    preprocessor = Preprocessor.fit(rows, Features(numeric=["amount"], categorical=["kind"]))
    torch.manual_seed(0)
    width = len(preprocessor.output_names)
    hparams = {"input_dim": width, "hidden": [8], "dropout": 0.0}
    save_model_dir(path, TabularMLP(width, [8], 0.0), preprocessor, hparams=hparams, decision_threshold=0.5)
    return path


@pytest.fixture
def deployed(tmp_path: Path) -> tuple[str, str, Path]:
    """A tiny model deployed to a ``file://`` bucket: (bucket URL, version, version folder)."""
    from pipelines.release.deploy import deploy_version

    url = (tmp_path / "bucket").as_uri()
    model_dir = _tiny_model_dir(tmp_path / "model")
    metrics = {"challenger": {"accuracy": 1.0, "confusion_matrix": [[1, 0], [0, 1]]}}
    result = deploy_version(
        bucket_url=url,
        vertical="finance",
        model_version="mv-sec",
        model_dir=model_dir,
        metrics=metrics,
        lineage={},
        model_card="# card",
        ds=DS,
    )
    assert result.changed
    return url, "mv-sec", tmp_path / "bucket" / "finance" / "versions" / "mv-sec"


def test_nothing_is_deserialised_before_its_checksum_matches(deployed, tmp_path: Path, monkeypatch):
    from pipelines.errors import DeployError
    from pipelines.model import modeling
    from pipelines.release.serving import load_production

    url, version, folder = deployed
    loaded: list[Path] = []
    real_load = modeling.load_model_dir
    monkeypatch.setattr(modeling, "load_model_dir", lambda path: loaded.append(path) or real_load(path))
    cache = tmp_path / "cache"
    assert load_production("finance", bucket_url=url, cache_dir=cache).version == version
    assert len(loaded) == 1

    # Tampered in the local cache: the cache is not trusted; a verified copy replaces it.
    cached_weights = cache / "finance" / version / "weights.pt"
    cached_weights.write_bytes(b"not torch")
    assert load_production("finance", bucket_url=url, cache_dir=cache).version == version
    assert cached_weights.read_bytes() == (folder / "weights.pt").read_bytes()
    assert len(loaded) == 2

    # Tampered in the bucket: refused before any deserialisation.
    (folder / "preprocessing.json").write_text('{"tampered": true}')
    with pytest.raises(DeployError, match=r"preprocessing.json.*expected sha256"):
        load_production("finance", bucket_url=url, cache_dir=tmp_path / "other-cache")
    assert len(loaded) == 2


def test_weights_load_with_weights_only_so_a_pickle_payload_never_runs(tmp_path: Path):
    import pickle

    from pipelines.model.modeling import WEIGHTS_FILE, load_model_dir

    model_dir = _tiny_model_dir(tmp_path / "model")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    (model_dir / WEIGHTS_FILE).write_bytes(pickle.dumps({"weight": Payload()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_model_dir(model_dir)
    assert not marker.exists(), "torch.load executed a pickle payload"


def test_every_torch_load_in_the_code_passes_weights_only_true():
    calls = []
    for path in sorted((PROJECT_ROOT / "pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((f"{path.name}:{node.lineno}", kwargs.get("weights_only")))
    assert calls, "no torch.load found: did the loader move?"
    assert all(value == "True" for _, value in calls), calls


# -- PII never in logs, alerts, reports or records -----------------------------------------------


@pytest.mark.slow
def test_pii_never_reaches_logs_alerts_reports_or_records(warehouse_home: Path, tmp_path: Path, caplog, monkeypatch):
    """A bad healthcare day (PII columns: subject id, first and last name) fails validation.

    Its patients' names must not show up in the logs, the alert email, the
    quality report, the GX results and data docs, or the run records.
    """
    import logging
    import re

    from pipelines.errors import DataQualityError

    # A short window keeps the first-run backfill small; the path is the nightly one.
    monkeypatch.setenv(
        "PIPELINES_SPECS_DIR",
        str(_spec_dir(tmp_path, "healthcare", window={"train_days": 14, "holdout_days": 3, "validation_days": 3})),
    )
    with sqlite3.connect(warehouse_home / "warehouse.db") as db:
        rows = db.execute(
            "select fake_first_name, fake_last_name from healthcare_covid_tests where event_date = ?", (DS,)
        ).fetchall()
        assert rows, "the demo warehouse has no healthcare rows on DS"
        db.execute("update healthcare_covid_tests set age = 250 where event_date = ?", (DS,))
    names = {n for row in rows for n in row if n and len(n) >= 3}
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="pipelines")
    stages.extract("healthcare", DS)
    with pytest.raises(DataQualityError) as caught:
        stages.validate("healthcare", DS)

    settings = Settings.from_env()
    texts = {"log": caplog.text, "error": str(caught.value)}
    for folder in ("outbox", "runs", "reports", "alerts-sent", "gx"):
        root = settings.home / folder
        # Every text a person or a tool reads (GX's bundled images, fonts and scripts are not ours).
        texts.update(
            {str(p): p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_FILES}
        )
    alerts = [text for where, text in texts.items() if "/outbox/" in where]
    assert len(alerts) == 1 and "PII columns masked" in alerts[0], "the alert with its sample rows was not written"
    leaked = sorted(
        (name, where) for name in names for where, text in texts.items() if re.search(rf"\b{re.escape(name)}\b", text)
    )
    assert leaked == [], leaked[:10]
