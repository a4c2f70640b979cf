"""The models view as a FastAPI app: HTML pages, JSON endpoints and the data docs.

The routes are module-level `APIRouter` s (this module's ``router`` and
`bucket_pages.router`) whose handlers declare what they need as dependencies
(`pipelines.models_view.dependencies`): the caller, the settings, the
registry, a vertical the caller may read.  `create_app` only wires one app:
the injected login (`ViewAuth`; Airflow's in production, see `airflow_auth`,
a stub in tests), where it is mounted, and how settings are read.  The login
is a dependency of the app itself, so every route, present or future,
requires a user; the interactive API docs FastAPI would add (``/docs``,
``/openapi.json``) are switched off because they would not be behind it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.config import VERTICAL_NAME, Settings
from pipelines.errors import PipelineError
from pipelines.models_view import DEFAULT_PREFIX, bucket_pages
from pipelines.models_view.dependencies import (
    LinksDep,
    ReadableVertical,
    RegistryDep,
    SettingsDep,
    ViewAuth,
    ViewConfig,
    current_user,
    links_of,
    readable_verticals,
)
from pipelines.models_view.html import Links, render_index, render_message, render_vertical
from pipelines.models_view.overview import (
    VerticalOverview,
    collect_all,
    collect_vertical,
    data_docs_root,
    refresh_from_state,
)
from pipelines.state import open_state

__all__ = ["ViewAuth", "create_app", "router"]

#: A logical date in a URL.
DS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Decisions and deployments per vertical on the overview page and in the list endpoint.
OVERVIEW_HISTORY = 10
#: ... and on one vertical's page (the JSON detail endpoint takes ``?history=``).
VERTICAL_HISTORY = 100

Readable = Annotated[tuple[list[str], int], Depends(readable_verticals)]

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def index(readable: Readable, settings: SettingsDep, registry: RegistryDep, links: LinksDep) -> HTMLResponse:
    names, hidden = readable
    views = collect_all(registry, settings, names, history=OVERVIEW_HISTORY)
    return HTMLResponse(render_index(views, links, hidden=hidden))


@router.get("/verticals/{vertical}", response_class=HTMLResponse)
def vertical_page(
    vertical: ReadableVertical, settings: SettingsDep, registry: RegistryDep, links: LinksDep
) -> HTMLResponse:
    view = collect_vertical(registry, settings, vertical, history=VERTICAL_HISTORY)
    return HTMLResponse(render_vertical(view, links))


@router.get("/api/verticals")
def api_verticals(
    readable: Readable,
    settings: SettingsDep,
    registry: RegistryDep,
    links: LinksDep,
    history: Annotated[int, Query(ge=0, le=500)] = 5,
) -> dict[str, Any]:
    names, hidden = readable
    views = collect_all(registry, settings, names, history=history)
    return {"verticals": [_as_json(v, links) for v in views], "hidden": hidden}


@router.get("/api/verticals/{vertical}")
def api_vertical(
    vertical: ReadableVertical,
    settings: SettingsDep,
    registry: RegistryDep,
    links: LinksDep,
    history: Annotated[int, Query(ge=0, le=500)] = 50,
) -> dict[str, Any]:
    return _as_json(collect_vertical(registry, settings, vertical, history=history), links)


@router.get("/docs/{vertical}/runs/{ds}")
def data_docs_of_date(vertical: ReadableVertical, ds: str, settings: SettingsDep) -> RedirectResponse:
    """The newest validation result of logical date ``ds``: a stable link for alerts and pages."""
    if not VERTICAL_NAME.match(vertical) or not DS_PATTERN.fullmatch(ds):
        raise HTTPException(404, "no such data docs")
    refresh_from_state(settings, vertical)  # a worker may have validated the day (state on S3)
    root = data_docs_root(settings, vertical)
    # GX files a result under validations/<suite>/<run name>/<run time>/; the run name is "<vertical>-<ds>".
    pages = sorted(root.glob(f"validations/**/{vertical}-{ds}/*/*.html"), key=lambda p: p.parent.name)
    if not pages:
        raise HTTPException(404, f"no validation result of {vertical} for {ds} in the data docs")
    # Relative, so it works under any mount point or proxy prefix: ../ leaves "runs/".
    return RedirectResponse("../" + pages[-1].relative_to(root).as_posix(), status_code=307)


@router.get("/docs/{vertical}/{path:path}")
def data_docs(vertical: ReadableVertical, path: str, settings: SettingsDep) -> FileResponse:
    """The vertical's Great Expectations data docs, read-only, never a file outside them."""
    if not VERTICAL_NAME.match(vertical):
        raise HTTPException(404, "no such data docs")
    root = data_docs_root(settings, vertical).resolve()
    try:
        target = (root / (path or "index.html")).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise HTTPException(404, "no such data docs file") from exc
    # resolve() has followed "..", encoded or not, and symlinks: what is left must be inside root.
    if not target.is_relative_to(root):
        raise HTTPException(404, "no such data docs file")
    state = open_state(settings)
    if not state.is_home:
        state.pull(target)  # the shared copy (a no-op when this host's cache holds that very version)
    if not target.is_file():
        raise HTTPException(404, "no such data docs file")
    return FileResponse(target)


