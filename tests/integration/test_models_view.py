"""The models view (plugins/models_view.py) over HTTP.

Two tiers in one file:

* in-process (fast): the FastAPI app with a stub `ViewAuth`, for what does not
  depend on Airflow: escaping, permission filtering, path traversal, JSON shape.
* a real ``airflow api-server`` (marked airflow + slow): its own AIRFLOW_HOME
  and SQLite DB, the repo's plugins folder, the simple auth manager, and a
  PIPELINES_HOME whose registry this test fills through `Registry`.  Nothing
  is mocked: the plugin is loaded by Airflow and guarded by Airflow's login.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from pipelines.config import PROJECT_ROOT, Settings, load_spec_file
from pipelines.models_view.app import ViewAuth, create_app
from pipelines.models_view.overview import data_docs_root
from pipelines.registry.store import Registry

from .airflow_support import AIRFLOW_BIN, airflow_env, free_port, migrated_airflow_home

STARTUP_TIMEOUT_S = 180
RUN_ID = "scheduled__2026-11-28T02:00:00+00:00"
CHAMPION = "mv-d4c1a9e07b12"
REJECTED = "mv-b7e2f0c3a944"
#: Outside the data docs site, inside PIPELINES_HOME: what a traversal would be after.
SECRET = "registry-password-do-not-serve"


def _settings(home: Path) -> Settings:
    return Settings(
        home=home,
        specs_dir=PROJECT_ROOT / "verticals",
        expectations_dir=PROJECT_ROOT / "expectations",
        bucket_url=(home / "bucket").as_uri(),
        registry_url=f"sqlite:///{home / 'registry.db'}",
        dvc_remote=str(home / "dvc-remote"),
    )


def _rules(metrics: dict[str, float], floors: dict[str, float]) -> list[dict[str, Any]]:
    """Gate rule records shaped like `RuleResult.to_dict` writes them."""
    rules = []
    for metric, floor in sorted(floors.items()):
        value = metrics[metric]
        passed = value >= floor
        verb = "meets" if passed else "is below"
        rules.append(
            {
                "rule": f"threshold:{metric}",
                "passed": passed,
                "observed": value,
                "required": floor,
                "detail": f"{metric} {value:.4f} {verb} floor {floor:.4f}",
                "margin": round(value - floor, 6),
            }
        )
    return rules


def _floors(vertical: str) -> dict[str, float]:
    """The gate floors of the repo's spec (so the demo agrees with the page's pass marks)."""
    return {
        str(k): v for k, v in load_spec_file(PROJECT_ROOT / "verticals" / f"{vertical}.yaml").gate.thresholds.items()
    }


def _scores(floors: dict[str, float], above: float) -> dict[str, float]:
    return {metric: round(min(floor + above, 0.99), 3) for metric, floor in floors.items()}


FINANCE_FLOORS = _floors("finance")
GOOD = _scores(FINANCE_FLOORS, 0.05)
BETTER = _scores(FINANCE_FLOORS, 0.065)
#: Above every floor but recall's: the rejected challenger.
WEAK = {**_scores(FINANCE_FLOORS, 0.02), "recall": round(FINANCE_FLOORS["recall"] - 0.038, 3)}
REJECTION = f"recall {WEAK['recall']:.4f} is below floor {FINANCE_FLOORS['recall']:.4f}"


def populate_registry(settings: Settings) -> None:
    """A few nights of history: approvals, a rejection, a forced promotion and a rollback.

    Also used for the screenshot in docs/models-view.md.
    """
    registry = Registry.from_settings(settings)
    good, better, weak = GOOD, BETTER, WEAK
    models = [
        ("mv-5a0e3f1d2c88", "dv-0c9d1e2f3a4b", "2026-11-25", "scheduled__2026-11-25T02:00:00+00:00", good),
        (REJECTED, "dv-1d2e3f4a5b6c", "2026-11-26", "scheduled__2026-11-26T02:00:00+00:00", weak),
        ("mv-9f8e7d6c5b4a", "dv-2e3f4a5b6c7d", "2026-11-27", "scheduled__2026-11-27T02:00:00+00:00", weak),
        (CHAMPION, "dv-3f4a5b6c7d8e", "2026-11-28", RUN_ID, better),
    ]
    for version, data_version, ds, run_id, metrics in models:
        registry.record_model(
            vertical="finance",
            model_version=version,
            data_version=data_version,
            ds=ds,
            dag_run_id=run_id,
            metrics=metrics,
            lineage={"dag_run_id": run_id},
        )
    first, _, forced, _ = models
    registry.record_decision(
        vertical="finance", ds=first[2], model_version=first[0], approved=True, reasons=_rules(good, FINANCE_FLOORS)
    )
    registry.record_deployment(vertical="finance", model_version=first[0], actor=f"airflow:{first[3]}", ds=first[2])
    registry.record_decision(
        vertical="finance",
        ds="2026-11-26",
        model_version=REJECTED,
        approved=False,
        champion_version=first[0],
        reasons=[
            *_rules(weak, FINANCE_FLOORS),
            {
                "rule": "champion:recall",
                "passed": False,
                "observed": weak["recall"],
                "required": good["recall"] - 0.03,
                "detail": f"recall {weak['recall']:.4f} is worse than champion {good['recall']:.4f} - tolerance 0.0300",
                "margin": round(weak["recall"] - good["recall"] + 0.03, 6),
            },
        ],
    )
    registry.record_decision(
        vertical="finance",
        ds=forced[2],
        model_version=forced[0],
        approved=True,
        forced=True,
        forced_reason="schema change upstream; retrained model needed tonight (ticket FIN-212)",
        actor="cli:alice",
        champion_version=first[0],
        reasons=_rules(weak, FINANCE_FLOORS),
    )
    registry.record_deployment(vertical="finance", model_version=forced[0], actor="cli:alice", ds=forced[2])
    registry.record_deployment(
        vertical="finance",
        model_version=first[0],
        actor="cli:oncall",
        action="rollback",
        ds=forced[2],
        reason="forced model misroutes loans",
    )
    registry.record_decision(
        vertical="finance",
        ds="2026-11-28",
        model_version=CHAMPION,
        approved=True,
        champion_version=first[0],
        reasons=_rules(better, FINANCE_FLOORS),
    )
    registry.record_deployment(vertical="finance", model_version=CHAMPION, actor=f"airflow:{RUN_ID}", ds="2026-11-28")

    health_floors = _floors("healthcare")
    health = _scores(health_floors, 0.08)
    registry.record_model(
        vertical="healthcare",
        model_version="mv-1b2c3d4e5f60",
        data_version="dv-9a8b7c6d5e4f",
        ds="2026-11-28",
        dag_run_id=RUN_ID,
        metrics=health,
        lineage={},
    )
    registry.record_decision(
        vertical="healthcare",
        ds="2026-11-28",
        model_version="mv-1b2c3d4e5f60",
        approved=True,
        reasons=_rules(health, health_floors),
    )
    registry.record_deployment(
        vertical="healthcare", model_version="mv-1b2c3d4e5f60", actor=f"airflow:{RUN_ID}", ds="2026-11-28"
    )

    docs = data_docs_root(settings, "finance")
    (docs / "validations").mkdir(parents=True)
    (docs / "index.html").write_text("<html><body><h1>Data docs: finance suite</h1></body></html>")
    (docs / "validations" / "run.html").write_text("<html><body>validation result</body></html>")
    (settings.home / "secret.txt").write_text(SECRET)


# -- in-process: the app with a stub login -------------------------------------

STUB_TOKEN = "stub-token"


def _stub_auth(readable: set[str] | None = None) -> ViewAuth:
    def user(request: Request) -> str:
        if request.headers.get("authorization") != f"Bearer {STUB_TOKEN}":
            raise HTTPException(401, "Not authenticated")
        return "tester"

    return ViewAuth(
        user=user,
        can_read=lambda _user, vertical: readable is None or vertical in readable,
        login_url=lambda next_url: f"/auth/login?next={next_url}",
    )


@pytest.fixture
def state(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path / "state")
    settings.home.mkdir()
    populate_registry(settings)
    return settings


def _client(settings: Settings, readable: set[str] | None = None) -> TestClient:
    from fastapi import FastAPI

    root = FastAPI()
    root.mount("/models", create_app(_stub_auth(readable), settings_factory=lambda: settings))
    return TestClient(root, headers={"Authorization": f"Bearer {STUB_TOKEN}"})


def test_every_route_needs_the_injected_login(state: Settings):
    client = _client(state)
    anonymous = TestClient(client.app)
    for path in ("/models/", "/models/verticals/finance", "/models/api/verticals", "/models/docs/finance/index.html"):
        assert anonymous.get(path).status_code == 401, path
        assert client.get(path).status_code == 200, path
    browser = anonymous.get("/models/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert browser.status_code == 307
    assert browser.headers["location"].startswith("/auth/login?next=")
    # FastAPI's own API docs would not be behind the login: they are switched off.
    for path in ("/models/openapi.json", "/models/docs", "/models/redoc"):
        assert client.get(path).status_code == 404, path


def test_page_escapes_registry_text_and_links_the_dag_run(state: Settings):
    Registry.from_settings(state).record_decision(
        vertical="finance",
        ds="2026-11-29",
        model_version=REJECTED,
        approved=False,
        reasons=[{"rule": "x", "passed": False, "detail": "<script>alert('x')</script>"}],
    )
    page = _client(state).get("/models/").text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert f'href="/dags/finance/runs/{RUN_ID.replace(":", "%3A").replace("+", "%2B")}"' in page
    assert 'href="/models/docs/finance/index.html"' in page


HOSTILE = "<script>alert('pwned')</script>"
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'


def test_hostile_registry_text_is_escaped_on_every_page(state: Settings):
    """Free text other processes write (reasons, actors, rule details) never becomes markup."""
    registry = Registry.from_settings(state)
    registry.record_decision(
        vertical="finance",
        ds="2026-11-29",
        model_version=REJECTED,
        approved=True,
        forced=True,
        forced_reason=f"forced {HOSTILE}",
        actor=f"cli:{HOSTILE_ATTR}",
        champion_version=CHAMPION,
        reasons=[{"rule": "threshold:recall", "passed": False, "detail": f"recall {HOSTILE}"}],
    )
    registry.record_deployment(vertical="finance", model_version=REJECTED, actor=f"cli:{HOSTILE_ATTR}", ds="2026-11-29")
    registry.record_deployment(
        vertical="finance",
        model_version=CHAMPION,
        actor=f"cli:{HOSTILE_ATTR}",
        action="rollback",
        ds="2026-11-29",
        reason=f"rolled back {HOSTILE}",
    )
    client = _client(state)
    pages = {
        "index": client.get("/models/").text,
        "vertical": client.get("/models/verticals/finance").text,
        # A hostile path segment comes back in the 404 page's message.
        "404": client.get(f"/models/verticals/{quote(HOSTILE_ATTR, safe='')}", headers={"Accept": "text/html"}).text,
    }
    for name, page in pages.items():
        assert "<script>alert('pwned')" not in page, name
        assert "<img src=x" not in page, name
    vertical = pages["vertical"]
    assert "forced: forced &lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in vertical  # the decision
    assert "✗ recall &lt;script&gt;" in vertical  # the failed rule
    assert "rolled back &lt;script&gt;" in vertical  # the audit trail's reason
    assert "cli:&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in vertical  # the actor
    assert "unknown vertical &#39;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;&#39;" in pages["404"]
    # The page's own script (the frame helper) is still there: escaping did not eat the template.
    assert vertical.count("<script>") == 1


def test_user_sees_only_verticals_whose_runs_they_may_read(state: Settings):
    client = _client(state, readable={"healthcare"})
    listed = client.get("/models/api/verticals").json()
    assert [v["name"] for v in listed["verticals"]] == ["healthcare"]
    assert listed["hidden"] == 3
    assert client.get("/models/api/verticals/finance").status_code == 403
    assert client.get("/models/docs/finance/index.html").status_code == 403
    assert client.get("/models/api/verticals/nosuch").status_code == 404


def test_detail_json_has_champion_checks_and_history(state: Settings):
    data = _client(state).get("/models/api/verticals/finance").json()
    assert data["champion"]["model_version"] == CHAMPION
    assert data["champion"]["ds"] == "2026-11-28"
    assert {c["metric"]: c["passed"] for c in data["champion"]["checks"]} == dict.fromkeys(FINANCE_FLOORS, True)
    assert {c["metric"]: c["value"] for c in data["champion"]["checks"]} == BETTER
    assert [d["outcome"] for d in data["decisions"]] == ["approved", "forced", "rejected", "approved"]
    assert [d["is_champion"] for d in data["decisions"]] == [True, False, False, False]
    forced = data["decisions"][1]
    assert forced["actor"] == "cli:alice" and forced["deployed_at"] is not None  # deployed, then rolled back
    assert data["decisions"][2]["deployed_at"] is None  # the rejected one never was
    assert [(d["action"], d["from_version"], d["to_version"]) for d in data["deployments"]][:2] == [
        ("deploy", "mv-5a0e3f1d2c88", CHAMPION),
        ("rollback", "mv-9f8e7d6c5b4a", "mv-5a0e3f1d2c88"),
    ]
    assert data["links"]["champion_dag_run"].startswith("/dags/finance/runs/")
    # The audit trail: the force and the rollback with their reasons, and the block the rollback left.
    trail = {(e["kind"], e["model_version"]): e for e in data["events"]}
    assert trail[("forced", "mv-9f8e7d6c5b4a")]["reason"].startswith("schema change upstream")
    assert trail[("rollback", "mv-5a0e3f1d2c88")]["reason"] == "forced model misroutes loans"
    assert trail[("block", "mv-9f8e7d6c5b4a")]["actor"] == "cli:oncall"
    assert data["blocked_versions"] == {"mv-9f8e7d6c5b4a": data["blocked_versions"]["mv-9f8e7d6c5b4a"]}
    assert "forced model misroutes loans" in data["blocked_versions"]["mv-9f8e7d6c5b4a"]


def test_page_shows_the_trail_and_marks_decisions_never_deployed(state: Settings):
    page = _client(state).get("/models/verticals/finance", headers={"Accept": "text/html"}).text
    trail = page.split("<h3>Audit trail</h3>")[1]
    assert "forced model misroutes loans" in trail and "badge block" in trail and "badge forced" in trail
    assert page.count("never deployed") == 1  # the rejected decision; the others reached production
    assert 'class="chip blocked"' in page


def test_unreachable_registry_is_a_503_that_says_what_to_check(tmp_path: Path):
    down = replace(_settings(tmp_path), registry_url="postgresql+psycopg://nobody:secret@127.0.0.1:1/registry")
    response = _client(down).get("/models/api/verticals")
    assert response.status_code == 503
    assert "PIPELINES_REGISTRY_URL" in response.json()["detail"]
    assert "secret" not in response.text  # the password is masked


TRAVERSALS = (
    "/models/docs/finance/../../../../secret.txt",
    "/models/docs/finance/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/models/docs/finance/..%2f..%2f..%2f..%2fsecret.txt",
    "/models/docs/finance/validations/..%2f..%2f..%2f..%2f..%2fsecret.txt",
    "/models/docs/finance/%2fetc%2fpasswd",
    "/models/docs/..%2f..%2fsecret.txt/index.html",
    "/models/docs/finance/index.html%00.txt",
)


def _raw_get(client: httpx.Client | TestClient, raw_path: str) -> httpx.Response:
    # httpx would normalise "/../" away before sending: put the raw path on the wire.
    request = client.build_request("GET", raw_path)
    request.url = request.url.copy_with(raw_path=raw_path.encode())
    return client.send(request)


def test_data_docs_are_served_but_nothing_outside_them(state: Settings):
    client = _client(state)
    assert "Data docs: finance" in client.get("/models/docs/finance/").text
    assert client.get("/models/docs/finance/validations/run.html").status_code == 200
    for path in TRAVERSALS:
        response = _raw_get(client, path)
        assert response.status_code == 404, (path, response.status_code)
        assert SECRET not in response.text


# -- a real Airflow API server -------------------------------------------------


@dataclass
class ApiServer:
    base_url: str
    airflow_home: Path
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def token(self) -> str:
        passwords = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        with self.client() as client:
            response = client.post("/auth/token", json={"username": "admin", "password": password})
        assert response.status_code == 201, response.text
        return response.json()["access_token"]


def start_api_server(pipelines_home: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], ApiServer]:
    """``airflow api-server`` on a free loopback port, plugins loaded at start-up (used by the docs script too)."""
    airflow_home = workdir / "airflow"
    # A copy of the session's migrated metadata DB: no second `airflow db migrate`.
    shutil.copytree(migrated_airflow_home(), airflow_home)
    port = free_port()
    env = airflow_env(
        pipelines_home,
        airflow_home,
        port=port,
        AIRFLOW__CORE__LAZY_LOAD_PLUGINS="False",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
    )
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(PROJECT_ROOT / "plugins")
    log = workdir / "api-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [AIRFLOW_BIN, "api-server", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches its workers
        )
    server = ApiServer(f"http://127.0.0.1:{port}", airflow_home, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"api-server exited ({process.returncode}):\n{log.read_text()[-6000:]}")
        try:
            if httpx.get(f"{server.base_url}/api/v2/monitor/health", timeout=5).status_code == 200:
                return process, server
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_api_server(process)
    raise AssertionError(f"api-server not healthy after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-6000:]}")


def stop_api_server(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (a clean uvicorn shutdown), then whatever of the group outlived it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    workdir = tmp_path_factory.mktemp("models-view")
    settings = _settings(workdir / "state")
    settings.home.mkdir()
    populate_registry(settings)
    process, server = start_api_server(settings.home, workdir)
    try:
        yield server
    finally:
        stop_api_server(process)


PROTECTED = (
    "/models/",
    "/models/verticals/finance",
    "/models/api/verticals",
    "/models/api/verticals/finance",
    "/models/docs/finance/index.html",
)


@pytest.mark.airflow
@pytest.mark.slow
def test_plugin_endpoints_require_login(api_server: ApiServer):
    with api_server.client() as anonymous:
        for path in PROTECTED:
            response = anonymous.get(path)
            assert response.status_code in (401, 403), (path, response.status_code)
            assert CHAMPION not in response.text
            forged = anonymous.get(path, headers={"Authorization": "Bearer not-a-jwt"})
            assert forged.status_code in (401, 403), (path, forged.status_code)
            assert anonymous.get(path, cookies={"_token": "not-a-jwt"}).status_code in (401, 403), path
        # A browser without a session is sent to Airflow's login page, and back here after it.
        browser = anonymous.get("/models/", headers={"Accept": "text/html"}, follow_redirects=False)
        assert browser.status_code == 307
        assert browser.headers["location"].startswith("/auth/login?next=")
        assert "%2Fmodels%2F" in browser.headers["location"]
        assert anonymous.get("/models/openapi.json").status_code == 404


@pytest.mark.airflow
@pytest.mark.slow
def test_logged_in_user_sees_champion_reasons_and_links(api_server: ApiServer):
    token = api_server.token()
    with api_server.client(headers={"Authorization": f"Bearer {token}"}) as client:
        page = client.get("/models/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        html = page.text
        assert CHAMPION in html and "dv-3f4a5b6c7d8e" in html
        assert REJECTION in html  # the rejection's reason
        assert "schema change upstream" in html  # the forced promotion's reason
        assert "cli:oncall" in html and "rollback" in html
        assert f'href="/dags/finance/runs/{RUN_ID.replace(":", "%3A").replace("+", "%2B")}"' in html

        listed = client.get("/models/api/verticals").json()
        champions = {v["name"]: (v["champion"] or {}).get("model_version") for v in listed["verticals"]}
        assert champions == {
            "education": None,
            "finance": CHAMPION,
            "healthcare": "mv-1b2c3d4e5f60",
            "manufacturing": None,
        }
        detail = client.get("/models/api/verticals/finance").json()
        assert detail["decisions"][2]["outcome"] == "rejected"
        assert REJECTION in [r["detail"] for r in detail["decisions"][2]["rules"]]
        assert "Data docs: finance" in client.get("/models/docs/finance/index.html").text

    # The Airflow UI's own session: the `_token` cookie its login page sets.
    with api_server.client(cookies={"_token": token}) as browser:
        assert CHAMPION in browser.get("/models/", headers={"Accept": "text/html"}).text


@pytest.mark.airflow
@pytest.mark.slow
def test_data_docs_route_refuses_path_traversal(api_server: ApiServer):
    token = api_server.token()
    with api_server.client(headers={"Authorization": f"Bearer {token}"}) as client:
        for path in TRAVERSALS:
            response = _raw_get(client, path)
            assert SECRET not in response.text, path
            if "/../" in path:
                # The server resolves literal dot segments before routing ("/secret.txt"):
                # the request never reaches the plugin, and the UI's catch-all answers.
                continue
            assert response.status_code == 404, (path, response.status_code)


@pytest.mark.airflow
@pytest.mark.slow
def test_models_entry_is_in_the_airflow_ui_navigation(api_server: ApiServer):
    token = api_server.token()
    with api_server.client(headers={"Authorization": f"Bearer {token}"}) as client:
        plugins = client.get("/api/v2/plugins").json()["plugins"]
    plugin = next(p for p in plugins if p["name"] == "models_view")
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/models"]
    (view,) = plugin["external_views"]
    assert (view["name"], view["href"], view["url_route"], view["destination"]) == (
        "Models",
        "models/",
        "models",
        "nav",
    )


# -- links to the bucket, the validation result of a date, blocked days, never deployed -----------

VALIDATION_PAGE = "validations/finance/finance-2026-11-28/20261128T021500.000000Z/finance-finance.html"
BLOCKED_DS = "2026-11-29"
#: Approved by the gate, never deployed (e.g. a dry run): the view must mark it.
UNDEPLOYED = "mv-0a1b2c3d4e5f"


def _deploy_folder(settings: Settings, vertical: str, version: str, card: str) -> Path:
    """A version folder as `pipelines.release.deploy` writes it: files, then checksums.json, then the pointer."""
    import hashlib

    folder = settings.home / "bucket" / vertical / "versions" / version
    folder.mkdir(parents=True)
    files = {
        "model_card.md": card.encode(),
        "metrics.json": b'{"accuracy": 0.7}\n',
        "confusion_matrix.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "weights.pt": b"\x00weights",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {"files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    (folder / "checksums.json").write_text(json.dumps(manifest))
    (folder.parent.parent / "production.json").write_text(json.dumps({"version": version}))
    return folder


@pytest.fixture
def linked(state: Settings) -> Settings:
    """The registry of `state`, plus the champion's bucket folder, data docs of two runs, a blocked day."""
    card = (
        f"# Model card: finance {CHAMPION}\n\nTrained for logical date 2026-11-28.\n\n"
        "<script>alert('card')</script>\n\n| metric | value |\n|---|---|\n| accuracy | 0.70 |\n"
    )
    _deploy_folder(state, "finance", CHAMPION, card)
    (state.home / "bucket" / "finance" / "versions" / CHAMPION / "notes.txt").write_text("not in the manifest")
    docs = data_docs_root(state, "finance")
    for page in (VALIDATION_PAGE, VALIDATION_PAGE.replace("T021500", "T020000")):
        (docs / page).parent.mkdir(parents=True)
        (docs / page).write_text(f"<html><body>validation result {page}</body></html>")
    run = state.home / "runs" / "finance" / BLOCKED_DS
    run.mkdir(parents=True)
    (run / "validate.json").write_text(
        json.dumps(
            {
                "success": False,
                "summary": "finance: 1 of 23 expectations failed on 4 rows: expect_column_values_to_be_between(age)",
                "quarantined": [BLOCKED_DS],
                "alert": "finance-ml@example.com",
            }
        )
    )
    quarantine = state.home / "data" / "finance" / "quarantine"
    quarantine.mkdir(parents=True)
    (quarantine / f"{BLOCKED_DS}.parquet").write_bytes(b"PAR1")
    registry = Registry.from_settings(state)
    registry.record_model(
        vertical="finance",
        model_version=UNDEPLOYED,
        data_version="dv-4a5b6c7d8e9f",
        ds="2026-11-30",
        dag_run_id="manual__2026-11-30T03:00:00+00:00",
        metrics=GOOD,
        lineage={},
    )
    registry.record_decision(
        vertical="finance",
        ds="2026-11-30",
        model_version=UNDEPLOYED,
        approved=True,
        champion_version=CHAMPION,
        reasons=_rules(GOOD, FINANCE_FLOORS),
    )
    return state


