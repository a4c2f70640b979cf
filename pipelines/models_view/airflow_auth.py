"""The Airflow side of the models view: Airflow's own login in front of every route.

The only module of the view that imports Airflow, and only when the API server
first routes a request to it: the plugin module is also imported by the
scheduler, the DAG processor and every task process, which have no use for
the API server's security stack (importing it costs them most of a second).

* Who: ``airflow.api_fastapi.core_api.security.get_user``, the dependency the
  REST API uses.  It accepts the ``Authorization: Bearer`` JWT (``POST
  /auth/token``) or the ``_token`` cookie the Airflow UI holds after login,
  and raises 401 without either, 401 for an expired token and 403 for a bad one.
* What: the auth manager's ``is_authorized_dag(GET, RUN)`` per vertical (the
  DAG id is the vertical's name), the permission that shows a DAG's runs in
  the UI.  A user who may not read a vertical's runs does not see it here.
* Where to log in: ``get_url_login(next_url=...)``, so a browser without a
  session comes back to the page it asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.models_view import DEFAULT_PREFIX

if TYPE_CHECKING:
    from pipelines.models_view.app import ViewAuth

#: The Airflow UI's nav entry: an iframe of the view inside the UI (``/plugin/models``).
EXTERNAL_VIEW: dict[str, Any] = {
    "name": "Models",
    # Relative, no leading slash: the UI resolves it against its <base href> (the API root).
    "href": DEFAULT_PREFIX.lstrip("/") + "/",
    "url_route": "models",
    "destination": "nav",
    "nav_top_level": True,
    "icon": (
        "data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' "
        "stroke='%23687385' stroke-width='2' stroke-linecap='round' stroke-linejoin='round'>"
        "<path d='M12 2 3 7l9 5 9-5-9-5z'/><path d='m3 17 9 5 9-5'/><path d='m3 12 9 5 9-5'/></svg>"
    ),
}


def airflow_view_auth() -> ViewAuth:
    """`ViewAuth` backed by the running API server's auth manager."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import get_user
    from airflow.models.dag import DagModel

    from pipelines.models_view.app import ViewAuth

    def can_read(user: Any, vertical: str) -> bool:
        return get_auth_manager().is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=vertical, team_name=DagModel.get_team_name(vertical)),
            user=user,
        )

    def login_url(next_url: str) -> str | None:
        return get_auth_manager().get_url_login(next_url=next_url)

    return ViewAuth(user=get_user, can_read=can_read, login_url=login_url)


class LazyAirflowApp:
    """An ASGI app that builds the real one (and imports Airflow's security) on first use."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._app: Any = None

    def __repr__(self) -> str:  # what GET /api/v2/plugins lists as the app
        return f"pipelines.models_view.airflow_auth.LazyAirflowApp(prefix={self.prefix!r})"

    def _build(self) -> Any:
        if self._app is None:
            from pipelines.models_view.app import create_app
            from pipelines.orchestration import connections

            # The bucket's credentials may live only in Airflow (metadata DB, secrets backend).
            connections.install()
            self._app = create_app(airflow_view_auth(), prefix=self.prefix)
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._build()(scope, receive, send)
