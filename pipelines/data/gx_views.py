"""GX data docs views and site builders whose nightly cost does not grow with the stored history.

GX builds a fresh site builder, and so a fresh Jinja ``Environment``, for every
``build_data_docs`` call: each validation recompiles the ~50 page templates
(about as long as validating 100k rows).  The site config of each vertical's GX
project names these views (`quality.DOCS_VIEWS`, GX's ``view`` setting of a
site section and of the index builder); they render exactly as GX's defaults but
share one environment per process, and Jinja's bytecode cache (in the system's
temporary folder, checked against each template's source) keeps the compiled
templates for the next process.

The same config names the builders below (GX's ``class_name``/``module_name`` of a
site section and of the index builder).  GX's own list every stored validation
result on each build and parse each key's run time with ``dateutil`` (four times
per build: two sections and the index's two listings), so a year of nightly
results made each night's validation slower than a month's; these look only at
what the build needs and build the same pages and the same index.

Imported by GX only, when it builds data docs (never at DAG parse).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, ClassVar

from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.render.renderer.site_builder import (
    FALSEY_YAML_STRINGS,
    DefaultSiteIndexBuilder,
    DefaultSiteSectionBuilder,
)
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import Environment, FileSystemBytecodeCache

#: How GX writes a run time into a key (`RunIdentifier.to_tuple`): UTC, so text order is time order.
RUN_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
#: The site sections whose pages are validation results (GX builds the index from the first enabled one).
RESULT_SECTIONS = ("validations", "profiling")


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


class _Listing:
    """A section's source store as its builder sees it: listing only ``keys``, otherwise the store itself."""

    def __init__(self, store: Any, keys: list[Any]) -> None:
        self._store = store
        self._keys = keys

    def list_keys(self) -> list[Any]:
        return list(self._keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class IncrementalSiteSectionBuilder(DefaultSiteSectionBuilder):
    """GX's section builder that, told which resources to (re)build, lists only those.

    GX's lists the whole source store and then skips every key but the ones asked
    for (the checkpoint's docs action asks for tonight's result and its suite).
    Asked for nothing, it rebuilds every page as GX's does.
    """

    def build(self, resource_identifiers: Iterable[Any] | None = None) -> None:
        if not resource_identifiers:
            return super().build(resource_identifiers)
        asked = list(resource_identifiers)
        store = self.source_store
        stored = [key for key in asked if isinstance(key, store.key_class) and store.has_key(key)]
        self.source_store = _Listing(store, stored)
        try:
            return super().build(asked)
        finally:
            self.source_store = store


class _FolderListing:
    """A site page backend that lists its own folder of the site, otherwise the backend itself.

    The site's backends for suite pages and validation pages share the site's root
    folder; GX lists either by walking the whole site (a year of validation pages,
    the static assets) and keeping the paths under its prefix (``validations``,
    ``expectations``).  Listing under that prefix walks only that folder.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def list_keys(self, prefix: tuple[str, ...] = ()) -> list[Any]:
        folder = getattr(self._backend, "filepath_prefix", None)
        return self._backend.list_keys(prefix or ((folder,) if folder else ()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class ListedSiteIndexBuilder(DefaultSiteIndexBuilder):
    """GX's index builder, listing only the folders it reads and its keys without ``dateutil``.

    Same contract as GX's: every validation page of the site whose result is still
    stored (with ``skip_and_clean_missing``, a page whose result is gone is removed),
    as keys the index then filters by run name, sorts by run time and caps at
    ``validation_results_limit``.  The stored results are compared by their keys'
    text, and a run time in GX's own key format is read with ``strptime``.
    """

    def build(self, skip_and_clean_missing: bool = True, build_index: bool = True) -> tuple[Any, Any]:
        # The site's page store, built for this one docs build (GX builds a site builder per build).
        backends = self.target_store.store_backends
        for key_class in (ExpectationSuiteIdentifier, ValidationResultIdentifier):
            if not isinstance(backends[key_class], _FolderListing):
                backends[key_class] = _FolderListing(backends[key_class])
        return super().build(skip_and_clean_missing, build_index)

    def _build_validation_and_profiling_result_site_keys(
        self, skip_and_clean_missing: bool
    ) -> list[ValidationResultIdentifier]:
        sections = self.site_section_builders_config
        enabled = [name for name in RESULT_SECTIONS if sections.get(name, "None") not in FALSEY_YAML_STRINGS]
        if not enabled:
            return []
        source = self.data_context.stores[sections[enabled[0]].get("source_store_name")]
        stored = {_canonical(key) for key in source.store_backend.list_keys()}
        pages = self.target_store.store_backends[ValidationResultIdentifier]
        keys = []
        for key in pages.list_keys():
            if skip_and_clean_missing and _canonical(key) not in stored:
                pages.remove_key(key)
            else:
                keys.append(result_key(key))
        return keys


def _canonical(key: tuple[str, ...]) -> tuple[str, ...]:
    # A suite name with dots is one part in a fixed-length key and several otherwise.
    return (".".join(key[:-3]), *key[-3:])


def result_key(key: tuple[str, ...]) -> ValidationResultIdentifier:
    """GX's `ValidationResultIdentifier.from_tuple`, with its own run-time format read without ``dateutil``."""
    try:
        run_time = dt.datetime.strptime(key[-2], RUN_TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return ValidationResultIdentifier.from_tuple(key)  # another format (an older GX): its own parser
    return ValidationResultIdentifier(
        ExpectationSuiteIdentifier(".".join(key[:-3])), RunIdentifier(key[-3], run_time), key[-1]
    )