def test_page_links_the_model_card_the_bucket_version_and_that_dates_validation(linked: Settings):
    client = _client(linked)
    page = client.get("/models/verticals/finance").text
    base = f"/models/bucket/finance/{CHAMPION}/"
    assert f'href="{base}model-card"' in page and f'href="{base}"' in page
    # The newest validation run of the champion's date (a rerun's page replaces an earlier one).
    assert f'href="/models/docs/finance/{VALIDATION_PAGE}"' in page
    assert "T020000" not in page
    assert client.get(f"/models/docs/finance/{VALIDATION_PAGE}").status_code == 200
    data = client.get("/models/api/verticals/finance").json()
    assert data["champion_validation_page"] == VALIDATION_PAGE
    assert data["bucket"] == {"versions_uri": (linked.home / "bucket").as_uri() + "/finance/versions/", "served": True}


def test_approved_decision_never_deployed_is_marked(linked: Settings):
    data = _client(linked).get("/models/api/verticals/finance").json()
    marks = {d["model_version"]: d["never_deployed"] for d in data["decisions"]}
    assert marks[UNDEPLOYED] is True and marks[REJECTED] is True
    assert marks[CHAMPION] is False and marks["mv-9f8e7d6c5b4a"] is False  # forced, deployed, rolled back
    page = _client(linked).get("/models/verticals/finance").text
    row = page[page.index(UNDEPLOYED) : page.index("</tr>", page.index(UNDEPLOYED))]
    assert 'class="chip never"' in row and "never deployed" in row
    assert "model-card" not in row  # a version that never reached the bucket has no folder to link


