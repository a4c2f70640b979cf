"""``dvc exp run`` in a fresh clone: experiments never touch production, and DVC sees their metrics.

The clone holds this checkout's files in a new git repo with no ``dvc.lock``
(what ``git clone`` gives), and a production data root already in use: a
warehouse, a registry with a decision, an outbox with a message, SMTP
configured.  One vertical runs through DVC exactly as a user runs it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT

from .conftest import DS

pytestmark = pytest.mark.slow
VERTICAL = "finance"  # the fastest vertical; its spec mails owners on every outcome (report_on)
STAGE = f"decide@{VERTICAL}"


def _run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _fresh_clone(dest: Path, env: dict[str, str]) -> Path:
    """This checkout's files (tracked and new, as they are now) committed to a new git repo.

    One edit before the commit: the finance spec sweeps 2 trials instead of 12.  The
    test is about where an experiment writes and what DVC sees, not the model's
    quality; a 2-trial sweep runs the same stages and writes the same files.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = PROJECT_ROOT / rel
        if src.is_file():  # a file deleted in the working tree is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    spec_path = dest / "verticals" / f"{VERTICAL}.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["model"]["tuning"]["trials"] = 2
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    _run(dest, env, "git", "init", "-q", "-b", "main")
    _run(dest, env, "git", "add", "-A")
    _run(dest, env, "git", "commit", "-q", "-m", "fresh clone")
    return dest


def _production_state(home: Path) -> None:
    """A production data root in use: warehouse (finance only, to seed fast), a registry row, an outbox message."""
    from pipelines.demo.seed import seed_warehouse
    from pipelines.registry.store import Registry

    seed_warehouse(f"sqlite:///{home / 'warehouse.db'}", verticals=[VERTICAL])
    with Registry.from_url(f"sqlite:///{home / 'registry.db'}") as registry:
        registry.record_decision(
            vertical=VERTICAL,
            ds="2026-11-26",
            model_version="mv-0123456789ab",
            approved=False,
            reasons=[{"rule": "accuracy", "passed": False, "blocking": True, "detail": "below the floor"}],
            actor="airflow:scheduled__2026-11-26T02:00:00+00:00",
        )
    outbox = home / "outbox"
    outbox.mkdir()
    (outbox / "20261126T020000000000-an-earlier-alert.eml").write_text("Subject: an earlier alert\n\nhello\n")


def _fingerprint(home: Path) -> dict[str, object]:
    """Everything production holds that an experiment could change, by content."""
    with sqlite3.connect(home / "registry.db") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table' order by name")]
        rows = {t: sorted(map(repr, db.execute(f'select * from "{t}"'))) for t in tables}
    files = {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.relative_to(home).parts[0] not in ("experiments", "pycache")
    }
    return {"registry": rows, "files": files}


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def repo(tmp_path: Path, smtp_server) -> tuple[Path, dict[str, str]]:
    """A fresh clone with a production data root in ``.state/`` and SMTP configured (the aiosmtpd fixture)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_", "GIT_", "DVC_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(PROJECT_ROOT / ".state" / "pycache"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml: this venv
    env["AIRFLOW_CONN_SMTP_DEFAULT"] = os.environ["AIRFLOW_CONN_SMTP_DEFAULT"]  # production mail is configured
    env.update(
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    clone = _fresh_clone(tmp_path / "clone", env)
    (clone / ".state").mkdir()
    _production_state(clone / ".state")
    return clone, env


def test_dvc_exp_run_leaves_production_alone_and_reports_metrics(repo: tuple[Path, dict[str, str]], smtp_server):
    clone, env = repo
    production = clone / ".state"
    experiments = production / "experiments"
    before = _fingerprint(production)
    warehouse = hashlib.sha256((production / "warehouse.db").read_bytes()).hexdigest()
    assert not (clone / "dvc.lock").exists()

    _run(clone, env, "dvc", "exp", "run", STAGE)

    # Production: no new registry row, no new or changed file (outbox, warehouse), no email, no deploy.
    assert _fingerprint(production) == before
    assert hashlib.sha256((production / "warehouse.db").read_bytes()).hexdigest() == warehouse
    assert smtp_server.messages == []
    assert not (production / "bucket").exists()
    # The run really happened, in the experiment profile: its decision, its report "sent" to its outbox.
    decision = json.loads((clone / "results" / VERTICAL / "decision.json").read_text())
    assert decision["approved"] is True and decision["deploy"].startswith("dry run")
    with sqlite3.connect(experiments / "registry.db") as db:
        assert db.execute("select count(*) from decisions where vertical = ?", (VERTICAL,)).fetchone()[0] == 1
    mails = [p.read_text() for p in (experiments / "outbox").glob("*.eml")]
    assert len(mails) == 1 and f"{VERTICAL} {DS}: approved" in mails[0]

    # DVC sees the metrics at their stable paths, in the workspace and in the experiment it recorded.
    metrics = json.loads((clone / "results" / VERTICAL / "metrics.json").read_text())
    assert {"accuracy", "recall", "f1", "auroc"} <= metrics.keys()
    shown = _run(clone, env, "dvc", "metrics", "show", "--json").stdout
    assert json.loads(shown)[""]["data"][f"results/{VERTICAL}/metrics.json"]["data"] == metrics
    table = _run(clone, env, "dvc", "exp", "show", "--csv", "--no-pager").stdout
    recorded = [row for row in _csv(table) if row["Experiment"] and row.get("accuracy")]
    assert recorded and float(recorded[0]["accuracy"]) == pytest.approx(metrics["accuracy"])

    # Commit the results as a baseline; a gate-only experiment re-runs only the decision and flips it.
    _run(clone, env, "git", "add", "-A")
    _run(clone, env, "git", "commit", "-q", "-m", "baseline results")
    proc = _run(
        clone, env, "dvc", "exp", "run", "-S", f"verticals/{VERTICAL}.yaml:gate.thresholds.accuracy=0.99", STAGE
    )
    assert f"'ingest@{VERTICAL}' didn't change" in proc.stdout
    assert f"'train@{VERTICAL}' didn't change" in proc.stdout
    diff = _run(clone, env, "dvc", "metrics", "diff", "--json").stdout
    approved = json.loads(diff)[f"results/{VERTICAL}/gate.json"]["approved"]
    assert (approved["old"], approved["new"]) == (True, False)

    # Still nothing in production, though the rejection was mailed (to the experiment outbox only).
    assert _fingerprint(production) == before
    assert smtp_server.messages == []
    assert len(list((experiments / "outbox").glob("*.eml"))) == 2
