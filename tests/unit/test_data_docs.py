"""Data docs: built by a real GX validation, loading nothing from the internet, listing the validation."""

from __future__ import annotations

import copy
import json
import re
import shutil
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
BUILT_AT = re.compile(r"\?d=\d{8}T[\d.]+Z")
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


def _site_builder(context, config: dict):
    from great_expectations.render.renderer.site_builder import SiteBuilder

    return SiteBuilder(
        data_context=context,
        store_backend=config["store_backend"],
        site_name="local_site",
        site_index_builder=config.get("site_index_builder"),
        site_section_builders=config.get("site_section_builders"),
        runtime_environment={"root_directory": context.root_directory},
    )


def _with_gx_builders(config: dict) -> dict:
    """The project's site config with GX's own builders (and the same views)."""
    config = copy.deepcopy(config)
    module = "great_expectations.render.renderer.site_builder"
    config["site_index_builder"].update(module_name=module, class_name="DefaultSiteIndexBuilder")
    for section in config["site_section_builders"].values():
        section.update(module_name=module, class_name="DefaultSiteSectionBuilder")
    return config


def test_the_project_builders_write_the_index_and_pages_gx_writes_and_drop_pages_whose_result_is_gone(
    spec, docs_settings, tmp_path
):
    import great_expectations as gx

    days = ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"]
    pages = []
    for n, day in enumerate(days):
        frame = pd.DataFrame({"id": [1, 2, 3], "x": [1.0, 2.0, 50.0 if n == 2 else 3.0], "y": [0, 1, 0]})
        report = validate_frame(frame.assign(event_date=day), spec, ds=day, days=[day], settings=docs_settings)
        pages.append(report.data_docs_page.split("/models/docs/demo/", 1)[1])
    project = docs_settings.home / "gx" / "demo"
    # One night's stored result is lost (its page stays until a build notices).
    [lost] = (project / "gx" / "uncommitted" / "validations").rglob(f"*{days[1]}*/*/*.json")
    lost.unlink()
    sites = {}
    for builders in ("project", "gx"):
        copy_root = tmp_path / builders
        shutil.copytree(project, copy_root)
        context = gx.get_context(mode="file", project_root_dir=str(copy_root))
        config = dict(context.variables.data_docs_sites["local_site"])
        assert config["site_index_builder"]["class_name"] == "ListedSiteIndexBuilder"
        site = _site_builder(context, config if builders == "project" else _with_gx_builders(config))
        site.build()  # every page again, then the index
        root = copy_root / "gx" / "uncommitted" / "data_docs" / "local_site"
        # Pages differ only in the build time GX stamps on its logo's URL.
        sites[builders] = {
            p.relative_to(root).as_posix(): BUILT_AT.sub("", p.read_text()) for p in root.rglob("*.html")
        }

    assert sites["project"] == sites["gx"]
    index = sites["project"]["index.html"]
    # Newest first, and the lost night's page gone with its result.
    assert [index.index(page) for page in reversed([pages[0], pages[2], pages[3]])] == sorted(
        index.index(page) for page in [pages[0], pages[2], pages[3]]
    )
    assert pages[1] not in index and pages[1] not in sites["project"]
    assert all(page in sites["project"] for page in (pages[0], pages[2], pages[3]))


@pytest.mark.parametrize(
    "key",
    [
        ("demo", "demo-2026-11-27", "20261127T010203.000004Z", "batch"),
        ("suite", "with", "dots", "run", "20261127T010203.000004Z", "batch"),  # a dotted suite name, split
        ("demo", "__none__", "2026-11-27T01:02:03+00:00", "batch"),  # not GX's key format: GX's own parser
    ],
)
def test_result_keys_read_without_dateutil_equal_gxs(key):
    from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

    from pipelines.data.gx_views import result_key

    ours, theirs = result_key(key), ValidationResultIdentifier.from_tuple(key)
    assert ours == theirs
    assert ours.run_id.run_time == theirs.run_id.run_time
    assert ours.to_tuple() == theirs.to_tuple()