def test_blocked_days_show_what_failed_and_leave_once_the_day_passes(linked: Settings):
    client = _client(linked)
    page = client.get("/models/verticals/finance").text
    assert "Data-quality blocked days" in page
    blocked = page[page.index("Data-quality blocked days") :]
    assert BLOCKED_DS in blocked and "expect_column_values_to_be_between(age)" in blocked
    assert "1 day(s): 2026-11-29" in blocked and "finance-ml@example.com" in blocked
    assert client.get("/models/api/verticals/finance").json()["blocked"][0]["still_quarantined"] == [BLOCKED_DS]
    # The day was fixed and rerun: validate.json now says success, so it is no longer blocked.
    (linked.home / "runs" / "finance" / BLOCKED_DS / "validate.json").write_text('{"success": true}')
    assert "Data-quality blocked days" not in client.get("/models/verticals/finance").text


def test_model_card_is_rendered_with_its_html_escaped(linked: Settings):
    response = _client(linked).get(f"/models/bucket/finance/{CHAMPION}/model-card")
    assert response.status_code == 200
    assert f"<h1>Model card: finance {CHAMPION}</h1>" in response.text
    assert "<td>accuracy</td>" in response.text  # Markdown tables render
    assert "<script>alert('card')" not in response.text and "&lt;script&gt;" in response.text


