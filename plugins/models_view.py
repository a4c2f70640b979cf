"""Airflow plugin: the models view under /models of the API server, and "Models" in the UI nav.

Thin on purpose: the app lives in `pipelines.models_view`; this file only
registers it.  Every route requires Airflow's own login (see
`pipelines.models_view.airflow_auth`).  The API server reads plugins once at
start-up: restart it after changing this package.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipelines.models_view import DEFAULT_PREFIX
from pipelines.models_view.airflow_auth import EXTERNAL_VIEW, LazyAirflowApp


class ModelsViewPlugin(AirflowPlugin):
    """Champions, gate decisions and deployments per vertical, behind Airflow's login."""

    name = "models_view"
    fastapi_apps = [{"app": LazyAirflowApp(DEFAULT_PREFIX), "url_prefix": DEFAULT_PREFIX, "name": "Models"}]
    external_views = [EXTERNAL_VIEW]
