"""The real-browser tier: headless Chromium (the OS package) driven by Playwright against ``airflow standalone``.

One standalone per test module on a free loopback port, with its own AIRFLOW_HOME
(migrated by standalone itself), a PIPELINES_HOME holding a copy of the seeded
demo warehouse, the repo's DAGs and plugins, and only the runs the tests
trigger (the cron scheduler is off).  The browser is ``/usr/bin/chromium``
(Debian's ``chromium``; ``.ci/run`` installs it): Playwright's own browser
downloads are never used.  The tier is about the UI, not model quality: the specs
are the orchestration overlay (`airflow_support.ORCHESTRATION_OVERLAY`: finance
without a tuning sweep on a half-year window, still approved by the real gate),
except with ``PIPELINES_DOCS_SCREENSHOTS=1``, whose model card and Models view
must show the real specs.  Screenshots go to each test's ``tmp_path``; with
``PIPELINES_DOCS_SCREENSHOTS=1`` the ones the docs use are also copied to ``docs/img/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.config import PROJECT_ROOT

from ..conftest import IN_CI
from ..integration.airflow_support import (
    AIRFLOW_BIN,
    StandaloneWatch,
    free_port,
    healthy,
    orchestration_specs,
    seed_home,
    standalone_env,
    stop_standalone,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
STARTUP_TIMEOUT_S = 300
DOCS_IMG = PROJECT_ROOT / "docs" / "img"


def _require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must install it", pytrace=False)
    pytest.skip(message)


@dataclass
class AirflowUI:
    """A running ``airflow standalone``: its URL, the admin login, a REST client and the data root."""

    base_url: str
    password: str
    api: httpx.Client
    home: Path
    log: Path
    process: subprocess.Popen[bytes]
    watch: StandaloneWatch = field(init=False)

    def __post_init__(self) -> None:
        self.watch = StandaloneWatch(self.process, self.log)

    def log_tail(self, chars: int = 6000) -> str:
        return self.watch.log_tail(chars)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        return self.watch.wait_for(what, check, timeout)

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.api.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 50})
        response.raise_for_status()
        return list(response.json()["dag_runs"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def wait_for_run_end(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        return str(
            self.wait_for(
                f"run {run_id} of {dag_id} to end",
                lambda: (state := self.run_state(dag_id, run_id)) in ("success", "failed") and state,
                timeout,
            )
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        response = self.api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return {ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        response = self.api.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        return json.dumps(response.json())


# Module scope: a standalone (scheduler, dag-processor, triggerer, API server) left idling until the
# session ends would take CPU from every later test.
@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    """``airflow standalone`` on a free loopback port, healthy, with the ``finance`` DAG parsed."""
    _require_chromium()
    workdir = tmp_path_factory.mktemp("browser-airflow")
    home = workdir / "state"
    seed_home(home)
    airflow_home = workdir / "airflow"
    airflow_home.mkdir()
    port = free_port()
    docs = os.environ.get("PIPELINES_DOCS_SCREENSHOTS") == "1"
    env = standalone_env(home, airflow_home, port, None if docs else orchestration_specs(workdir / "specs"))
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(PROJECT_ROOT / "plugins")
    log = workdir / "standalone.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [AIRFLOW_BIN, "standalone"],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every child
        )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=90)
    ui = AirflowUI(f"http://127.0.0.1:{port}", "", api, home, log, process)
    try:
        ui.wait_for("a healthy scheduler", lambda: healthy(api), STARTUP_TIMEOUT_S)
        passwords = airflow_home / "simple_auth_manager_passwords.json.generated"
        ui.password = json.loads(passwords.read_text())["admin"]
        token = api.post("/auth/token", json={"username": "admin", "password": ui.password})
        assert token.status_code == 201, token.text
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        ui.wait_for("DAG finance", lambda: api.get("/api/v2/dags/finance").status_code == 200, 180)
        yield ui
    finally:
        api.close()
        stop_standalone(process)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """The OS's headless Chromium under Playwright (never a downloaded browser)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[..., Path]:
    """``shots(page, name, docs=False)`` saves ``tmp_path/<name>.png``; ``docs=True`` also copies it to docs/img
    when PIPELINES_DOCS_SCREENSHOTS=1 (so a plain test run never rewrites tracked files)."""

    def take(page: Any, name: str, *, docs: bool = False, full_page: bool = False) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if docs and os.environ.get("PIPELINES_DOCS_SCREENSHOTS") == "1":
            shutil.copyfile(path, DOCS_IMG / f"{name}.png")
        return path

    return take