def test_bucket_version_files_are_served_read_only_and_only_those_of_the_manifest(linked: Settings):
    client = _client(linked)
    folder = client.get(f"/models/bucket/finance/{CHAMPION}/")
    assert folder.status_code == 200
    assert "every file matches" in folder.text and "the production pointer names this version" in folder.text
    card = client.get(f"/models/bucket/finance/{CHAMPION}/model_card.md")
    assert card.status_code == 200 and card.text.startswith("# Model card")
    assert card.headers["content-type"].startswith("text/plain")
    assert "sandbox" in card.headers["content-security-policy"]
    weights = client.get(f"/models/bucket/finance/{CHAMPION}/weights.pt")
    assert weights.headers["content-disposition"].startswith("attachment")
    assert client.get(f"/models/bucket/finance/{CHAMPION}/checksums.json").status_code == 200
    assert client.get(f"/models/bucket/finance/{CHAMPION}/notes.txt").status_code == 404  # in the folder, not listed
    assert client.post(f"/models/bucket/finance/{CHAMPION}/model_card.md").status_code == 405
    for path in (
        f"/models/bucket/finance/{CHAMPION}/..%2f..%2fproduction.json",
        f"/models/bucket/finance/..%2f{CHAMPION}/model_card.md",
        "/models/bucket/finance/mv-nosuch/",
        "/models/bucket/finance/mv-nosuch/model-card",
    ):
        assert _raw_get(client, path).status_code == 404, path
    # A tampered file is reported on the folder page, not hidden.
    (linked.home / "bucket" / "finance" / "versions" / CHAMPION / "metrics.json").write_text("{}")
    assert "metrics.json: expected sha256" in client.get(f"/models/bucket/finance/{CHAMPION}/").text


