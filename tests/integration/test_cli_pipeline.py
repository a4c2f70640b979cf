"""Whole nightly runs through the CLI on the demo data, as a user runs them."""

from __future__ import annotations

import json
import sqlite3
from email import message_from_bytes, policy
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest

from ..conftest import GoldenHomes
from .airflow_support import bucket_listing, registry_counts
from .conftest import DS, FINANCE_FIRST_RUN, FINANCE_NEXT_NIGHT, LATER_DS, NEXT_DS, Cli

pytestmark = pytest.mark.slow


def local_dir(uri: str) -> Path:
    """A record's ``file://`` state URI (the embedded default) as the folder it names."""
    assert uri.startswith("file:///"), f"records carry state URIs, not local paths: {uri!r}"
    return Path(urlsplit(uri).path)


def test_a_first_night_runs_end_to_end_and_serves(finance_ran: Cli, golden: GoldenHomes):
    """The CLI's first night of finance (the session's golden run, built by `pipelines run`).

    The other verticals' first nights run through Airflow in test_airflow_dag_test.py,
    which checks the same serving contract: one vertical matrix, not two.
    """
    cli, vertical = finance_ran, "finance"
    proc = golden.built[FINANCE_FIRST_RUN]
    assert vertical in proc.stdout and "promoted" in proc.stdout

    summary = cli.record(vertical, DS, "report")
    assert summary["deployed"] and summary["approved"]
    for metric in ("accuracy", "recall", "f1"):
        row = summary["metrics"][metric]
        assert row["challenger"] >= row["threshold"]
    pointer = json.loads((cli.home / "bucket" / vertical / "production.json").read_text())
    assert pointer["version"] == summary["model_version"]

    # The serving contract: the deployed model scores raw warehouse rows on its own.
    from pipelines.release.deploy import load_production

    raw = pd.read_parquet(cli.home / "data" / vertical / "validated" / f"{DS}.parquet")
    model = load_production(vertical, bucket_url=(cli.home / "bucket").as_uri(), cache_dir=cli.home / "serve")
    prob = model.predict_proba(raw)
    assert len(prob) == len(raw) and ((prob >= 0) & (prob <= 1)).all()
    # One operating point: the threshold chosen on validation at training is what the
    # evaluation (hence the gate) scored and what serving predicts with.
    chosen = cli.record(vertical, DS, "train")["decision_threshold"]
    assert cli.record(vertical, DS, "evaluate")["challenger"]["threshold"] == chosen
    assert model.decision_threshold == chosen
    assert (model.predict(raw) == (prob >= chosen)).all()

    status = json.loads(cli("status", "--json").stdout)
    mine = next(s for s in status if s["vertical"] == vertical)
    assert mine["champion"]["model_version"] == summary["model_version"]
    assert mine["champion"]["data_version"] == summary["data_version"]
    assert mine["last_decision"]["approved"] is True


def test_rerun_of_the_same_date_reproduces_and_duplicates_nothing(finance_ran: Cli):
    cli = finance_ran  # `pipelines run finance --date DS` already ran
    first = cli.record("finance", DS, "report")
    weights = (local_dir(cli.record("finance", DS, "train")["model_dir"]) / "weights.pt").read_bytes()
    bucket, counts = bucket_listing(cli.home), registry_counts(cli.home)

    # Wipe the trained model so the rerun really retrains: same inputs -> same bytes.
    import shutil

    shutil.rmtree(local_dir(cli.record("finance", DS, "train")["model_dir"]))
    shutil.rmtree(cli.home / "checkpoints")
    rerun = cli("run", "finance", "--date", DS, fresh=True)  # another interpreter, another hash secret
    second = cli.record("finance", DS, "report")
    # Same partitions, spec and code: the snapshot is recognised without serialising the window.
    assert "inputs unchanged, snapshot" in rerun.stderr

    assert second["data_version"] == first["data_version"]
    assert second["model_version"] == first["model_version"]
    assert (local_dir(cli.record("finance", DS, "train")["model_dir"]) / "weights.pt").read_bytes() == weights
    assert cli.record("finance", DS, "snapshot")["created"] is False
    # The promoted model is not re-judged against itself: the run's summary is reproduced
    # (only the validation and preparation lines differ: the rerun checked one day, the first run a year).
    per_extract = {"suite", "preparation"}
    assert {k: v for k, v in second.items() if k not in per_extract} == {
        k: v for k, v in first.items() if k not in per_extract
    }
    assert second["deployed"] is True
    assert bucket_listing(cli.home) == bucket
    assert registry_counts(cli.home) == counts


