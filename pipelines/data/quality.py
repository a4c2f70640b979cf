"""Validate new partitions with the vertical's Great Expectations suite.

Each vertical gets its own GX file project under ``<home>/gx/<vertical>`` (so
parallel verticals never write the same stores); a checkpoint runs the suite
and rebuilds the data docs.  The outcome is a `QualityReport`: a plain record
with every failed expectation and its observed values, written next to the run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.config import FileSource, Settings, VerticalSpec, load_suite
from pipelines.data import data_docs
from pipelines.errors import DataQualityError

if TYPE_CHECKING:
    from pipelines.data.sources import UnreadableFile
    from pipelines.notify.run_context import RunContext

log = logging.getLogger(__name__)

#: Failing rows kept per expectation (GX's partial lists), enough to triage.
SAMPLE_ROWS = 5
#: GX's own ``severity`` of an expectation: ``critical`` (the default) blocks the run,
#: ``warning`` and ``info`` are recorded (report, run summary, email, Models view) and the run goes on.
BLOCKING_SEVERITY = "critical"


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    expected: dict[str, Any]
    observed: Any
    unexpected_count: int | None
    #: Of every row checked (``element_count``), missing values included.
    unexpected_percent: float | None
    sample_values: list[Any]
    sample_keys: list[Any]
    notes: str | None
    #: Rows the expectation looked at (the base of ``unexpected_percent``).
    element_count: int | None = None
    #: GX's severity of the expectation (``critical``, ``warning`` or ``info``); only ``critical`` blocks.
    severity: str = BLOCKING_SEVERITY

    @property
    def blocking(self) -> bool:
        return self.severity == BLOCKING_SEVERITY


@dataclass(frozen=True)
class QualityReport:
    vertical: str
    ds: str
    suite: str
    days: list[str]
    rows: int
    success: bool
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)
    #: The data docs index, over HTTP (the Models view under ``Settings.public_url``).
    data_docs: str | None = None
    #: This validation's own page in the data docs.
    data_docs_page: str | None = None
    #: Rows of each day checked (``rows`` is their sum).
    rows_per_day: dict[str, int] = field(default_factory=dict)
    #: The days that fail on their own and were quarantined (set by the validate stage).
    failed_days: list[str] = field(default_factory=list)
    #: The label-mix and distribution tests against the rolling reference (see `check_batch`).
    distribution: dict[str, Any] | None = None
    #: Failed expectations whose severity is ``warning`` or ``info``: recorded, not blocking.
    warnings: list[FailedExpectation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Strict JSON (``quality.json``): a NaN or infinity from GX becomes null, never bare ``NaN``."""
        return json.dumps(strict_json(self.to_dict()), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def summary(self) -> str:
        if self.success:
            text = f"{self.suite}: {self.evaluated - len(self.warnings)} expectations passed on {self.rows} rows"
        else:
            names = ", ".join(f"{f.expectation}({f.column or 'table'})" for f in self.failed)
            failed = f"{len(self.failed)} of {self.evaluated} expectations failed"
            text = f"{self.suite}: {failed} on {self.rows} rows: {names}"
        return text + (f"; {self.warning_summary()}" if self.warnings else "")

    def warning_summary(self) -> str:
        """One line naming the non-blocking failures ("" when there are none)."""
        if not self.warnings:
            return ""
        names = ", ".join(f"{f.expectation}({f.column or 'table'})" for f in self.warnings)
        return f"{len(self.warnings)} warning(s), not blocking: {names}"


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """GX results carry numpy scalars; make them plain for JSON and email."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


#: Validations the data docs index lists (GX's ``validation_results_limit``): the newest ones.  GX
#: reads every listed result back to build the index, so an unbounded index costs each night in
#: proportion to the stored history; older pages stay on disk, reached by date through the Models view.
DOCS_INDEX_VALIDATIONS = 30
#: GX's default page views and site builders, their cost flat in the stored history (see that module).
DOCS_VIEWS = "pipelines.data.gx_views"


@dataclass
class _Checkpoint:
    """A vertical's GX project and its registered checkpoint, reused for every validation of a process."""

    context: Any
    checkpoint: Any
    #: The suite and settings the checkpoint was registered with (`_registration`).
    registration: str
    #: (inode, mtime) of the project's files when opened: a project replaced on disk is opened again.
    stamp: tuple[tuple[int, int], ...]


#: One per GX project root, for the life of the process: opening a file project and
#: registering its suite, validation definition and checkpoint costs seconds of YAML and JSON.
_CHECKPOINTS: dict[Path, _Checkpoint] = {}


def _result_format(spec: VerticalSpec, level: str = "BASIC") -> dict[str, Any]:
    """GX's result format: counts and a capped sample of failing values (``partial_unexpected_count``).

    The suite runs at BASIC: SUMMARY would also ask GX for every failing row's
    index (and an index query), which the pandas engine computes by copying the
    whole batch per expectation even when nothing fails.  The failing rows' keys
    that the report and the email show come from SUMMARY re-run on the failed
    expectations only (`_with_sample_keys`).  Never COMPLETE: no full lists.
    """
    return {
        "result_format": level,
        "partial_unexpected_count": SAMPLE_ROWS,
        "unexpected_index_column_names": [spec.key],
        "return_unexpected_index_query": False,
    }


def _with_sample_keys(
    results: list[Any], checkpoint: Any, frame: pd.DataFrame, spec: VerticalSpec, parameters: dict[str, Any]
) -> list[Any]:
    """``results`` (GX's, at BASIC) with each failed row-level expectation's sample keys added.

    One SUMMARY validation of just the failed expectations that counted
    failing rows (on a good night, none: no cost), on the same batch.
    """
    import great_expectations as gx

    keyed = [r for r in results if not r.success and (r.result or {}).get("unexpected_count")]
    if not keyed or spec.key not in frame.columns:
        return results
    suite = gx.ExpectationSuite(
        name=f"{spec.suite_name}-samples", expectations=[copy.copy(r.expectation_config.to_domain_obj()) for r in keyed]
    )
    batch = checkpoint.validation_definitions[0].data.get_batch(batch_parameters={"dataframe": frame})
    samples = batch.validate(suite, result_format=_result_format(spec, "SUMMARY"), expectation_parameters=parameters)
    for result, sample in zip(keyed, samples.results, strict=True):
        found = sample.result or {}
        # The values and keys of the same failing rows, in the same order.
        result.result["partial_unexpected_list"] = found.get("partial_unexpected_list", [])
        result.result["partial_unexpected_index_list"] = found.get("partial_unexpected_index_list", [])
    return results


def _forget_batch(checkpoint: Any) -> None:
    """Make GX drop the batch it just validated, and every metric it computed on it.

    The checkpoint (kept for the process, `_CHECKPOINTS`) reaches the pandas datasource's
    execution engine, which holds the last batch and a cache of its metrics (condition
    series and column views sharing the frame's buffers) until the next validation.  In
    ``python -m pipelines run`` that kept a first night's backfill resident through train,
    evaluate and gate: 1.7 GB at 5M rows.  GX has no public call to forget a batch; the
    metric cache is its private ``_metric_cache`` (a ``dict``; anything else is left alone,
    and `tests/unit/test_quality.py` notices when the frame outlives the validation again).
    """
    engine = checkpoint.validation_definitions[0].data.data_asset.datasource.get_execution_engine()
    engine.batch_manager.reset_batch_cache()
    engine.batch_manager.batch_data_cache.clear()
    metrics = getattr(engine, "_metric_cache", None)
    if isinstance(metrics, dict):
        metrics.clear()


def _registration(spec: VerticalSpec, suite_json: dict[str, Any]) -> str:
    """What the registered GX objects depend on, as one string (compared, never parsed)."""
    return json.dumps(
        {"suite": suite_json, "name": spec.suite_name, "result_format": _result_format(spec)},
        sort_keys=True,
        default=str,
    )


def _project_stamp(root: Path, name: str) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in (root / "gx" / "great_expectations.yml", root / "gx" / "checkpoints" / f"{name}.json"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            return ()
        stamps.append((stat.st_ino, stat.st_mtime_ns))
    return tuple(stamps)


def _gx_checkpoint(settings: Settings, spec: VerticalSpec, suite_json: dict[str, Any]) -> _Checkpoint:
    """The vertical's context and checkpoint: opened and registered once, then reused.

    Registered again only when the reviewed suite (or how results are kept)
    changed; a stamp file in the project carries that across processes, so a
    nightly run opens the project and loads its checkpoint without rewriting it.
    """
    root = settings.home / "gx" / spec.name
    registration = _registration(spec, suite_json)
    cached = _CHECKPOINTS.get(root)
    if cached and cached.registration == registration and cached.stamp == _project_stamp(root, spec.name):
        return cached
    context = _gx_context(root)
    marker = root / "registered.json"  # beside the GX project, not in a store GX lists
    checkpoint = None
    if marker.is_file() and marker.read_text() == registration:
        try:
            checkpoint = context.checkpoints.get(spec.name)
        except Exception:  # any unreadable or missing checkpoint (GX raises several kinds): register it again
            log.info("%s: GX checkpoint unreadable; registering it again", spec.name)
    if checkpoint is None:
        checkpoint = _register(context, spec, suite_json)
        marker.write_text(registration)
    cached = _Checkpoint(context, checkpoint, registration, _project_stamp(root, spec.name))
    _CHECKPOINTS[root] = cached
    return cached


def _gx_context(root: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every in-memory batch under this size (an md5 over pandas' hash of each row, about a
    # second per million rows) into the result's batch markers; nothing here reads it (a data version is
    # DVC's content hash), so no batch is fingerprinted.
    pandas_execution_engine.HASH_THRESHOLD = 0

    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    changed = False
    if context.variables.config_variables_file_path:
        # No ${VAR} substitution is used; with a variables file GX re-reads and parses that YAML on
        # every access to a context variable (dozens per validation).
        context.variables.config_variables_file_path = None  # type: ignore[assignment]
        changed = True
    # Progress bars would flood Airflow task logs.
    bars = context.variables.progress_bars  # a ProgressBarsConfig, or a dict once read back from the file
    if bars is None or bars["globally"]:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        changed = True
    for site_name, site in (context.variables.data_docs_sites or {}).items():
        wanted: Any = _docs_site(site)  # GX types it as a TypedDict; it is the same dict, amended
        if wanted != site:
            context.update_data_docs_site(site_name, wanted)
    if changed:
        context.variables.save()
        context = gx.get_context(mode="file", project_root_dir=str(root))  # built without the variables file
    return context


def _docs_site(site: dict[str, Any]) -> dict[str, Any]:
    """``site`` (a GX data docs site config) with the index capped and the project's builders and views.

    The builders (`gx_views`) make a night's docs update independent of the stored
    history; the views compile GX's templates once per process.
    """
    site = copy.deepcopy(site)
    index = site.setdefault("site_index_builder", {})
    index.update(
        module_name=DOCS_VIEWS,
        class_name="ListedSiteIndexBuilder",
        validation_results_limit=DOCS_INDEX_VALIDATIONS,
        view={"module_name": DOCS_VIEWS, "class_name": "CachedJinjaIndexPageView"},
    )
    sections = site.setdefault("site_section_builders", {})
    for section in ("expectations", "validations", "profiling"):  # GX merges these into its default sections
        config = sections.setdefault(section, {})
        if not isinstance(config, dict):
            continue  # switched off ("None")
        config.update(module_name=DOCS_VIEWS, class_name="IncrementalSiteSectionBuilder")
        config["view"] = {"module_name": DOCS_VIEWS, "class_name": "CachedJinjaPageView"}
    return site


def _register(context: Any, spec: VerticalSpec, suite_json: dict[str, Any]) -> Any:
    """(Re)register the reviewed suite and a checkpoint that also updates data docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    name = spec.name
    suite_def = {k: v for k, v in suite_json.items() if k in ("expectations", "meta", "notes")}
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=spec.suite_name, **suite_def))
    source = context.data_sources.add_or_update_pandas(name)
    asset = source.add_dataframe_asset(name) if name not in source.get_asset_names() else source.get_asset(name)
    try:
        batch = asset.get_batch_definition(name)
    except KeyError:
        batch = asset.add_batch_definition_whole_dataframe(name)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format=_result_format(spec),
        )
    )


def validate_frame(
    frame: pd.DataFrame, spec: VerticalSpec, *, ds: str, days: list[str], settings: Settings
) -> QualityReport:
    """Run the vertical's suite on ``frame`` (the ``days`` being validated) and report.

    Row-count bounds in the suite are parameters scaled by the number of days,
    so one suite serves the nightly day and a first backfill alike.
    """
    import great_expectations as gx

    gx_project = _gx_checkpoint(settings, spec, load_suite(spec, settings))
    context, checkpoint = gx_project.context, gx_project.checkpoint
    n_days = max(len(days), 1)
    parameters = {
        "min_rows": spec.quality.min_rows_per_day * n_days,
        "max_rows": spec.quality.max_rows_per_day * n_days,
        "days": list(days),
    }
    started = time.time()
    try:
        result = checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            run_id=gx.RunIdentifier(run_name=f"{spec.name}-{ds}"),
        )
        [(validation_id, validation)] = result.run_results.items()
        results = _with_sample_keys(list(validation.results), checkpoint, frame, spec, parameters)
    finally:
        _forget_batch(checkpoint)
    unmet = [_mask_failure(_failed_expectation(r), spec.pii) for r in results if not r.success]
    # GX marks the whole validation unsuccessful on any failure; only a critical one blocks here.
    failed = [f for f in unmet if f.blocking]
    site = data_docs.site_root(settings, spec.name)
    page = _site_page(context.get_docs_sites_urls(resource_identifier=validation_id), site)
    # What GX's docs action rewrote: the index, the suite's page and this validation's page.
    written = [site / "index.html", *(site / "expectations").rglob("*.html"), *([site / page] if page else [])]
    data_docs.make_offline(site, since=started - 1, pages=written)
    batch = check_batch(frame, spec, days=days, settings=settings)
    return QualityReport(
        vertical=spec.name,
        ds=ds,
        suite=spec.suite_name,
        days=days,
        rows=len(frame),
        success=not failed and not batch.failed,
        evaluated=len(validation.results) + batch.evaluated,
        failed=failed + [_mask_failure(f, spec.pii) for f in batch.failed],
        warnings=[f for f in unmet if not f.blocking],
        data_docs=data_docs.docs_url(settings, spec.name) if (site / "index.html").is_file() else None,
        data_docs_page=data_docs.docs_url(settings, spec.name, page) if page else None,
        rows_per_day=rows_per_day(frame, spec, days),
        distribution=batch.distribution,
    )


@dataclass(frozen=True)
class BatchChecks:
    """What the checks beyond the suite found: schema, types, leaks, label mix, distributions."""

    failed: list[FailedExpectation]
    evaluated: int
    distribution: dict[str, Any] | None


def check_batch(frame: pd.DataFrame, spec: VerticalSpec, *, days: list[str], settings: Settings) -> BatchChecks:
    """The checks a per-row suite cannot express, run on the batch the suite just checked.

    Column set and types come from the spec (every column it does not declare
    blocks the day, a numeric feature must hold numbers), a leak check looks
    for a column that is a recoding of the label, and the label mix and each
    feature's distribution are tested against the validated days before the
    batch (`check_distribution`).
    """
    from pipelines.data.integration import check_join_coverage

    failed = check_columns(frame, spec) + check_join_coverage(frame, spec)
    distribution = check_distribution(frame, spec, days=days, settings=settings)
    findings = (distribution or {}).get("findings", [])
    failed += [_shift_failure(f, distribution or {}) for f in findings if f["blocking"]]
    return BatchChecks(failed=failed, evaluated=3 + len(spec.joins) + len(findings), distribution=distribution)


def check_columns(frame: pd.DataFrame, spec: VerticalSpec) -> list[FailedExpectation]:
    """Undeclared columns, non-numeric numeric features and label leaks in ``frame``."""
    from pipelines.data.profiles import is_numeric

    failed: list[FailedExpectation] = []
    declared = {spec.key, spec.source.event_time, spec.label.column, *spec.features.all, *spec.pii}
    declared |= spec.prepared_columns  # label inputs, join keys and columns, missing indicators
    unexpected = [c for c in frame.columns if c not in declared and c not in spec.quality.ignored_columns]
    if unexpected and spec.quality.unexpected_columns == "block":
        missing = sorted(c for c in spec.features.all if c not in frame.columns)
        failed.append(
            _check_failure(
                "expect_table_columns_to_be_declared",
                # Named in the error's one-line summary and the alert: the columns to look at.
                ", ".join(unexpected),
                {"declared": sorted(declared), "ignored_columns": spec.quality.ignored_columns},
                {"unexpected": unexpected, "missing_features": missing},
                f"column(s) {unexpected} are not in the spec"
                + (f" while feature(s) {missing} are missing: a rename?" if missing else "")
                + "; a new column may be a leaked outcome. Declare it (features, pii or quality.ignored_columns) "
                "in verticals/<vertical>.yaml once reviewed",
            )
        )
    for column in spec.features.numeric:
        if column in frame.columns and not is_numeric(frame[column]):
            values = frame[column].dropna()
            bad = values[pd.to_numeric(values, errors="coerce").isna()].astype(str).unique()[:SAMPLE_ROWS]
            failed.append(
                _check_failure(
                    "expect_column_values_to_be_numeric",
                    column,
                    {"type": "number"},
                    f"dtype {frame[column].dtype}",
                    "a numeric feature arrived as text: the source changed the column's type",
                    sample=[str(v) for v in bad],
                )
            )
    for column in _leaking_columns(frame, spec, candidates=[*spec.features.all, *unexpected]):
        failed.append(
            _check_failure(
                "expect_column_to_not_determine_the_label",
                column,
                {"label": spec.label.column},
                f"every value of {column!r} maps to a single label value and back",
                "a column that is a copy or recoding of the label leaks the outcome into training",
            )
        )
    return failed


def _leaking_columns(frame: pd.DataFrame, spec: VerticalSpec, *, candidates: list[str]) -> list[str]:
    """Columns in one-to-one correspondence with the label (a copy or recoding of it).

    Only on a batch where each class appears at least twice, and declared
    features only on ``quality.leak_min_rows`` rows: on 3 rows a yes/no
    feature matches the label by chance.  An undeclared column blocks anyway;
    naming it a leak tells the owners why it matters.
    """
    label_col = spec.label.column
    if label_col not in frame.columns:
        return []
    counts = frame[label_col].value_counts(dropna=False)
    if len(counts) < 2 or counts.min() < 2:
        return []  # with a class seen once, any two-valued column "maps" onto the label
    leaks = []
    for column in candidates:
        if column not in frame.columns or column == label_col:
            continue
        if column in spec.features.all and len(frame) < spec.quality.leak_min_rows:
            continue
        # Cheap first: a recoding of the label has as many values as the label, and the
        # first rows of a continuous feature already have more (this runs on large batches).
        if frame[column].head(1000).nunique(dropna=False) > len(counts):
            continue
        if frame[column].nunique(dropna=False) != len(counts):
            continue
        if len(frame[[column, label_col]].drop_duplicates()) == len(counts):
            leaks.append(column)
    return leaks


def distribution_reach(spec: VerticalSpec, days: list[str]) -> list[str]:
    """The validated days `check_distribution` may read for a batch of ``days``, latest first.

    The ``max_pool_days`` before the batch (pooled while it is small), then the
    ``reference_days`` before those; empty when the checks are off.  A worker
    needs these partitions and their profiles, not the whole validated history.
    """
    from datetime import date, timedelta

    checks = spec.quality.distribution
    if not checks.enabled or not days:
        return []
    first = date.fromisoformat(min(days))
    return [(first - timedelta(days=n)).isoformat() for n in range(1, checks.max_pool_days + checks.reference_days + 1)]


def store_validated_profiles(
    frame: pd.DataFrame, spec: VerticalSpec, partitions: dict[str, Path], validated: list[str], profiles_dir: Path
) -> list[str]:
    """Profile the newly ``validated`` days a later night's distribution checks can reach, from memory.

    ``frame`` holds ``partitions`` (day -> raw file, as `read_partitions` read them); the files
    become the validated partitions byte for byte.  Without this the first night after a
    backfill (or after a worker starts empty) reads back and profiles each reference day; with
    it, a backfill profiles its latest ``max_pool_days + reference_days`` days while they are in
    memory, and a nightly run its one day.  Returns the days stored.
    """
    from pipelines.data.profiles import store_partition_profiles

    checks = spec.quality.distribution
    if not checks.enabled or not validated:
        return []
    wanted = sorted(validated)[-(checks.max_pool_days + checks.reference_days) :]
    return store_partition_profiles(frame, partitions, spec, wanted, profiles_dir)


def check_distribution(
    frame: pd.DataFrame, spec: VerticalSpec, *, days: list[str], settings: Settings
) -> dict[str, Any] | None:
    """Test the batch's label mix and feature distributions against the validated days before it.

    The batch is pooled with the latest validated days until it holds
    ``min_batch_rows`` (at most ``max_pool_days``), so a 3-row day is judged
    with its recent past; the reference is the ``reference_days`` before
    that (`distribution_reach`).  Both come from stored per-day profiles
    (``data/<vertical>/profiles``), so the cost is the batch plus small files.
    None when switched off.
    """
    from pipelines.data.profiles import compare_profiles, profile_frame, stored_profile
    from pipelines.layout import Layout

    checks = spec.quality.distribution
    if not checks.enabled or not days:
        return None
    layout = Layout(settings, spec.name)
    profiles_dir = layout.validated(days[0]).parent.parent / "profiles"
    batch = profile_frame(frame, spec, list(days))
    reach = distribution_reach(spec, days)
    pooled: list[str] = []
    walked = 0
    while walked < checks.max_pool_days and batch.rows < checks.min_batch_rows:
        day = reach[walked]
        walked += 1
        stored = stored_profile(layout.validated(day), profiles_dir / f"{day}.json", spec, day)
        if stored is not None:
            batch = batch.merge(stored)
            pooled.append(day)
    reference = profile_frame(frame.iloc[0:0], spec)
    for day in reach[walked : walked + checks.reference_days]:
        stored = stored_profile(layout.validated(day), profiles_dir / f"{day}.json", spec, day)
        if stored is not None:
            reference = reference.merge(stored)
    result: dict[str, Any] = {
        "batch_days": list(days),
        "pooled_days": pooled,
        "batch_rows": batch.rows,
        "reference_days": reference.days,
        "reference_rows": reference.rows,
        "findings": [],
    }
    if reference.rows < checks.min_reference_rows:
        result["skipped"] = (
            f"{reference.rows} reference rows in the {checks.reference_days} days before the batch; "
            f"quality.distribution.min_reference_rows is {checks.min_reference_rows}"
        )
        return result
    findings = compare_profiles(batch, reference, checks, label=spec.label.column)
    result["findings"] = [f.to_dict() for f in findings]
    return result


_SHIFT_NAMES = {
    "label_share": ("expect_label_share_to_match_reference", "the share of the positive class changed"),
    "null_share": ("expect_column_null_share_to_match_reference", "the share of missing values changed"),
    "mean": (
        "expect_column_mean_to_match_reference",
        "the mean moved (a unit change, a broken sensor, a new population)",
    ),
    "categories": ("expect_column_category_shares_to_match_reference", "the mix of categories changed"),
}


def _shift_failure(finding: dict[str, Any], distribution: dict[str, Any]) -> FailedExpectation:
    name, why = _SHIFT_NAMES[finding["check"]]
    span = distribution["batch_days"] + distribution["pooled_days"]
    return _check_failure(
        name,
        finding["column"],
        {
            "reference": round(finding["reference"], 4),
            "max_change": finding["material"],
            "alpha": finding["alpha"],
            "reference_rows": finding["reference_rows"],
            "reference_days": f"{distribution['reference_days'][0]}..{distribution['reference_days'][-1]}",
        },
        {
            "batch": round(finding["batch"], 4),
            "change": round(finding["effect"], 4),
            "p_value": finding["p_value"],
            "batch_rows": finding["batch_rows"],
            "batch_days": f"{min(span)}..{max(span)}",
        },
        f"{why}, materially and significantly, against the validated days before the batch",
    )


def _check_failure(  # noqa: PLR0917 - one call per check, positional reads best
    name: str, column: str | None, expected: dict[str, Any], observed: Any, notes: str, sample: list[Any] | None = None
) -> FailedExpectation:
    return FailedExpectation(
        expectation=name,
        column=column,
        expected=_jsonable(expected),
        observed=_jsonable(observed),
        unexpected_count=None,
        unexpected_percent=None,
        sample_values=sample or [],
        sample_keys=[],
        notes=notes,
    )


def reject_unreadable_files(
    spec: VerticalSpec,
    ds: str,
    unreadable: dict[str, UnreadableFile],
    settings: Settings,
    run_context: RunContext | None = None,
) -> DataQualityError:
    """Quarantine the bytes of files that cannot be decoded, alert once, and return the error to raise.

    Retrying cannot fix a corrupt or truncated file, so this is bad data, not
    a source fault: the original bytes go to ``quarantine/<day>.<format>``
    (kept for triage, never read by training), a quality report and one
    data-quality alert name each file and the decoder's error.
    """
    import smtplib

    from pipelines.layout import Layout, write_bytes_atomic
    from pipelines.notify import alerts

    layout = Layout(settings, spec.name)
    fmt = spec.source.format if isinstance(spec.source, FileSource) else "bin"
    kept = {}
    for day, bad in unreadable.items():
        path = layout.quarantine(day).with_suffix(f".{fmt}")
        write_bytes_atomic(path, bad.data)
        kept[day] = path
    failed = [
        _check_failure(
            "expect_file_to_be_readable",
            None,
            {"format": fmt, "url": bad.url},
            bad.cause,
            f"the file for {day} cannot be decoded (undecodable bytes or truncated); its original bytes are "
            f"kept at {kept[day]}. Fix or re-deliver the file, then rerun",
        )
        for day, bad in unreadable.items()
    ]
    report = QualityReport(
        vertical=spec.name,
        ds=ds,
        suite=spec.suite_name,
        days=sorted(unreadable),
        rows=0,
        success=False,
        evaluated=len(failed),
        failed=failed,
        rows_per_day=dict.fromkeys(sorted(unreadable), 0),
        failed_days=sorted(unreadable),
    )
    report_path = layout.report_dir(ds) / "quality.json"
    write_bytes_atomic(report_path, report.to_json().encode())
    message = alerts.quality_alert(spec, report, [pd.DataFrame() for _ in failed], settings, run_context)
    try:
        where = alerts.deliver(message, settings, dedupe_key=f"{spec.name}-{ds}-quality")
    except (OSError, smtplib.SMTPException) as exc:
        where = f"NOT SENT ({type(exc).__name__}: {exc})"
        log.error("%s %s: data-quality alert could not be sent: %s", spec.name, ds, exc)
    causes = "; ".join(bad.cause for bad in unreadable.values())
    return DataQualityError(
        f"{len(unreadable)} source file(s) cannot be decoded: {causes}. Original bytes quarantined at "
        f"{', '.join(str(p) for p in kept.values())}; report at {report_path}; alert: {where}",
        vertical=spec.name,
        ds=ds,
        report_path=str(report_path),
    )


def rows_per_day(frame: pd.DataFrame, spec: VerticalSpec, days: list[str]) -> dict[str, int]:
    """How many rows each of ``days`` holds (0 for a day with none)."""
    column = spec.source.event_time
    if column not in frame.columns:  # the suite reports the missing column; per-day counts are unknown
        return {days[0]: len(frame)} if len(days) == 1 else {}
    # Count the distinct values first, then their day: one pass over the rows, not a string cast of each.
    counts = frame[column].value_counts()
    counts = counts.groupby(counts.index.astype(str).str[:10]).sum() if len(counts) else counts
    return {day: int(counts.get(day, 0)) for day in days}


def _site_page(urls: list[dict[str, Any]], site: Path) -> str | None:
    """This validation's page, relative to the site root (GX answers with a file:// URL)."""
    from urllib.parse import unquote, urlsplit

    for entry in urls:
        url = entry.get("site_url") or ""
        if url.startswith("file://"):
            path = Path(unquote(urlsplit(url).path))
            if path.is_relative_to(site):
                return path.relative_to(site).as_posix()
    return None


def _mask_failure(failure: FailedExpectation, pii: list[str]) -> FailedExpectation:
    """Failed values of a PII column never reach a report or an email."""
    if not pii:
        return failure
    keys = [
        {k: ("***" if k in pii else v) for k, v in row.items()} if isinstance(row, dict) else row
        for row in failure.sample_keys
    ]
    values = ["***"] * len(failure.sample_values) if failure.column in pii else failure.sample_values
    return replace(failure, sample_values=values, sample_keys=keys)


def failing_days(frame: pd.DataFrame, spec: VerticalSpec, days: list[str], settings: Settings) -> list[str]:
    """Which of ``days`` fail the suite on their own (after a multi-day batch failed).

    One bad day in a first-run backfill must not quarantine a year of good
    ones, so each day is checked alone, in an ephemeral GX context (no stores,
    no data docs: only the pass/fail per day is needed here).
    """
    import great_expectations as gx

    suite_json = load_suite(spec, settings)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    suite_def = {k: v for k, v in suite_json.items() if k in ("expectations", "meta", "notes")}
    suite = context.suites.add(gx.ExpectationSuite(name=spec.suite_name, **suite_def))
    batch = (
        context.data_sources.add_pandas("days").add_dataframe_asset("day").add_batch_definition_whole_dataframe("day")
    )
    validation = context.validation_definitions.add(gx.ValidationDefinition(name="day", data=batch, suite=suite))
    by_day = dict(iter(frame.groupby(spec.source.event_time, sort=False))) if len(frame) else {}
    bad = []
    for day in days:
        result = validation.run(
            batch_parameters={"dataframe": by_day.get(day, frame.iloc[0:0])},
            expectation_parameters={
                "min_rows": spec.quality.min_rows_per_day,
                "max_rows": spec.quality.max_rows_per_day,
                "days": [day],
            },
            result_format="BOOLEAN_ONLY",
        )
        blocking = any(not r.success and _severity(r.expectation_config) == BLOCKING_SEVERITY for r in result.results)
        if blocking or check_columns(by_day.get(day, frame.iloc[0:0]), spec):
            bad.append(day)
    return bad


def _failed_expectation(result: Any) -> FailedExpectation:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    res = result.result or {}
    observed = res.get("observed_value")
    error = _exception_message(result.exception_info)
    if observed is None and error:
        # E.g. a missing column: GX raises inside the metric and reports it here.
        observed = f"error: {error}"
    return FailedExpectation(
        expectation=config.type,
        column=config.kwargs.get("column"),
        expected=_jsonable(kwargs),
        observed=_jsonable(observed),
        unexpected_count=res.get("unexpected_count"),
        # GX's plain "unexpected_percent" is of the non-missing values; the email says "of N rows checked".
        unexpected_percent=_jsonable(res.get("unexpected_percent_total", res.get("unexpected_percent"))),
        sample_values=_jsonable(list(res.get("partial_unexpected_list") or [])[:SAMPLE_ROWS]),
        sample_keys=_jsonable(list(res.get("partial_unexpected_index_list") or [])[:SAMPLE_ROWS]),
        notes=(config.meta or {}).get("notes"),
        element_count=res.get("element_count"),
        severity=_severity(config),
    )


def _severity(config: Any) -> str:
    """GX's ``FailureSeverity`` of an expectation as plain text (critical when GX has none)."""
    value = getattr(config, "severity", None)
    return str(getattr(value, "value", value) or BLOCKING_SEVERITY)


def _exception_message(info: Any) -> str | None:
    """GX reports metric errors either flat or keyed by metric id; find the message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def failing_rows(frame: pd.DataFrame, report: QualityReport, spec: VerticalSpec) -> pd.DataFrame:
    """A few failing rows, PII masked, for the alert email."""
    keys: list[Any] = []
    for failure in report.failed:
        for row in failure.sample_keys:
            key = row.get(spec.key) if isinstance(row, dict) else None
            if key is not None and key not in keys:
                keys.append(key)
    if spec.key not in frame.columns or not keys:
        rows = frame.head(0)
    else:
        rows = frame[frame[spec.key].isin(keys)].head(SAMPLE_ROWS)
    return mask_pii(rows, spec.pii)


def failing_samples(frame: pd.DataFrame, report: QualityReport, spec: VerticalSpec) -> list[pd.DataFrame]:
    """For each failed expectation, in order, its own failing rows (GX's sample keys), PII masked.

    One list per expectation, so a second failing check's rows are shown even
    when the first one already has a full sample.
    """
    samples = []
    for failure in report.failed:
        keys = [row.get(spec.key) for row in failure.sample_keys if isinstance(row, dict)]
        keys = [key for key in keys if key is not None]
        if spec.key not in frame.columns or not keys:
            rows = frame.head(0)
        else:
            rows = frame[frame[spec.key].isin(keys)].head(SAMPLE_ROWS)
        samples.append(mask_pii(rows, spec.pii))
    return samples


def mask_pii(frame: pd.DataFrame, pii: list[str]) -> pd.DataFrame:
    """Replace PII values with a fixed mask so alerts never leak them."""
    masked = frame.copy()
    for column in pii:
        if column in masked.columns:
            values = masked[column].astype("object")
            masked[column] = values.where(values.isna(), "***")
    return masked
