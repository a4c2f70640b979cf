"""The on-call engineer's morning, in a real browser against a real Airflow.

Headless Chromium (the OS's ``/usr/bin/chromium``) under Playwright, against
one ``airflow standalone`` for the whole module (see ``conftest.py``):

1. log in through the UI's login form;
2. trigger ``finance`` from its trigger form with the defaults for a past date,
   and see the run succeed;
3. trigger a forced promotion without a reason, and see it refused (by the
   form, by the API server on submit, or at run start by ``extract``);
4. open the Models view inside the UI and follow its links: the DAG run, the
   model card, the data docs and that date's validation result.

Each step saves screenshots in its ``tmp_path``; ``PIPELINES_DOCS_SCREENSHOTS=1``
copies the ones the docs show into ``docs/img/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any
from urllib.parse import quote

import pytest

from .conftest import VIEWPORT, AirflowUI

pytestmark = [pytest.mark.browser, pytest.mark.airflow, pytest.mark.slow]

VERTICAL = "finance"
#: A past date inside the demo span, with a year of history before it (the fixtures' date).
DS = "2026-11-27"
#: A second past date, for the refused forced promotion (it must not reuse DS's run).
FORCED_DS = "2026-11-26"
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def session(chromium: Any, airflow_ui: AirflowUI) -> Iterator[Any]:
    """One browser context for the module: the login of the first test carries to the next ones."""
    from playwright.sync_api import expect

    context = chromium.new_context(viewport=VIEWPORT, base_url=airflow_ui.base_url)
    context.set_default_timeout(UI_TIMEOUT_MS)
    # Assertions too (Playwright's default is 5 s): the UI renders late on a loaded 2-core machine.
    expect.set_options(timeout=UI_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(session: Any) -> Iterator[Any]:
    page = session.new_page()
    try:
        yield page
    finally:
        page.close()


def _login(page: Any, ui: AirflowUI) -> None:
    page.goto("/")
    page.wait_for_url(re.compile(r"/auth/login"))
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(ui.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


def _logged_in(page: Any, ui: AirflowUI) -> None:
    page.goto("/")
    page.wait_for_load_state("networkidle")
    if "/auth/login" in page.url:
        _login(page, ui)


def _open_trigger_form(page: Any, for_date: str) -> Any:
    """The DAG's trigger dialog, a single run for ``for_date`` 02:00 UTC typed into its date picker."""
    from playwright.sync_api import expect

    page.goto(f"/dags/{VERTICAL}")
    page.get_by_role("button", name="Trigger").first.click()
    heading = page.get_by_role("heading", name=f"Trigger Dag - {VERTICAL}")
    dialog = page.get_by_role("dialog").filter(has=heading)
    expect(dialog).to_be_visible()
    dialog.get_by_test_id("datetime-input").click()
    picker = page.get_by_role("dialog").filter(has_text="UTC").last
    day = picker.get_by_placeholder("YYYY/MM/DD")
    day.fill(for_date.replace("-", "/"))
    day.press("Enter")
    time = picker.get_by_placeholder("HH:mm")
    time.fill("02:00")
    time.press("Enter")
    shown = date.fromisoformat(for_date).strftime("%b %d, %Y").replace(" 0", " ")
    expect(dialog.get_by_test_id("datetime-input")).to_contain_text(f"{shown} 02:00")
    heading.click()  # close the calendar
    expect(picker).to_be_hidden()  # and let it fade out before any screenshot
    return dialog


def _switch(dialog: Any, param: str) -> None:
    """Flip a boolean param's switch (its checkbox input is visually hidden: click the switch itself)."""
    dialog.locator(f'[id="switch:element_{param}"]').click()


def _run_for(ui: AirflowUI, ds: str) -> dict[str, Any] | None:
    for run in ui.runs(VERTICAL):
        if str(run.get("logical_date") or "").startswith(ds):
            return run
    return None


def test_login_through_the_form_returns_to_the_page_asked_for(page: Any, airflow_ui: AirflowUI, shots: Callable):
    from playwright.sync_api import expect

    page.goto("/models/")  # the Models view: a browser without a session is sent to the login page
    page.wait_for_url(re.compile(r"/auth/login"))
    shots(page, "01-login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(airflow_ui.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/models/$"))
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    page.goto("/dags")
    expect(page.get_by_role("link", name=VERTICAL, exact=True).first).to_be_visible()
    shots(page, "02-dags")


