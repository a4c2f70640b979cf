"""What the models view's routes depend on: who asks, the settings, the registry, a readable vertical.

FastAPI dependencies, so each route declares what it needs instead of
closing over the app factory's locals.  The per-app values (the login, how
settings are read, where the app is mounted) live on ``app.state.view``
(`ViewConfig`), set by `pipelines.models_view.app.create_app`.

``current_user`` is a placeholder that `create_app` replaces with the
injected login dependency (``app.dependency_overrides``): the login is
Airflow's own in production and a stub in tests, and this package never
imports Airflow to name it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from pipelines.config import Settings
from pipelines.models_view.html import Links
from pipelines.models_view.overview import listed_verticals
from pipelines.registry.store import Registry


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


@dataclass(frozen=True)
class ViewConfig:
    """One app's wiring: its login, where it is mounted, how it reads the settings."""

    auth: ViewAuth
    prefix: str
    settings_factory: Callable[[], Settings]


def view_config(request: Request) -> ViewConfig:
    config: ViewConfig = request.app.state.view
    return config


def current_user() -> Any:
    """The caller; `create_app` overrides this with the injected login dependency."""
    raise RuntimeError("the models view app was built without a login: use pipelines.models_view.app.create_app")


def get_settings(config: Annotated[ViewConfig, Depends(view_config)]) -> Settings:
    return config.settings_factory()


def get_registry(settings: Annotated[Settings, Depends(get_settings)]) -> Registry:
    """The registry of the settings (one shared engine per URL per process)."""
    return Registry.from_settings(settings)


def links_of(request: Request, prefix: str) -> Links:
    """The UI's and the view's roots for this request."""
    # root_path is where the server mounted this app (plus any proxy prefix of Airflow itself).
    view_root = str(request.scope.get("root_path", "")).rstrip("/") or prefix
    ui_root = view_root[: -len(prefix)] if view_root.endswith(prefix) else ""
    return Links(ui_root=ui_root + "/", view_root=view_root)


def get_links(request: Request, config: Annotated[ViewConfig, Depends(view_config)]) -> Links:
    return links_of(request, config.prefix)


def readable_verticals(
    user: Annotated[Any, Depends(current_user)],
    config: Annotated[ViewConfig, Depends(view_config)],
    settings: Annotated[Settings, Depends(get_settings)],
    registry: Annotated[Registry, Depends(get_registry)],
) -> tuple[list[str], int]:
    """The verticals the caller may read, and how many others are hidden from them."""
    names = listed_verticals(settings, registry)
    allowed = [n for n in names if config.auth.can_read(user, n)]
    return allowed, len(names) - len(allowed)


def readable_vertical(
    vertical: str,
    user: Annotated[Any, Depends(current_user)],
    config: Annotated[ViewConfig, Depends(view_config)],
    settings: Annotated[Settings, Depends(get_settings)],
    registry: Annotated[Registry, Depends(get_registry)],
) -> str:
    """The path's ``vertical``: 404 for one nobody knows, 403 for one the caller may not read."""
    if vertical not in listed_verticals(settings, registry):
        raise HTTPException(404, f"unknown vertical {vertical!r}: no spec file and nothing in the registry")
    if not config.auth.can_read(user, vertical):
        raise HTTPException(403, f"your Airflow role may not read the runs of DAG {vertical!r}")
    return vertical


User = Annotated[Any, Depends(current_user)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
LinksDep = Annotated[Links, Depends(get_links)]
ReadableVertical = Annotated[str, Depends(readable_vertical)]
