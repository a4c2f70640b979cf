"""The models view as a FastAPI app: HTML pages, JSON endpoints and the data docs.

Authentication is injected (`ViewAuth`), not imported: Airflow's plugin
passes the API server's own security dependency (see `airflow_auth`), tests
can pass a stub, and this module stays free of Airflow.  The dependency is set
on the app itself, so every route, present or future, requires a user; the
interactive API docs FastAPI would add (``/docs``, ``/openapi.json``) are
switched off because they would not be behind it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.config import VERTICAL_NAME, Settings
from pipelines.errors import PipelineError
from pipelines.models_view import DEFAULT_PREFIX
from pipelines.models_view.bucket_pages import add_bucket_routes
from pipelines.models_view.html import Links, render_index, render_message, render_vertical
from pipelines.models_view.overview import (
    VerticalOverview,
    collect_all,
    collect_vertical,
    data_docs_root,
    listed_verticals,
)
from pipelines.registry.store import Registry

#: A logical date in a URL.
DS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Decisions and deployments per vertical on the overview page and in the list endpoint.
OVERVIEW_HISTORY = 10
#: ... and on one vertical's page (the JSON detail endpoint takes ``?history=``).
VERTICAL_HISTORY = 100


@dataclass(frozen=True)
class ViewAuth:
    """Who is asking and what they may see; Airflow's auth manager in production.

    ``user`` is a FastAPI dependency that returns the caller or raises
    ``HTTPException`` (401 without a session, 403 for a bad one).
    ``can_read(user, vertical)`` says whether the caller may see that
    vertical's DAG runs.  ``login_url(next_url)`` is where a browser without a
    session is sent (None: answer 401 instead).
    """

    user: Callable[..., Any] | Callable[..., Awaitable[Any]]
    can_read: Callable[[Any, str], bool]
    login_url: Callable[[str], str | None]


def create_app(
    auth: ViewAuth,
    *,
    prefix: str = DEFAULT_PREFIX,
    settings_factory: Callable[[], Settings] = Settings.from_env,
) -> FastAPI:
    """The models view, to be mounted at ``prefix`` of the Airflow API server."""
    user_dep = Depends(auth.user)
    app = FastAPI(
        title="Models view",
        dependencies=[user_dep],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def _no_store(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Pages behind a login must not be served to the next user from a shared cache.
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # Starlette's class: the router's own 404/405 are not FastAPI's subclass.
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401 and _wants_html(request):
            login = auth.login_url(str(request.url))
            if login:
                return RedirectResponse(login, status_code=307)
        if _wants_html(request):
            page = render_message(f"{exc.status_code}", str(exc.detail), _links(request, prefix))
            return HTMLResponse(page, status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(SQLAlchemyError)
    async def _registry_error(request: Request, exc: SQLAlchemyError) -> Response:
        # The registry is down or misconfigured: say so and what to check, not a bare 500.
        url = make_url(settings_factory().registry_url).render_as_string(hide_password=True)
        cause = getattr(exc, "orig", None) or exc  # the driver's message, without the SQL
        return _unavailable(
            request,
            f"the model registry at {url} could not be read ({type(cause).__name__}: {cause}); "
            "check PIPELINES_REGISTRY_URL and that the database is up",
        )

    @app.exception_handler(PipelineError)
    async def _pipeline_error(request: Request, exc: PipelineError) -> Response:
        # Project errors already name what to set or fix (e.g. an unsupported registry URL).
        return _unavailable(request, str(exc))

    def _unavailable(request: Request, detail: str) -> Response:
        if _wants_html(request):
            return HTMLResponse(render_message("Models view unavailable", detail, _links(request, prefix)), 503)
        return JSONResponse({"detail": detail}, status_code=503)

    def readable(user: Any, settings: Settings, registry: Registry) -> tuple[list[str], int]:
        names = listed_verticals(settings, registry)
        allowed = [n for n in names if auth.can_read(user, n)]
        return allowed, len(names) - len(allowed)

    def check_vertical(user: Any, vertical: str) -> tuple[Settings, Registry]:
        """404 for a vertical nobody knows, 403 for one the user may not read."""
        settings = settings_factory()
        registry = Registry.from_settings(settings)
        if vertical not in listed_verticals(settings, registry):
            raise HTTPException(404, f"unknown vertical {vertical!r}: no spec file and nothing in the registry")
        if not auth.can_read(user, vertical):
            raise HTTPException(403, f"your Airflow role may not read the runs of DAG {vertical!r}")
        return settings, registry

    def one_vertical(user: Any, vertical: str, history: int) -> VerticalOverview:
        settings, registry = check_vertical(user, vertical)
        return collect_vertical(registry, settings, vertical, history=history)

    # The deployed versions of a file:// bucket (folder, model card, files), read-only.
    add_bucket_routes(app, user_dep=user_dep, check_vertical=check_vertical, links_of=lambda r: _links(r, prefix))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: Any = user_dep) -> HTMLResponse:
        settings = settings_factory()
        registry = Registry.from_settings(settings)
        names, hidden = readable(user, settings, registry)
        views = collect_all(registry, settings, names, history=OVERVIEW_HISTORY)
        return HTMLResponse(render_index(views, _links(request, prefix), hidden=hidden))

    @app.get("/verticals/{vertical}", response_class=HTMLResponse)
    def vertical_page(request: Request, vertical: str, user: Any = user_dep) -> HTMLResponse:
        view = one_vertical(user, vertical, VERTICAL_HISTORY)
        return HTMLResponse(render_vertical(view, _links(request, prefix)))

    @app.get("/api/verticals")
    def api_verticals(
        request: Request, user: Any = user_dep, history: Annotated[int, Query(ge=0, le=500)] = 5
    ) -> dict[str, Any]:
        settings = settings_factory()
        registry = Registry.from_settings(settings)
        names, hidden = readable(user, settings, registry)
        links = _links(request, prefix)
        views = collect_all(registry, settings, names, history=history)
        return {"verticals": [_as_json(v, links) for v in views], "hidden": hidden}

    @app.get("/api/verticals/{vertical}")
    def api_vertical(
        request: Request, vertical: str, user: Any = user_dep, history: Annotated[int, Query(ge=0, le=500)] = 50
    ) -> dict[str, Any]:
        return _as_json(one_vertical(user, vertical, history), _links(request, prefix))

    @app.get("/docs/{vertical}/runs/{ds}")
    def data_docs_of_date(vertical: str, ds: str, user: Any = user_dep) -> RedirectResponse:
        """The newest validation result of logical date ``ds``: a stable link for alerts and pages."""
        if not VERTICAL_NAME.match(vertical) or not DS_PATTERN.fullmatch(ds):
            raise HTTPException(404, "no such data docs")
        settings, _ = check_vertical(user, vertical)
        root = data_docs_root(settings, vertical)
        # GX files a result under validations/<suite>/<run name>/<run time>/; the run name is "<vertical>-<ds>".
        pages = sorted(root.glob(f"validations/**/{vertical}-{ds}/*/*.html"), key=lambda p: p.parent.name)
        if not pages:
            raise HTTPException(404, f"no validation result of {vertical} for {ds} in the data docs")
        # Relative, so it works under any mount point or proxy prefix: ../ leaves "runs/".
        return RedirectResponse("../" + pages[-1].relative_to(root).as_posix(), status_code=307)

    @app.get("/docs/{vertical}/{path:path}")
    def data_docs(vertical: str, path: str, user: Any = user_dep) -> FileResponse:
        """The vertical's Great Expectations data docs, read-only, never a file outside them."""
        if not VERTICAL_NAME.match(vertical):
            raise HTTPException(404, "no such data docs")
        settings, _ = check_vertical(user, vertical)
        root = data_docs_root(settings, vertical).resolve()
        try:
            target = (root / (path or "index.html")).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
            raise HTTPException(404, "no such data docs file") from exc
        # resolve() has followed "..", encoded or not, and symlinks: what is left must be inside root.
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, "no such data docs file")
        return FileResponse(target)

    return app


def _wants_html(request: Request) -> bool:
    return "/api/" not in request.url.path and "text/html" in request.headers.get("accept", "")


def _links(request: Request, prefix: str) -> Links:
    # root_path is where the server mounted this app (plus any proxy prefix of Airflow itself).
    view_root = str(request.scope.get("root_path", "")).rstrip("/") or prefix
    ui_root = view_root[: -len(prefix)] if view_root.endswith(prefix) else ""
    return Links(ui_root=ui_root + "/", view_root=view_root)


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