def test_trigger_with_the_defaults_for_a_past_date_succeeds(page: Any, airflow_ui: AirflowUI, shots: Callable):
    from playwright.sync_api import expect

    _logged_in(page, airflow_ui)
    dialog = _open_trigger_form(page, DS)
    submit = dialog.get_by_test_id("trigger-dag-submit")
    shots(page, "trigger-form-defaults", docs=True)
    # The defaults (no dry run, no forced promotion, no reason) are a valid run: the button is enabled.
    expect(submit).to_be_enabled()
    submit.click()
    run = airflow_ui.wait_for(f"the run for {DS}", lambda: _run_for(airflow_ui, DS), 60)
    assert run["conf"].get("force_promotion") in (False, None), run["conf"]
    # Off the DAG page while the run goes on: its auto-refresh re-renders the grid every few seconds,
    # and Chromium's renderer and the API server took the run's cores (this test alone: 44 s -> 26 s).
    page.goto("about:blank")
    state = airflow_ui.wait_for_run_end(VERTICAL, run["dag_run_id"])
    assert state == "success", f"{airflow_ui.task_states(VERTICAL, run['dag_run_id'])}\n{airflow_ui.log_tail()}"
    assert set(airflow_ui.task_states(VERTICAL, run["dag_run_id"]).values()) == {"success"}

    page.goto(f"/dags/{VERTICAL}/runs/{quote(run['dag_run_id'], safe='')}")
    expect(page.get_by_text("Success").first).to_be_visible()
    shots(page, "run-succeeded")


def test_forced_promotion_without_a_reason_is_refused(page: Any, airflow_ui: AirflowUI, shots: Callable):
    from playwright.sync_api import expect

    _logged_in(page, airflow_ui)
    dialog = _open_trigger_form(page, FORCED_DS)
    submit = dialog.get_by_test_id("trigger-dag-submit")
    expect(submit).to_be_enabled()  # the defaults submit ...
    _switch(dialog, "force_promotion")
    expect(dialog.get_by_role("checkbox", name="Force promotion")).to_be_checked()
    shots(page, "trigger-form-forced-without-reason", docs=True)
    if not submit.is_enabled():
        # ... refused by the form itself: forcing is the only change, and a reason is what it lacks.
        reason = dialog.locator("input[name=element_force_reason]")
        reason.fill("ticket FIN-1: the gate's holdout is stale")
        expect(submit).to_be_enabled()
        reason.fill("")
        expect(submit).to_be_disabled()
        assert _run_for(airflow_ui, FORCED_DS) is None
        return
    submit.click()
    # ... refused by the API server when submitted (the trigger guard: HTTP 400, shown in the form, no run) ...
    refusal = dialog.get_by_text("force_reason is empty")
    try:
        expect(refusal.first).to_be_visible(timeout=15_000)
    except AssertionError:
        pass
    else:
        shots(page, "forced-without-reason-refused", docs=True)
        assert _run_for(airflow_ui, FORCED_DS) is None
        return
    # ... or refused at run start: extract fails at once (no retries), before any work, saying why.
    run = airflow_ui.wait_for(f"the run for {FORCED_DS}", lambda: _run_for(airflow_ui, FORCED_DS), 60)
    assert run["conf"].get("force_promotion") is True
    assert airflow_ui.wait_for_run_end(VERTICAL, run["dag_run_id"], timeout=300) == "failed"
    states = airflow_ui.task_states(VERTICAL, run["dag_run_id"])
    assert states["extract"] == "failed", states
    assert states["train"] in ("upstream_failed", None), states
    assert "force_reason is empty" in airflow_ui.task_log(VERTICAL, run["dag_run_id"], "extract")
    assert not (airflow_ui.home / "runs" / VERTICAL / FORCED_DS / "gate.json").exists()
    page.goto(f"/dags/{VERTICAL}/runs/{quote(run['dag_run_id'], safe='')}/tasks/extract")
    expect(page.get_by_text("force_reason is empty").first).to_be_visible(timeout=60_000)
    shots(page, "forced-without-reason-refused", docs=True)