def create_app(
    auth: ViewAuth,
    *,
    prefix: str = DEFAULT_PREFIX,
    settings_factory: Callable[[], Settings] = Settings.from_env,
) -> FastAPI:
    """The models view, to be mounted at ``prefix`` of the Airflow API server."""
    app = FastAPI(
        title="Models view",
        dependencies=[Depends(current_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.view = ViewConfig(auth=auth, prefix=prefix, settings_factory=settings_factory)
    # The login is injected, not imported: Airflow's own in production, a stub in tests.
    app.dependency_overrides[current_user] = auth.user
    app.middleware("http")(_no_store)
    # Starlette's class: the router's own 404/405 are not FastAPI's subclass.
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _registry_error)
    app.add_exception_handler(PipelineError, _pipeline_error)
    # The deployed versions of a file:// bucket (folder, model card, files), read-only.
    app.include_router(bucket_pages.router)
    app.include_router(router)
    return app


async def _no_store(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    # Pages behind a login must not be served to the next user from a shared cache.
    response = await call_next(request)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    config: ViewConfig = request.app.state.view
    if exc.status_code == 401 and _wants_html(request):
        login = config.auth.login_url(str(request.url))
        if login:
            return RedirectResponse(login, status_code=307)
    if _wants_html(request):
        page = render_message(f"{exc.status_code}", str(exc.detail), _links(request))
        return HTMLResponse(page, status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _registry_error(request: Request, exc: Exception) -> Response:
    # The registry is down or misconfigured: say so and what to check, not a bare 500.
    config: ViewConfig = request.app.state.view
    url = make_url(config.settings_factory().registry_url).render_as_string(hide_password=True)
    cause = getattr(exc, "orig", None) or exc  # the driver's message, without the SQL
    return _unavailable(
        request,
        f"the model registry at {url} could not be read ({type(cause).__name__}: {cause}); "
        "check PIPELINES_REGISTRY_URL and that the database is up",
    )


async def _pipeline_error(request: Request, exc: Exception) -> Response:
    # Project errors already name what to set or fix (e.g. an unsupported registry URL).
    return _unavailable(request, str(exc))


def _unavailable(request: Request, detail: str) -> Response:
    if _wants_html(request):
        return HTMLResponse(render_message("Models view unavailable", detail, _links(request)), 503)
    return JSONResponse({"detail": detail}, status_code=503)


def _wants_html(request: Request) -> bool:
    return "/api/" not in request.url.path and "text/html" in request.headers.get("accept", "")


def _links(request: Request) -> Links:
    config: ViewConfig = request.app.state.view
    return links_of(request, config.prefix)


def _as_json(view: VerticalOverview, links: Links) -> dict[str, Any]:
    data = view.to_dict()
    champion_run = view.champion.dag_run_id if view.champion else None
    data["links"] = {
        "page": links.vertical_page(view.name),
        "dag": links.dag(view.name),
        "champion_dag_run": links.dag_run(view.name, champion_run) if champion_run else None,
        "data_docs": links.data_docs(view.name) if view.has_data_docs else None,
    }
    return data
