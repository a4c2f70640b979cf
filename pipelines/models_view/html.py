"""Server-rendered HTML of the models view: Jinja2 templates, one stylesheet, no build step.

Every page is a template under ``templates/`` rendered with autoescape on:
reasons and actors are free text written by other processes, and a version
or run id is only as safe as whoever wrote it, so no value reaches a page
unescaped.  The one exception is the model card, which the Markdown renderer
has already turned into HTML with raw HTML escaped (see `bucket_pages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from pipelines.models_view.overview import VerticalOverview

#: The data docs route of the app, under its prefix; the one place every data docs link is built
#: (`data_docs_href`), so the route can move without hunting for links.
DATA_DOCS_SEGMENT = "docs"
TEMPLATES_DIR = Path(__file__).with_name("templates")


def data_docs_href(view_root: str, vertical: str, page: str = "index.html") -> str:
    """The URL of ``page`` (relative to the vertical's data docs site) as the plugin serves it."""
    return f"{view_root}/{DATA_DOCS_SEGMENT}/{quote(vertical, safe='')}/{quote(page, safe='/')}"


@dataclass(frozen=True)
class Links:
    """Where the page points: the Airflow UI and this view, both as absolute paths.

    Derived per request from where the app is mounted, so the view works
    behind a reverse proxy that serves Airflow under a path prefix.
    """

    #: The Airflow UI's root, ending in "/" (e.g. "/" or "/airflow/").
    ui_root: str
    #: This view's root, without the trailing "/" (e.g. "/models").
    view_root: str

    def dag_run(self, dag_id: str, run_id: str) -> str:
        # Run ids hold ":" and "+" (manual__2026-11-27T00:00:00+00:00): encode every reserved char.
        return f"{self.ui_root}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def dag(self, dag_id: str) -> str:
        return f"{self.ui_root}dags/{quote(dag_id, safe='')}"

    def data_docs(self, vertical: str) -> str:
        return data_docs_href(self.view_root, vertical)

    def data_docs_page(self, vertical: str, page: str) -> str:
        """A page of the data docs site, e.g. one date's validation result."""
        return data_docs_href(self.view_root, vertical, page)

    def bucket_version(self, vertical: str, model_version: str) -> str:
        """The version folder of a ``file://`` bucket, served read-only by the plugin."""
        return f"{self.view_root}/bucket/{quote(vertical, safe='')}/{quote(model_version, safe='')}/"

    def model_card(self, vertical: str, model_version: str) -> str:
        return self.bucket_version(vertical, model_version) + "model-card"

    def vertical_page(self, vertical: str) -> str:
        return f"{self.view_root}/verticals/{quote(vertical, safe='')}"

    def api(self, vertical: str | None = None) -> str:
        return f"{self.view_root}/api/verticals" + (f"/{quote(vertical, safe='')}" if vertical else "")


@cache
def environment() -> jinja2.Environment:
    """The view's template environment (built on first use: the plugin module loads everywhere)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every value is escaped unless a template marks it safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(name: str, **context: Any) -> str:
    """One of ``templates/*.html``, with every value HTML-escaped."""
    return environment().get_template(name).render(**context)


def render_index(views: list[VerticalOverview], links: Links, *, hidden: int = 0) -> str:
    """The overview: one summary row per vertical, then each vertical's champion and history."""
    return render_template(
        "index.html", title="Models", views=views, links=links, hidden=hidden, full_history_link=True
    )


def render_vertical(view: VerticalOverview, links: Links) -> str:
    """One vertical with its longer history."""
    return render_template(
        "vertical.html", title=f"Models · {view.name}", view=view, links=links, full_history_link=False
    )


def render_message(title: str, message: str, links: Links) -> str:
    """An error page (unknown vertical, registry unreachable) that says what to do."""
    return render_template("message.html", title=title, message=message, links=links)


def render_version_folder(vertical: str, model_version: str, folder: dict[str, Any], links: Links) -> str:
    """A deployed version folder: its files (read-only links), checksums and verification."""
    return render_template(
        "version_folder.html",
        title=f"{vertical} · {model_version}",
        links=links,
        vertical=vertical,
        folder=folder,
        card=links.model_card(vertical, model_version),
        back=links.vertical_page(vertical),
    )


def render_model_card(vertical: str, model_version: str, card_html: str, links: Links) -> str:
    """The model card, rendered from the version's ``model_card.md`` (raw HTML in it is escaped)."""
    return render_template(
        "model_card.html",
        title=f"Model card · {vertical} · {model_version}",
        links=links,
        vertical=vertical,
        card_html=card_html,
        folder=links.bucket_version(vertical, model_version),
        back=links.vertical_page(vertical),
    )