def test_models_view_in_the_ui_links_to_the_run_the_model_card_and_the_data_docs(
    page: Any, airflow_ui: AirflowUI, shots: Callable
):
    from playwright.sync_api import expect

    run = _run_for(airflow_ui, DS)
    if run is None or airflow_ui.run_state(VERTICAL, run["dag_run_id"]) != "success":
        # The trigger-form test did not leave a successful run: make one through the REST API,
        # so this test is about the Models view alone.
        airflow_ui.api.patch(f"/api/v2/dags/{VERTICAL}", json={"is_paused": False}).raise_for_status()
        created = airflow_ui.api.post(
            f"/api/v2/dags/{VERTICAL}/dagRuns", json={"logical_date": f"{DS}T00:00:00Z", "conf": {}}
        )
        assert created.status_code == 200, created.text
        run = created.json()
        assert airflow_ui.wait_for_run_end(VERTICAL, run["dag_run_id"]) == "success"
    run_id = run["dag_run_id"]

    _logged_in(page, airflow_ui)
    page.goto("/")
    page.get_by_role("link", name="Models").first.click()  # the nav entry
    page.wait_for_url(re.compile(r"/plugin/models"))
    frame = page.frame_locator("iframe").first
    section = frame.locator(f"section#{VERTICAL}")
    expect(section.get_by_role("heading", name="Champion")).to_be_visible()
    expect(section.locator("dl")).to_contain_text(DS)
    expect(section.get_by_role("link", name="model card").first).to_be_visible()
    shots(page, "models-view-airflow-ui", docs=True)

    # The champion's DAG run opens in the Airflow UI itself (the top window, not the frame).
    section.locator("dl").get_by_role("link", name="DAG run").click()
    page.wait_for_url(re.compile(re.escape(f"/dags/{VERTICAL}/runs/")))
    assert quote(run_id, safe="") in page.url or run_id in page.url
    expect(page.get_by_text(run_id).first).to_be_visible()
    shots(page, "models-view-dag-run")

    # The model card, rendered from model_card.md in the bucket's version folder.
    page.goto("/models/verticals/finance")
    expect(page.locator("section dl")).to_contain_text(DS)
    shots(page, "models-view", docs=True, full_page=True)
    champion = page.locator("section dl")
    champion.get_by_role("link", name="model card").click()
    expect(page.get_by_role("heading", name=re.compile(rf"^Model card: {VERTICAL} mv-"))).to_be_visible()
    expect(page.get_by_role("heading", name="Holdout metrics")).to_be_visible()
    assert f"Trained for logical date {DS}" in page.locator("article").inner_text()
    expect(page.get_by_role("heading", name="Intended use")).to_be_visible()
    # The figures (SVG files of the version folder) load and render as images under the files' CSP.
    figures = page.locator("article img")
    expect(figures.first).to_be_visible()
    # Each image has finished loading (or failed to) before it is judged: on a busy machine the
    # later figures were still on their way when the first one showed.
    page.wait_for_function("() => [...document.querySelectorAll('article img')].every(i => i.complete)")
    sources = figures.evaluate_all("imgs => imgs.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    assert {src for src, _ in sources} >= {"confusion_matrix.svg", "holdout_curves.svg", "slices.svg"}, sources
    assert all(loaded for _, loaded in sources), sources
    shots(page, "model-card", docs=True, full_page=True)
    page.get_by_role("link", name="bucket version").click()
    expect(page.get_by_text("every file matches")).to_be_visible()
    expect(page.get_by_text("the production pointer names this version")).to_be_visible()
    shots(page, "models-view-bucket-version")

    # The data docs, and the validation result of the champion's date.
    page.goto("/models/verticals/finance")
    with page.expect_navigation():
        champion.get_by_role("link", name="validation").click()
    assert f"/{VERTICAL}-{DS}/" in page.url
    expect(page.get_by_text("Expectation Validation Result").first).to_be_visible()
    expect(page.get_by_text(f"{VERTICAL}-{DS}").first).to_be_visible()  # GX's run name for that date
    shots(page, "models-view-validation-result", docs=True)
    page.goto("/models/verticals/finance")
    with page.expect_navigation():
        champion.get_by_role("link", name="Data docs").click()
    assert page.url.endswith(f"/{VERTICAL}/index.html")
    expect(page.get_by_text("Validation Results").first).to_be_visible()
    shots(page, "models-view-data-docs")