def test_a_warm_started_night_reruns_to_the_same_model(finance_next_night: Cli, golden: GoldenHomes):
    """Night 2 fine-tunes night 1's champion; rerunning night 2 (model wiped) reproduces it bit for bit."""
    import shutil

    cli = finance_next_night  # `pipelines run finance --date DS`, then `--date NEXT_DS`, already ran
    assert golden.built[FINANCE_NEXT_NIGHT].returncode == 0
    champion = cli.record("finance", DS, "train")["model_version"]
    first = cli.record("finance", NEXT_DS, "train")
    assert first["warm_start"]["from"] == champion
    assert first["tuning"]["swept"] is False  # a Saturday after an approval: tonight reuses the sweep of DS
    weights = (local_dir(first["model_dir"]) / "weights.pt").read_bytes()

    shutil.rmtree(local_dir(first["model_dir"]))
    shutil.rmtree(cli.home / "checkpoints")
    cli("run", "finance", "--date", NEXT_DS, fresh=True)  # production now serves this night's own model
    again = cli.record("finance", NEXT_DS, "train")
    assert (again["model_version"], again["warm_start"]) == (first["model_version"], first["warm_start"])
    assert (local_dir(again["model_dir"]) / "weights.pt").read_bytes() == weights


def test_rerun_of_an_older_date_never_replaces_a_newer_champion(finance_forced_later: Cli):
    cli, later = finance_forced_later, LATER_DS  # DS ran, then LATER_DS was forced: a newer champion
    newer = json.loads((cli.home / "bucket" / "finance" / "production.json").read_text())
    assert newer["ds"] == later

    import shutil

    shutil.rmtree(cli.home / "runs" / "finance" / DS)  # as if the old run were cleared in the UI
    cli("run", "finance", "--date", DS)

    assert json.loads((cli.home / "bucket" / "finance" / "production.json").read_text())["version"] == newer["version"]
    deploy = cli.record("finance", DS, "deploy")
    assert deploy["deployed"] is False
    assert "later date" in deploy["why"] or not cli.record("finance", DS, "gate")["approved"]


