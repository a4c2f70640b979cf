"""Data docs: built by a real GX validation, loading nothing from the internet, listing the validation."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from pipelines.config import VerticalSpec
from pipelines.data.data_docs import SITE_VENDOR_DIR, external_resources, make_offline, site_root
from pipelines.data.quality import validate_frame
from pipelines.models_view.app import ViewAuth, create_app

SUITE = {
    "name": "demo",
    "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 10}},
    ],
}
DS = "2026-11-27"
LOCAL_REF = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"#?]+)[^"]*\"""", re.IGNORECASE)


@pytest.fixture
def spec() -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "demo",
            "description": "test vertical",
            "owner": "tests",
            "source": {"kind": "sql", "table": "t"},
            "key": "id",
            "label": {"column": "y", "positive": 1},
            "features": {"numeric": ["x"]},
            "window": {"train_days": 10, "holdout_days": 3},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["owner@example.com"]},
        }
    )


@pytest.fixture
def docs_settings(settings, tmp_path):
    folder = tmp_path / "expectations"
    folder.mkdir()
    (folder / "demo.json").write_text(json.dumps(SUITE))
    return replace(settings, expectations_dir=folder, public_url="https://airflow.example.com")


def test_validation_builds_offline_data_docs_that_list_it(spec, docs_settings):
    frame = pd.DataFrame({"id": [1, 2, 2], "x": [1.0, 50.0, 2.0], "y": [0, 1, 0], "event_date": [DS] * 3})

    report = validate_frame(frame, spec, ds=DS, days=[DS], settings=docs_settings)

    root = site_root(docs_settings, "demo")
    pages = sorted(root.rglob("*.html"))
    assert {p.relative_to(root).parts[0] for p in pages} >= {"index.html", "expectations", "validations"}
    for page in pages:
        html = page.read_text()
        assert external_resources(html) == [], f"{page} loads from the internet"
        assert "integrity=" not in html  # CDN pins would block the same-origin copies
        local = LOCAL_REF.findall(html)
        assert any("static/vendor/bootstrap-4.3.1/bootstrap.min.css" in ref for ref in local)
        for ref in local:
            assert (page.parent / unquote(ref)).resolve().is_file(), f"{page} references missing {ref}"
    # The links in the report are HTTP, under the configured base URL, never a file on the worker.
    assert report.data_docs == "https://airflow.example.com/models/docs/demo/index.html"
    assert report.data_docs_page is not None
    prefix = "https://airflow.example.com/models/docs/demo/"
    assert report.data_docs_page.startswith(prefix + "validations/demo/demo-2026-11-27/")
    page = report.data_docs_page.removeprefix(prefix)
    assert (root / page).is_file()
    # The index lists this validation (its row links the page) and the JS that renders the table is local.
    index = (root / "index.html").read_text()
    assert f"'_table_row_link_path': '{page}'" in index
    assert (root / SITE_VENDOR_DIR / "bootstrap-table-1.19.1" / "bootstrap-table.min.js").is_file()
    assert report.rows_per_day == {DS: 3}


def test_make_offline_rewrites_cdn_links_at_any_depth_and_only_new_pages(tmp_path: Path):
    root = tmp_path / "site"
    deep = root / "validations" / "s" / "run" / "t"
    deep.mkdir(parents=True)
    cdn = (
        '<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>'
        '<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>'
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js" '
        'integrity="sha384-x" crossorigin="anonymous"></script>'
        "<style>.x { background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
        "full_logo_dark.png') }</style>"
        '<a href="https://greatexpectations.io">GX</a>'
    )
    (root / "index.html").write_text(cdn)
    (deep / "page.html").write_text(cdn)

    assert len(make_offline(root)) == 2

    index, page = (root / "index.html").read_text(), (deep / "page.html").read_text()
    assert 'href="static/vendor/bootstrap-4.3.1/bootstrap.min.css"' in index
    assert 'src="../../../../static/vendor/jquery-3.7.1/jquery.min.js"' in page
    assert "integrity" not in page and "crossorigin" not in page
    assert external_resources(index) == [] and external_resources(page) == []
    assert 'href="https://greatexpectations.io"' in page  # a link to click is not a load
    assert make_offline(root) == []  # idempotent
    (root / "old.html").write_text(cdn)
    assert make_offline(root, since=(root / "old.html").stat().st_mtime + 10) == []  # older pages are not reread


def test_a_site_built_before_the_assets_were_vendored_is_brought_along_once(tmp_path: Path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text('<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>')
    old = (root / "index.html").stat().st_mtime

    assert make_offline(root, since=old + 10) == [root / "index.html"]
    assert external_resources((root / "index.html").read_text()) == []


def _stub_user(request: Request) -> str:
    """Stands in for Airflow's login (the real one is tested in tests/integration/test_models_view.py)."""
    if request.headers.get("authorization") != "Bearer ok":
        raise HTTPException(401, "not logged in")
    return "viewer"


def test_models_view_redirects_a_date_to_its_newest_validation_result_behind_the_login(settings):
    auth = ViewAuth(user=_stub_user, can_read=lambda _user, _vertical: True, login_url=lambda _next: None)
    client = TestClient(create_app(auth, settings_factory=lambda: settings), root_path="/models")
    runs = site_root(settings, "finance") / "validations" / "finance" / f"finance-{DS}"
    for stamp, text in (("20261128T020000.000000Z", "first try"), ("20261128T090000.000000Z", "after the fix")):
        (runs / stamp).mkdir(parents=True)
        (runs / stamp / "finance.html").write_text(f"<html><body>{text}</body></html>")

    assert client.get(f"/docs/finance/runs/{DS}").status_code == 401  # the same login as every page
    headers = {"authorization": "Bearer ok"}
    response = client.get(f"/docs/finance/runs/{DS}", headers=headers, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"../validations/finance/finance-{DS}/20261128T090000.000000Z/finance.html"
    assert "after the fix" in client.get(f"/docs/finance/runs/{DS}", headers=headers).text
    assert client.get("/docs/finance/runs/2026-11-01", headers=headers).status_code == 404
    assert client.get("/docs/finance/runs/not-a-date", headers=headers).status_code == 404
