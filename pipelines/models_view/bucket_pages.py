"""Read-only pages of a ``file://`` deployment bucket: a version's folder, its model card, its files.

Added to the models view's app (`add_bucket_routes`), so they sit behind the
same login and the same per-vertical permission as every other page.  Only
files the version's ``checksums.json`` lists are served (names checked by
`pipelines.release.bucket.parse_manifest`), never a path built from the request; an
``s3://`` bucket is not proxied: the view shows its URI instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.params import Depends
from fastapi.responses import FileResponse, HTMLResponse

from pipelines.config import Settings
from pipelines.models_view.html import Links, render_model_card, render_version_folder
from pipelines.models_view.overview import bucket_location, local_bucket_root
from pipelines.registry.store import Registry
from pipelines.release.bucket import CHECKSUMS_FILE, MODEL_CARD_FILE, Bucket, inspect_folder, read_pointer

#: Vertical and version names are path segments: the bucket's own rule (`pipelines.release.bucket.check_name`).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Shown inline; anything else (weights) is a download.
_INLINE_TYPES = {
    ".md": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: A served file is data, never a page that runs code on Airflow's origin.
_FILE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; sandbox"


def version_folder(settings: Settings, vertical: str, model_version: str) -> Path:
    """The local folder of a deployed version, or a 404 that says why it is not served."""
    if not (_SAFE_NAME.match(vertical) and _SAFE_NAME.match(model_version)):
        raise HTTPException(404, "no such model version")
    uri = bucket_location(settings.bucket_url, vertical).version_uri(model_version)
    root = local_bucket_root(settings.bucket_url)
    if root is None:
        raise HTTPException(
            404, f"the deployment bucket is not a local folder: open {uri} with your object store's tools"
        )
    folder = root / vertical / "versions" / model_version
    if not (folder / CHECKSUMS_FILE).is_file():
        raise HTTPException(
            404,
            f"{vertical} version {model_version} is not in the bucket at {uri} "
            "(never deployed, or its upload did not finish)",
        )
    return folder


def add_bucket_routes(
    app: FastAPI,
    *,
    user_dep: Depends,
    check_vertical: Callable[[Any, str], tuple[Settings, Registry]],
    links_of: Callable[[Request], Links],
) -> None:
    """``/bucket/<vertical>/<version>/`` (folder), ``…/model-card`` (rendered), ``…/<file>`` (raw)."""

    @app.get("/bucket/{vertical}/{model_version}/", response_class=HTMLResponse)
    def bucket_version(request: Request, vertical: str, model_version: str, user: Any = user_dep) -> HTMLResponse:
        settings, _ = check_vertical(user, vertical)
        folder = version_folder(settings, vertical, model_version)
        state = inspect_folder(Bucket.open(settings.bucket_url), vertical, model_version)
        pointer = read_pointer(settings.bucket_url, vertical)
        links = links_of(request)
        base = links.bucket_version(vertical, model_version)
        names = {**state.files, CHECKSUMS_FILE: ""}
        files = [
            {
                "name": name,
                "href": base + name,
                "size": (folder / name).stat().st_size if (folder / name).is_file() else None,
                "sha256": digest or "(the manifest itself)",
            }
            for name, digest in sorted(names.items())
        ]
        view = {
            "uri": bucket_location(settings.bucket_url, vertical).version_uri(model_version),
            "files": files,
            "failure": state.failure,
            "in_production": bool(pointer and pointer.get("version") == model_version),
        }
        return HTMLResponse(render_version_folder(vertical, model_version, view, links))

    @app.get("/bucket/{vertical}/{model_version}/model-card", response_class=HTMLResponse)
    def model_card(request: Request, vertical: str, model_version: str, user: Any = user_dep) -> HTMLResponse:
        from markdown_it import MarkdownIt

        settings, _ = check_vertical(user, vertical)
        path = version_folder(settings, vertical, model_version) / MODEL_CARD_FILE
        if not path.is_file():
            raise HTTPException(404, f"{vertical} version {model_version} has no {MODEL_CARD_FILE}")
        # "html": False renders any HTML inside the Markdown as text, never as markup.
        markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
        card = markdown.render(path.read_text(encoding="utf-8"))
        return HTMLResponse(render_model_card(vertical, model_version, card, links_of(request)))

    @app.get("/bucket/{vertical}/{model_version}/{name}")
    def bucket_file(vertical: str, model_version: str, name: str, user: Any = user_dep) -> FileResponse:
        settings, _ = check_vertical(user, vertical)
        folder = version_folder(settings, vertical, model_version)
        state = inspect_folder(Bucket.open(settings.bucket_url), vertical, model_version)
        # Only what the manifest lists (its names are checked for "/" tricks and ".."), and the manifest.
        if name != CHECKSUMS_FILE and name not in state.files:
            raise HTTPException(404, f"{name!r} is not a file of {vertical} version {model_version}")
        target = folder / name
        if not target.is_file():
            raise HTTPException(404, f"{name} is listed in {CHECKSUMS_FILE} but missing from the folder")
        media = _INLINE_TYPES.get(target.suffix)
        headers = {"Content-Security-Policy": _FILE_CSP}
        if media is None:
            return FileResponse(target, media_type="application/octet-stream", filename=name, headers=headers)
        return FileResponse(target, media_type=media, headers=headers)