def test_bucket_pages_need_the_login_and_the_verticals_permission(linked: Settings):
    anonymous = TestClient(_client(linked).app)
    assert anonymous.get(f"/models/bucket/finance/{CHAMPION}/model-card").status_code == 401
    healthcare_only = _client(linked, readable={"healthcare"})
    for path in ("/", "model-card", "model_card.md"):
        url = f"/models/bucket/finance/{CHAMPION}/{path.lstrip('/')}"
        assert healthcare_only.get(url).status_code == 403, url


def test_s3_bucket_is_shown_as_its_uri_not_served(linked: Settings):
    s3 = replace(linked, bucket_url="s3://models_conn:hunter2@ml-models/prod")
    client = _client(s3)
    page = client.get("/models/verticals/finance").text
    assert f"s3://models_conn@ml-models/prod/finance/versions/{CHAMPION}/" in page
    assert "hunter2" not in page
    assert "/models/bucket/finance/" not in page
    response = client.get(f"/models/bucket/finance/{CHAMPION}/model-card")
    assert response.status_code == 404 and "open s3://models_conn@ml-models" in response.json()["detail"]


# -- tuning sweeps ---------------------------------------------------------------------------------


def _sweep(settings: Settings, name: str, values: list[float], params: list[str]) -> None:
    """A finished Optuna study where the `tuning` stage keeps them: trial i scores values[i]."""
    import optuna

    from pipelines.model.tuning import _storage

    study = optuna.create_study(study_name=name, storage=_storage(settings), direction="minimize")
    for value, width in zip(values, params, strict=True):
        study.add_trial(
            optuna.trial.create_trial(
                params={"width": width, "dropout": 0.125},
                distributions={
                    "width": optuna.distributions.CategoricalDistribution(params),
                    "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
                },
                value=value,
            )
        )


