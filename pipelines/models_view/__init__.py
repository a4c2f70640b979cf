"""The models view: champions, gate decisions and deployments per vertical, in the Airflow UI.

``overview``      what is shown, gathered from the specs and the registry (no web, no Airflow)
``html``          the pages: Jinja2 templates under ``templates/`` (autoescaped, one stylesheet)
``dependencies``  what routes depend on: the caller, settings, registry, a readable vertical
``app``           the routes (an APIRouter) and `create_app`, which injects the login
``bucket_pages``  the read-only pages of a ``file://`` bucket's version folders (an APIRouter)
``airflow_auth``  Airflow's login and DAG permissions wired in (the only Airflow import)

``plugins/models_view.py`` mounts the app under `DEFAULT_PREFIX` of the Airflow
API server and adds the "Models" entry to the UI's navigation.  This package
imports nothing heavy on import: the plugin module is loaded by every Airflow
process, not only the API server.
"""

from __future__ import annotations

#: Where the Airflow plugin mounts the app (``fastapi_apps`` url_prefix).
DEFAULT_PREFIX = "/models"
