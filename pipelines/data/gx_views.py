"""GX data docs views that compile their Jinja templates once, not on every docs build.

GX builds a fresh site builder, and so a fresh Jinja ``Environment``, for every
``build_data_docs`` call: each validation recompiles the ~50 page templates
(about as long as validating 100k rows).  The site config of each vertical's GX
project names these views (`quality.DOCS_VIEWS`, GX's ``view`` setting of a
site section and of the index builder); they render exactly as GX's defaults but
share one environment per process, and Jinja's bytecode cache (in the system's
temporary folder, checked against each template's source) keeps the compiled
templates for the next process.

Imported by GX only, when it builds data docs (never at DAG parse).
"""

from __future__ import annotations

from typing import Any, ClassVar

from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import Environment, FileSystemBytecodeCache


class _SharedEnvironment:
    """Reuse the first instance's environment (its compiled templates) for same-configured views."""

    _environments: ClassVar[dict[tuple[Any, ...], Environment]] = {}
    env: Environment

    def __init__(self, custom_styles_directory: str | None = None, custom_views_directory: str | None = None) -> None:
        key = (type(self), custom_styles_directory, custom_views_directory)
        super().__init__(custom_styles_directory, custom_views_directory)  # type: ignore[call-arg]
        shared = self._environments.get(key)
        if shared is None:
            self.env.bytecode_cache = FileSystemBytecodeCache()
            self._environments[key] = self.env
        else:
            # Its filters are bound to the first view, configured identically (same key).
            self.env = shared


class CachedJinjaPageView(_SharedEnvironment, DefaultJinjaPageView):
    """GX's page view (validation results, suites) with templates compiled once."""


class CachedJinjaIndexPageView(_SharedEnvironment, DefaultJinjaIndexPageView):
    """GX's index page view with templates compiled once."""
