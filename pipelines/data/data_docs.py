"""Great Expectations data docs that work without internet access, linked over HTTP.

GX 1.24's site builder writes pages that load Bootstrap, jQuery, bootstrap-table,
Font Awesome and Vega from public CDNs (and its logo from a public bucket).
Where those hosts are unreachable, as on most production networks, the pages
render unstyled and the index, which bootstrap-table fills from JavaScript,
lists nothing.  `make_offline` copies the vendored builds in
``pipelines/data/data_docs_assets`` into the site (``static/vendor/``) and points
every page at those copies by relative path, so the site works from the Models
view over HTTP and from a plain folder alike.

People reach the docs through the Models view plugin of the Airflow API server
(``<public_url>/models/docs/<vertical>/…``): `docs_url` builds those links.
This module imports nothing heavy (no GX): it only rewrites files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

from pipelines.config import Settings

log = logging.getLogger(__name__)

#: The vendored files (see the README there for versions and licenses).
ASSETS_DIR = Path(__file__).parent / "data_docs_assets"
#: Where they go inside a data docs site.
SITE_VENDOR_DIR = Path("static") / "vendor"
#: Where the Models view plugin serves a vertical's site (`pipelines.models_view.DEFAULT_PREFIX` + /docs).
DOCS_ROUTE = "/models/docs"

#: Every URL the GX 1.24 templates load, without its query string -> the vendored file.
CDN_ASSETS: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap-4.3.1/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap-4.3.1/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js-1.12.9/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table-1.19.1/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table-1.19.1/bootstrap-table.min.js"
    ),
    # The templates ask for the filter-control CSS of 1.19.0 (minified or not) and its JS of 1.19.1.
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "bootstrap-table-1.19.1/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "bootstrap-table-1.19.1/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "bootstrap-table-1.19.1/bootstrap-table-filter-control.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker-1.9.0/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker-1.9.0/bootstrap-datepicker.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "bootstrap-dark-1.1.0/bootstrap-prefers-dark.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome-free-6.6.0/css/all.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": "vega-5.33.1/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite-5.23.0/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed-6.29.0/vega-embed.min.js",
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png": "images/logo.svg",
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png": "images/logo.svg",
}

_URL = re.compile(r"""https?://[^\s"'()<>]+""")
# Subresource-integrity pins name the CDN's bytes; the vendored copies are served same-origin.
_SRI = re.compile(r"""\s+(?:integrity|crossorigin)=(?:"[^"]*"|'[^']*')""")
_STATIC_REF = re.compile(r"""(\b(?:src|href)=["'])(?:\./|\.\./)*(static/[^"'?#]+)""")
_LOADING_TAG = re.compile(r"<(?:script|link|img|iframe|source|embed|object)\b[^>]*>", re.IGNORECASE)
_TAG_URL = re.compile(r"""\b(?:src|href|data)\s*=\s*["']?((?:https?:)?//[^\s"'>]+)""", re.IGNORECASE)
_CSS_URL = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])((?:https?:)?//[^\s"')]+)""", re.IGNORECASE)


def site_root(settings: Settings, vertical: str) -> Path:
    """The vertical's data docs site folder (GX's ``local_site``)."""
    return settings.home / "gx" / vertical / "gx" / "uncommitted" / "data_docs" / "local_site"


def docs_url(settings: Settings, vertical: str, page: str = "index.html") -> str:
    """``page`` of the vertical's data docs, as served by the Models view under the public base URL."""
    return f"{settings.public_url.rstrip('/')}{DOCS_ROUTE}/{quote(vertical, safe='')}/{quote(page)}"


def external_resources(html: str) -> list[str]:
    """URLs on other hosts that a browser would fetch to render ``html`` (links to click are not counted)."""
    found = [m.group(1) for tag in _LOADING_TAG.finditer(html) for m in _TAG_URL.finditer(tag.group(0))]
    found += [m.group(1) for m in _CSS_URL.finditer(html)]
    return found


def make_offline(root: Path, *, since: float | None = None, pages: list[Path] | None = None) -> list[Path]:
    """Vendor the assets into the site at ``root`` and point its pages at them.

    Only pages written at or after ``since`` (a POSIX time) are read, so a site
    with a year of validations does not cost a year of rewriting each night;
    without it (or the first time the assets land in the site) every page is.
    ``pages``, when the caller knows what GX just wrote, are the only ones
    looked at (not even listing the site's year of pages).  Returns the pages rewritten.
    """
    if _copy_assets(root / SITE_VENDOR_DIR):
        since, pages = None, None  # new or refreshed assets: bring every page of an older site along, once
    rewritten = []
    for page in sorted(root.rglob("*.html")) if pages is None else [p for p in pages if p.is_file()]:
        if since is not None and page.stat().st_mtime < since:
            continue
        text = page.read_text(encoding="utf-8")
        offline = _rewrite(text, page.parent, root)
        if offline != text:
            page.write_text(offline, encoding="utf-8")
            rewritten.append(page)
        left = external_resources(offline)
        if left:
            # A GX upgrade added an asset: the page still works online; say what to vendor.
            log.warning("data docs page %s still loads %s; vendor it in %s", page, ", ".join(left), ASSETS_DIR)
    return rewritten


def _rewrite(text: str, folder: Path, root: Path) -> str:
    def local(match: re.Match[str]) -> str:
        url = match.group(0)
        target = CDN_ASSETS.get(url.split("?", 1)[0])
        if target is None:
            return url
        return Path(os.path.relpath(root / SITE_VENDOR_DIR / target, folder)).as_posix()

    def static(match: re.Match[str]) -> str:
        fixed = Path(os.path.relpath(root / match.group(2), folder)).as_posix()
        return f"{match.group(1)}{fixed}"

    swapped = _URL.sub(local, text)
    swapped = _SRI.sub("", swapped) if swapped != text else swapped
    # GX's validation pages point one folder short for its own static files (the favicon): re-aim them.
    return _STATIC_REF.sub(static, swapped)


def _copy_assets(target: Path) -> bool:
    """Copy the vendored files once (again only when this package's copy changed); True if copied."""
    stamp = target / ".vendored"
    version = _assets_version()
    if stamp.is_file() and stamp.read_text() == version:
        return False
    shutil.copytree(ASSETS_DIR, target, dirs_exist_ok=True)
    stamp.write_text(version)
    return True


def _assets_version() -> str:
    # Names and sizes are enough to notice a refreshed vendor folder; hashing 2 MB nightly is not needed.
    files = sorted(p for p in ASSETS_DIR.rglob("*") if p.is_file())
    return "\n".join(f"{p.relative_to(ASSETS_DIR).as_posix()} {p.stat().st_size}" for p in files)