def test_page_lists_recent_tuning_sweeps_with_the_cli_reader(state: Settings):
    from pipelines.model.tuning import list_studies

    client = _client(state)
    # No studies file yet: no section, and no studies file created by reading the page.
    assert "<h3>Tuning</h3>" not in client.get("/models/verticals/finance", headers={"Accept": "text/html"}).text
    assert not (state.home / "optuna.db").exists()

    _sweep(state, "finance:2026-11-20", [0.61, 0.55, 0.58], ["16", "<b>32</b>", "64"])
    _sweep(state, "finance:2026-11-27", [0.52, 0.57], ["16", "64"])
    _sweep(state, "healthcare:2026-11-27", [0.7], ["8"])

    data = client.get("/models/api/verticals/finance").json()
    assert [(s["ds"], s["trials"], s["best_value"]) for s in data["tuning"]] == [
        ("2026-11-27", 2, 0.52),
        ("2026-11-20", 3, 0.55),
    ]
    assert data["tuning"][1]["best_params"] == {"width": "<b>32</b>", "dropout": 0.125}
    # The same reader as `python -m pipelines tuning finance`.
    assert {s["study"] for s in data["tuning"]} == {s["study"] for s in list_studies(state, "finance")}

    page = client.get("/models/verticals/finance", headers={"Accept": "text/html"}).text
    tuning = page.split("<h3>Tuning</h3>")[1].split("</table>")[0]
    assert tuning.index("2026-11-27") < tuning.index("2026-11-20")  # newest first
    assert "0.5200" in tuning and "0.5500" in tuning and "dropout=0.125" in tuning
    assert "width=&lt;b&gt;32&lt;/b&gt;" in tuning and "<b>32</b>" not in page
    assert "healthcare" not in tuning


def test_unreadable_tuning_storage_is_a_note_not_a_broken_page(state: Settings):
    (state.home / "optuna.db").write_bytes(b"not a database at all" * 100)
    response = _client(state).get("/models/verticals/finance", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "tuning sweeps could not be read" in response.text and "<h3>Tuning</h3>" not in response.text