def test_a_rolled_back_model_does_not_come_back_without_a_force(finance_forced_later: Cli):
    """Issue 8: rollback C -> A, rerun C's night: not promoted, and the run says why."""
    cli, later = finance_forced_later, LATER_DS  # DS ran (A), then LATER_DS was forced (C)
    first = cli.record("finance", DS, "deploy")["model_version"]
    second = cli.record("finance", later, "deploy")["model_version"]
    assert second != first

    refused = cli("rollback", "finance", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "needs a reason" in refused.stderr
    cli("rollback", "finance", "--reason", "recall complaints from the review team")

    rerun = cli("run", "finance", "--date", later)
    assert "promoted" not in rerun.stdout
    assert json.loads((cli.home / "bucket" / "finance" / "production.json").read_text())["version"] == first
    gate = cli.record("finance", later, "gate")
    block = next(r for r in gate["rules"] if r["rule"] == "rollback_block")
    assert not gate["approved"] and not block["passed"]
    assert "because recall complaints from the review team; force it" in block["detail"]
    assert cli.record("finance", later, "report")["deployed"] is False

    status = next(s for s in json.loads(cli("status", "--json").stdout) if s["vertical"] == "finance")
    assert status["production"]["state"] == f"rolled back from {second}"
    assert status["production"]["reason"] == "recall complaints from the review team"
    assert [b["model_version"] for b in status["blocked"]] == [second]
    # Forcing or unblocking lets it back: tests/unit/test_rollout.py (deploy) and test_promotion.py (gate).


def corrupt_day(warehouse: Path, ds: str) -> int:
    with sqlite3.connect(warehouse) as db:
        cur = db.execute("update finance_loans set age = 500, status = 'unknown' where event_date = ?", (ds,))
        return cur.rowcount


def test_corrupted_partition_is_quarantined_alerted_and_never_trained(finance_ran: Cli):
    cli = finance_ran  # `pipelines run finance --date DS` already ran
    pointer_before = (cli.home / "bucket" / "finance" / "production.json").read_bytes()
    assert corrupt_day(cli.home / "warehouse.db", NEXT_DS) > 0

    proc = cli("run", "finance", "--date", NEXT_DS, check=False)

    assert proc.returncode == 4, proc.stderr
    assert "BLOCKED (data quality)" in proc.stdout
    assert (cli.home / "data" / "finance" / "quarantine" / f"{NEXT_DS}.parquet").exists()
    assert not (cli.home / "data" / "finance" / "validated" / f"{NEXT_DS}.parquet").exists()
    assert (cli.home / "data" / "finance" / "validated" / f"{DS}.parquet").exists()  # valid data kept
    assert not (cli.home / "runs" / "finance" / NEXT_DS / "train.json").exists()
    assert (cli.home / "bucket" / "finance" / "production.json").read_bytes() == pointer_before

    mails = sorted((cli.home / "outbox").glob("*data-quality*"))
    assert len(mails) == 1
    mail = message_from_bytes(mails[0].read_bytes(), policy=policy.default)
    body = mail.get_body(("plain",)).get_content()
    assert f"python -m pipelines run finance --date {NEXT_DS}" in body  # a CLI run: the CLI rerun hint
    assert f"finance {NEXT_DS}" in mail["Subject"]
    assert "expect_column_values_to_be_between on age" in body
    assert "expect_column_values_to_be_in_set on status" in body
    assert "500" in body and "unknown" in body

    report = json.loads((cli.home / "reports" / "finance" / NEXT_DS / "quality.json").read_text())
    assert report["success"] is False and report["days"] == [NEXT_DS]


def test_bad_input_gets_specific_errors_and_exit_codes(cli: Cli, tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    specs = tmp_path / "specs"
    specs.mkdir()
    spec = (Path(__file__).parents[2] / "verticals" / "finance.yaml").read_text()
    (specs / "finance.yaml").write_text(spec.replace("  thresholds:", "  thresholdz:"))
    missing = tmp_path / "nowhere" / "warehouse.db"
    commands = {
        "unknown": (cli, ("run", "retail", "--date", DS)),
        "bad_date": (cli, ("run", "finance", "--date", "2026-02-30")),
        "out_of_order": (cli, ("train", "finance", "--date", DS)),
        "broken": (Cli(cli.home, {"PIPELINES_SPECS_DIR": str(specs)}), ("run", "finance", "--date", DS)),
        "unreachable": (
            Cli(cli.home, {"AIRFLOW_CONN_WAREHOUSE_DEFAULT": f"sqlite:///{missing}"}),
            ("extract", "finance", "--date", DS),
        ),
    }
    # Started together (an interpreter start each), checked one by one.  Only one command may take the
    # run lease of (finance, DS) at a time, or a second would be told "already running": the train runs
    # beside the refusals that come before any lease, the extract after it.
    later = {"unreachable"}
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {
            name: pool.submit(runner, *args, check=False)
            for name, (runner, args) in commands.items()
            if name not in later
        }
        done = {name: future.result() for name, future in futures.items()}
    done.update({name: runner(*args, check=False) for name, (runner, args) in commands.items() if name in later})

    unknown = done["unknown"]
    assert unknown.returncode == 2 and "unknown vertical 'retail'" in unknown.stderr
    assert "finance" in unknown.stderr  # lists the known ones

    bad_date = done["bad_date"]
    assert bad_date.returncode == 2 and "use YYYY-MM-DD" in bad_date.stderr

    out_of_order = done["out_of_order"]
    assert out_of_order.returncode == 8 and "run `python -m pipelines snapshot finance" in out_of_order.stderr

    broken = done["broken"]
    assert broken.returncode == 2 and "gate.thresholdz" in broken.stderr

    unreachable = done["unreachable"]
    assert unreachable.returncode == 3 and "unreachable" in unreachable.stderr
