"""The eight stages, each a function of (vertical, logical date) → small record.

Every stage reads what the previous one recorded under ``runs/<vertical>/<ds>/``
and writes its own record there, so a stage can run in its own process (an
Airflow task, a CLI call, a ``dvc repro`` stage) and a rerun for the same date
recognises, reuses or replaces its own earlier output instead of duplicating it.
Returned dicts are small and JSON-serialisable (ids, URIs, metrics): they are
what Airflow puts in XCom.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings, VerticalSpec, check_ds, load_spec
from pipelines.data.sources import extract_days, read_partitions, window_days
from pipelines.errors import DataQualityError, DeployError, SourceError
from pipelines.layout import Layout
from pipelines.model.version_ids import code_files_hash, code_version, library_versions, model_version_id
from pipelines.notify.run_context import RunContext, actor

if TYPE_CHECKING:
    from pipelines.registry.store import Registry

log = logging.getLogger(__name__)


def _context(vertical: str, ds: str, settings: Settings | None) -> tuple[VerticalSpec, Settings, Layout]:
    settings = settings or Settings.from_env()
    spec = load_spec(vertical, settings)
    check_ds(ds, spec)
    return spec, settings, Layout(settings, spec.name)


def _kept_record(layout: Layout, ds: str, stage: str, model_version: str, settings: Settings) -> dict[str, Any] | None:
    """The stage's earlier record when this model version is the one in production.

    A rerun of a date whose model was promoted must not re-judge that model
    against itself (the pointer now names it): it keeps the evaluation,
    decision and deployment that promoted it, so the rerun reproduces the run.
    """
    from pipelines.release.deploy import read_pointer

    if not layout.has_record(ds, stage):
        return None
    pointer = read_pointer(settings.bucket_url, layout.vertical)
    if pointer is None or pointer.get("version") != model_version:
        return None
    record = layout.read_record(ds, stage, needed_by=stage)
    if record.get("model_version") != model_version:
        return None
    log.info("%s %s: %s is in production; keeping its %s record", layout.vertical, ds, model_version, stage)
    return record


# -- extract -------------------------------------------------------------------


def extract(vertical: str, ds: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """Pull the day ``ds`` (and any window day never stored) into raw partitions.

    At night that is one day; on a first run it backfills the training window
    with one range query.  Days already validated or quarantined are not pulled
    again, except ``ds`` itself, which a rerun always refreshes, and, with a
    label delay, the validated day whose outcome became known tonight
    (``ds - label.delay_days``): it was stored before its outcome was in.
    """
    spec, settings, layout = _context(vertical, ds, settings)
    window = window_days(spec, ds)
    matured = window[-1 - spec.label.delay_days] if 0 < spec.label.delay_days < len(window) else None
    # One listing per folder of the shared state, not one request per day.
    validated = layout.state.names(layout.validated(ds).parent)
    stored = validated | layout.state.names(layout.quarantine(ds).parent)
    days = [
        day
        for day in window[:-1]
        if f"{day}.parquet" not in stored or (day == matured and f"{day}.parquet" in validated)
    ]
    days.append(ds)
    refreshed = [day for day in days if f"{day}.parquet" in validated]
    prepared: dict[str, Any] = {}
    counts = extract_days(spec, days, settings, prepared=prepared)
    layout.state.push(*(layout.raw(day) for day in days))
    record = {
        "vertical": spec.name,
        "ds": ds,
        "days": days,
        "rows": sum(counts.values()),
        "rows_on_ds": counts.get(ds, 0),
        "backfilled_days": len(days) - 1 - len([d for d in refreshed if d != ds]),
        # Validated days pulled again because their outcome is now known (label.delay_days).
        "refreshed_days": [d for d in refreshed if d != ds],
        # What the spec's cleaning rules, joins and label rule did to these rows (issue 13).
        "preparation": prepared or None,
    }
    layout.write_record(ds, "extract", record)
    log.info("%s %s: extracted %d rows over %d day(s)", spec.name, ds, record["rows"], len(days))
    return {k: v for k, v in record.items() if k != "days"}


# -- validate ------------------------------------------------------------------


def validate(
    vertical: str, ds: str, *, settings: Settings | None = None, run_context: RunContext | None = None
) -> dict[str, Any]:
    """Run the suite on the extracted days; quarantine and alert on failure.

    Raises `DataQualityError` (after quarantining and alerting) so the run
    stops before training.  Previously validated data is never touched.
    ``run_context`` (from the orchestration layer) puts the Airflow run's
    links and rerun hint in the alert; None means a CLI run.
    """
    from pipelines.data import quality
    from pipelines.layout import write_bytes_atomic
    from pipelines.notify import alerts

    spec, settings, layout = _context(vertical, ds, settings)
    days: list[str] = layout.read_record(ds, "extract", needed_by="validate")["days"]
    state = layout.state
    raw_stored = state.names(layout.raw(ds).parent)
    pending = [day for day in days if f"{day}.parquet" in raw_stored]
    # This worker's copies: the days to check, the validated days the distribution checks
    # compare against (with their stored profiles), and the vertical's GX project (data docs site).
    state.pull(*(layout.raw(day) for day in pending))
    reach = quality.distribution_reach(spec, pending)
    state.pull(layout.validated(ds).parent, names={f"{day}.parquet" for day in reach})
    profiles_dir = layout.validated(ds).parent.parent / "profiles"
    state.pull(profiles_dir, names={f"{day}.json" for day in reach})
    state.pull(_gx_root(layout))
    if not pending:
        if layout.has_record(ds, "validate"):
            # An earlier attempt already moved everything on: report its outcome again (no new alert).
            earlier = layout.read_record(ds, "validate", needed_by="validate")
            if not earlier.get("success"):
                raise DataQualityError(earlier.get("summary", "the suite failed"), vertical=spec.name, ds=ds)
            return earlier
        raise SourceError("no raw partitions to validate; rerun extract", vertical=spec.name, ds=ds)
    frame = read_partitions([layout.raw(day) for day in pending])
    report = quality.validate_frame(frame, spec, ds=ds, days=pending, settings=settings)
    report_path = layout.report_dir(ds) / "quality.json"
    bad: list[str] = []
    if not report.success:
        bad = quality.failing_days(frame, spec, pending, settings) if len(pending) > 1 else pending
        bad = bad or pending  # e.g. a window-level check failed: no single day to blame
        report = replace(report, failed_days=bad)
    write_bytes_atomic(report_path, report.to_json().encode())
    partitions = {day: layout.raw(day) for day in pending}
    quality.store_validated_profiles(frame, spec, partitions, [day for day in pending if day not in bad], profiles_dir)
    state.push(layout.report_dir(ds), profiles_dir, _gx_root(layout))
    if not report.success:
        for day in pending:
            if day in bad:
                state.move(layout.raw(day), layout.quarantine(day))
            else:
                state.move(layout.raw(day), layout.validated(day))
        samples = quality.failing_samples(frame, report, spec)
        message = alerts.quality_alert(spec, report, samples, settings, run_context)
        try:
            where = alerts.deliver(message, settings, dedupe_key=f"{spec.name}-{ds}-quality")
        except (OSError, smtplib.SMTPException) as exc:
            # The run must still stop as a data-quality failure; the task-failure email follows.
            where = f"NOT SENT ({type(exc).__name__}: {exc})"
            log.error("%s %s: data-quality alert could not be sent: %s", spec.name, ds, exc)
        summary = report.summary()
        layout.write_record(
            ds,
            "validate",
            {
                "success": False,
                "summary": summary,
                "quarantined": bad,
                "alert": where,
                "report": state.uri(report_path),
                "data_docs_page": report.data_docs_page,
            },
        )
        raise DataQualityError(
            f"{summary}. Quarantined {len(bad)} of {len(pending)} day(s) under "
            f"{state.where(layout.quarantine(ds).parent)}; report at {state.where(report_path)}; alert: {where}",
            vertical=spec.name,
            ds=ds,
            report_path=state.where(report_path),
        )
    for day in pending:
        state.move(layout.raw(day), layout.validated(day))
        state.remove(layout.quarantine(day))
    record = {
        "success": True,
        "suite": report.suite,
        "summary": report.summary(),
        "rows": report.rows,
        "days": len(pending),
        "evaluated": report.evaluated,
        "report": state.uri(report_path),
        "data_docs": report.data_docs,
        "data_docs_page": report.data_docs_page,
        **_warning_record(spec, ds, report, settings, run_context),
    }
    layout.write_record(ds, "validate", record)
    return record


def _gx_root(layout: Layout) -> Path:
    """The vertical's Great Expectations project (suite, results, data docs site) under home."""
    return layout.home / "gx" / layout.vertical


def _warning_record(
    spec: VerticalSpec, ds: str, report: Any, settings: Settings, run_context: RunContext | None
) -> dict[str, Any]:
    """Non-blocking failures (GX severity ``warning``/``info``): mailed once, recorded, the run goes on."""
    from pipelines.notify import alerts

    if not report.warnings:
        return {"warnings": []}
    message = alerts.quality_alert(spec, report, [], settings, run_context)
    try:
        where = alerts.deliver(message, settings, dedupe_key=f"{spec.name}-{ds}-quality-warning")
    except (OSError, smtplib.SMTPException) as exc:
        # A warning must not stop the run; the run summary still lists it.
        where = f"NOT SENT ({type(exc).__name__}: {exc})"
        log.error("%s %s: data-quality warning email could not be sent: %s", spec.name, ds, exc)
    log.warning("%s %s: %s", spec.name, ds, report.warning_summary())
    return {
        "warnings": [
            {
                "expectation": f.expectation,
                "column": f.column,
                "severity": f.severity,
                "observed": alerts.observed_text(f),
                "notes": f.notes,
            }
            for f in report.warnings
        ],
        "warning_alert": where,
    }


# -- snapshot ------------------------------------------------------------------


def snapshot(
    vertical: str, ds: str, *, settings: Settings | None = None, run_context: RunContext | None = None
) -> dict[str, Any]:
    """Version the validated training window with DVC (a no-op when unchanged).

    The spec's label rule is applied over the whole window first (days still
    awaiting their outcome left out). Then the window's drift against the
    champion's training data is checked (`pipelines.data.drift`): beyond
    ``quality.drift.block`` the run stops here with an alert and
    `DataQualityError`, before anything is versioned or trained.
    """
    from pipelines.data.labels import label_window
    from pipelines.data.sources import assemble_window
    from pipelines.data.versioning import snapshot_window

    spec, settings, layout = _context(vertical, ds, settings)
    validation = layout.read_record(ds, "validate", needed_by="snapshot")
    if not validation.get("success"):
        raise DataQualityError("the partition failed validation; refusing to snapshot", vertical=spec.name, ds=ds)
    layout.state.pull(layout.validated(ds).parent)
    # Before reading: a partition changing after this is seen by the next run.
    inputs = window_inputs(spec, ds, layout)
    frame, missing = assemble_window(spec, ds, settings)
    # Data minimisation: PII never enters the long-lived, replicated DVC remote; nor do the
    # join markers (validation has read them).
    markers = [j.marker for j in spec.joins]
    frame = frame.drop(columns=[c for c in (*spec.pii, *markers) if c in frame.columns])
    if frame.empty:
        raise SourceError("the training window holds no validated rows", vertical=spec.name, ds=ds)
    # The current label rule over the whole window, without the days still awaiting their outcome.
    frame, labels = label_window(frame, spec, ds)
    if frame.empty:
        raise SourceError(
            f"the training window holds no row with a known outcome (label.delay_days {spec.label.delay_days})",
            vertical=spec.name,
            ds=ds,
        )
    drift = _check_drift(spec, ds, frame, settings=settings, layout=layout, run_context=run_context)
    version = snapshot_window(frame, vertical=spec.name, ds=ds, settings=settings, inputs=inputs)
    record = {
        # Not the repo's workspace path: that is this worker's scratch; the md5 names the data anywhere.
        **{k: v for k, v in version.to_dict().items() if k != "path"},
        "missing_days": len(missing),
        "suite": validation.get("suite"),
        "suite_summary": validation.get("summary"),
        "drift": drift,
        "labels": labels.to_dict(),
        "preparation": layout.read_record(ds, "extract", needed_by="snapshot").get("preparation"),
    }
    if missing:
        log.warning("%s %s: %d window day(s) have no validated partition", spec.name, ds, len(missing))
    layout.write_record(ds, "snapshot", record)
    return {k: record[k] for k in ("id", "tag", "rows", "created", "missing_days")}


def window_inputs(spec: VerticalSpec, ds: str, layout: Layout) -> str:
    """Fingerprint of everything `snapshot` builds the window from (`inputs_fingerprint`).

    The window's validated partitions (content), the whole spec (label rule,
    window, PII and joins among it; any other edit only costs one
    serialisation), the date, and the code that assembles, labels and
    serialises the frame.  Unchanged files are recognised by their stat (the
    data repo's `versioning.STAT_CACHE`), not read again.
    """
    from pipelines.data import labels, sources, versioning

    files = [path for path in map(layout.validated, window_days(spec, ds)) if path.exists()]
    code = [Path(module.__file__ or "") for module in (sources, labels, versioning)] + [Path(__file__)]
    return versioning.inputs_fingerprint(
        files,
        config={"ds": ds, "spec": spec.model_dump(mode="json")},
        code=code,
        stat_cache=layout.dvc_repo / versioning.STAT_CACHE,
    )


def _check_drift(
    spec: VerticalSpec, ds: str, frame: Any, *, settings: Settings, layout: Layout, run_context: RunContext | None
) -> dict[str, Any]:
    """Drift against the champion's data: recorded always, mailed when it warns, raised when it blocks."""
    from pipelines.data.drift import check_drift
    from pipelines.layout import write_json_atomic
    from pipelines.notify import alerts
    from pipelines.registry.store import Registry
    from pipelines.release.deploy import read_pointer

    kept = _kept_drift(layout, ds, settings)
    if kept is not None:
        return kept
    pointer = read_pointer(settings.bucket_url, spec.name)
    champion = None if pointer is None else str(pointer["version"])
    model = None if champion is None else Registry.from_settings(settings).model(spec.name, champion)
    report = check_drift(spec, ds, frame, settings, champion_version=champion, lineage=model.lineage if model else None)
    path = layout.report_dir(ds) / "drift.json"
    write_json_atomic(path, report.to_dict())
    layout.state.push(path)
    where = None
    if report.blocking or report.warnings:
        try:
            where = alerts.deliver(
                alerts.drift_alert(spec, report, settings, run_context), settings, dedupe_key=f"{spec.name}-{ds}-drift"
            )
        except (OSError, smtplib.SMTPException) as exc:
            where = f"NOT SENT ({type(exc).__name__}: {exc})"
            log.error("%s %s: drift alert could not be sent: %s", spec.name, ds, exc)
    record = {
        "summary": report.summary(),
        "skipped": report.skipped,
        "champion_version": report.champion_version,
        "reference_data_version": report.reference_data_version,
        "max_psi": report.max_psi,
        "psi": {f.feature: f.psi for f in report.features},
        "warnings": [f.feature for f in report.warnings],
        "blocking": [f.feature for f in report.blocking],
        "alert": where,
        "report": layout.state.uri(path),
    }
    layout.write_record(ds, "drift", record)
    log.info("%s %s: %s", spec.name, ds, report.summary())
    if report.blocking:
        beyond = ", ".join(f"{f.feature} PSI {f.psi:.3f} >= {f.block}" for f in report.blocking)
        raise DataQualityError(
            f"drift against the data the champion {report.champion_version} was trained on "
            f"({report.reference_data_version}): {beyond}. Nothing was snapshotted or trained and production "
            "is unchanged; the validated partitions are kept. Check the source; to accept the change, raise "
            f"quality.drift (block, or features.<name>.block) or exempt the feature in verticals/{spec.name}.yaml "
            f"and clear 'snapshot'. Report at {layout.state.where(path)}; alert: {where}",
            vertical=spec.name,
            ds=ds,
            report_path=layout.state.where(path),
        )
    return record


def _kept_drift(layout: Layout, ds: str, settings: Settings) -> dict[str, Any] | None:
    """The earlier drift record of ``ds`` when production now serves the model trained for ``ds``.

    Like `_kept_record`: a rerun must not compare the window with the data of
    the model it produced itself (PSI 0, a different summary, a second email).
    """
    from pipelines.registry.store import Registry
    from pipelines.release.deploy import read_pointer

    if not layout.has_record(ds, "drift"):
        return None
    pointer = read_pointer(settings.bucket_url, layout.vertical)
    if pointer is None:
        return None
    model = Registry.from_settings(settings).model(layout.vertical, str(pointer["version"]))
    if model is None or model.ds != ds:
        return None
    return layout.read_record(ds, "drift", needed_by="snapshot")


# -- train ---------------------------------------------------------------------


def _window_split(spec: VerticalSpec, ds: str, settings: Settings, layout: Layout) -> tuple[Any, Any, dict]:
    """Train and holdout frames from the exact data version the snapshot recorded."""
    from pipelines.data.versioning import read_snapshot
    from pipelines.memory import release_freed_memory
    from pipelines.model.training import split_window

    snap = layout.read_record(ds, "snapshot", needed_by="train")
    frame = read_snapshot(
        vertical=spec.name, tag=snap["tag"], commit=snap.get("commit"), md5=snap.get("md5"), settings=settings
    )
    # Decoding the Parquet file left about as much again free in Arrow's pool (1.7 GB beside a
    # 1.6 GB window at 5M rows): give it back before the stage's own work allocates.
    release_freed_memory()
    train, holdout = split_window(frame, spec, ds)
    return train, holdout, snap


def train(vertical: str, ds: str, *, settings: Settings | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Train the challenger on the snapshot; reuse it when this exact version exists.

    The model version is a hash of data version, spec, code and seed, known
    before training, so a retried task resumes from its checkpoint and a rerun
    finds the finished model instead of training a duplicate.
    """
    from pipelines.model.training import split_validation, train_model
    from pipelines.model.tuning import choose_warm_start, tuned_spec
    from pipelines.registry.store import Registry
    from pipelines.release.export import try_export_model_dir

    spec, settings, layout = _context(vertical, ds, settings)
    train_frame, holdout, snap = _window_split(spec, ds, settings, layout)
    train_rows, holdout_rows = len(train_frame), len(holdout)
    fit_frame, validation = split_validation(train_frame, spec, ds)
    # Only their sizes are recorded: slices of the window, but copies of gigabytes from a window not in day order.
    del train_frame, holdout
    registry = Registry.from_settings(settings)
    # The sweep (on its nights) or the best configuration found so far; the spec's own otherwise.
    spec, tuning = tuned_spec(spec, ds, fit_frame, validation, settings=settings, registry=registry, layout=layout)
    warm, warm_note = choose_warm_start(spec, ds, settings=settings, registry=registry, layout=layout)
    code = code_version()
    version = model_version_id(spec, data_version=snap["id"], code=code, warm_start_from=warm.version if warm else None)
    model_dir = layout.model_dir(version)
    # Another worker may have trained it, or left checkpoints to resume from.
    layout.state.pull(model_dir, layout.checkpoint_dir(version))
    reused = (model_dir / "model.json").exists() and (model_dir / "weights.pt").exists()
    if reused:
        log.info("%s %s: model %s already trained; reusing it", spec.name, ds, version)
        epochs, resumed = None, False
    else:
        result = train_model(
            fit_frame,
            spec,
            model_dir=model_dir,
            checkpoint_dir=layout.checkpoint_dir(version),
            validation=validation,
            warm_start=warm,
            callbacks=_checkpoint_sync(layout, layout.checkpoint_dir(version)),
        )
        epochs, resumed = result.epochs_run, result.resumed_from_checkpoint
    exports = try_export_model_dir(model_dir)
    layout.state.push(model_dir, layout.checkpoint_dir(version))
    record = {
        "model_version": version,
        "data_version": snap["id"],
        "data_tag": snap["tag"],
        "code_version": code,
        "config_hash": spec.config_hash(),
        "seed": spec.model.seed,
        "train_rows": train_rows,
        "holdout_rows": holdout_rows,
        "reused": reused,
        "resumed_from_checkpoint": resumed,
        "epochs_run": epochs,
        "model_dir": layout.state.uri(model_dir),
        "run_id": run_id,
        "exports": exports,
        **_tuning_record(model_dir, validation, warm_note, tuning),
        **_rebuild_inputs(spec),
    }
    layout.write_record(ds, "train", record)
    registry.record_model(
        vertical=spec.name,
        model_version=version,
        data_version=snap["id"],
        ds=ds,
        dag_run_id=run_id,
        metrics=None,  # evaluate records them; a retrain must not blank a deployed model's numbers
        lineage=_lineage(spec, ds, record, snap, run_id),
    )
    return {k: record[k] for k in ("model_version", "data_version", "train_rows", "holdout_rows", "reused")}


def _checkpoint_sync(layout: Layout, checkpoint_dir: Path) -> list[Any]:
    """A Lightning callback that copies each epoch's checkpoints to the state store.

    A retry of the train task on another worker then resumes from the last
    epoch the first worker finished, instead of from scratch.  None when the
    state is the home folder itself (the checkpoints are already there).
    """
    if layout.state.is_home:
        return []
    from pytorch_lightning import Callback

    state = layout.state

    class _SyncCheckpoints(Callback):
        # ModelCheckpoint runs after user callbacks, so each epoch pushes the one before it;
        # fit's end pushes the last.  Mirrored, not pushed: the checkpoints Lightning deleted
        # (earlier epochs) leave the store too, instead of one file per epoch piling up there.
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            state.mirror(checkpoint_dir)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            state.mirror(checkpoint_dir)

    return [_SyncCheckpoints()]


def _tuning_record(
    model_dir: Path, validation: Any, warm_note: dict[str, Any], tuning: dict[str, Any] | None
) -> dict[str, Any]:
    """What the train record (and lineage) says about validation, threshold, warm start and tuning."""
    import json

    manifest = json.loads((model_dir / "model.json").read_text())
    return {
        "validation_rows": 0 if validation is None else len(validation),
        "decision_threshold": manifest["decision_threshold"],
        "threshold_choice": manifest.get("threshold_choice"),
        "calibration": manifest.get("calibration"),
        "best_epoch": manifest.get("best_epoch"),
        "warm_start": warm_note,
        "tuning": tuning,
    }


def _rebuild_inputs(spec: VerticalSpec) -> dict[str, Any]:
    """What `pipelines.reproduce` needs to retrain this model from the lineage alone.

    The resolved spec (after a sweep's choice: the spec file alone would not
    give it back), and the two halves of ``code_version`` apart, so a rebuild
    elsewhere can say whether the code or a library differs.  None of it
    enters the model version id: ids stay what they were for unchanged inputs.
    """
    return {
        "spec": spec.model_dump(mode="json"),
        "training_hash": spec.training_hash(),
        "code_hash": code_files_hash(),
        "libraries": library_versions(),
    }


def _lineage(spec: VerticalSpec, ds: str, train_rec: dict, snap: dict, run_id: str | None) -> dict[str, Any]:
    return {
        "vertical": spec.name,
        "logical_date": ds,
        "dag_run_id": run_id,
        "data_version": snap["id"],
        "data_tag": snap["tag"],
        "data_commit": snap.get("commit"),
        "data_md5": snap.get("md5"),
        "suite": snap.get("suite"),
        "suite_result": snap.get("suite_summary"),
        # Data preparation (issue 13): what cleaning, joins and the label rule did on this night.
        "preparation": snap.get("preparation"),
        "labels": snap.get("labels"),
        "code_version": train_rec["code_version"],
        "config_hash": train_rec["config_hash"],
        "seed": train_rec["seed"],
        "train_rows": train_rec["train_rows"],
        "holdout_rows": train_rec["holdout_rows"],
        # Tuning (issue 12): how the threshold was chosen, the warm-start source, the sweep's config.
        "validation_rows": train_rec.get("validation_rows"),
        "decision_threshold": train_rec.get("decision_threshold"),
        "warm_start": train_rec.get("warm_start"),
        "tuning": train_rec.get("tuning"),
        # Rebuild from the lineage alone (`python -m pipelines reproduce`); absent in older records.
        "spec": train_rec.get("spec"),
        "training_hash": train_rec.get("training_hash"),
        "code_hash": train_rec.get("code_hash"),
        "libraries": train_rec.get("libraries"),
    }


# -- evaluate ------------------------------------------------------------------


def evaluate(vertical: str, ds: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """Score the challenger, the champion and the naive baselines on the same time-based holdout.

    Per-row scores (label, each model's probability, the gate's slice column
    values) go to ``holdout_scores.parquet`` in the run's report folder, so
    the gate runs its paired tests on exactly these rows without rescoring.
    """
    from pipelines.errors import SpecError
    from pipelines.gate.evaluation import (
        compute_metrics,
        holdout_scores_frame,
        roc_points,
        slice_values,
        write_holdout_scores,
    )
    from pipelines.layout import write_json_atomic
    from pipelines.model.baselines import logistic_baseline, majority_baseline
    from pipelines.model.features import label_vector
    from pipelines.model.modeling import load_model_dir
    from pipelines.model.training import split_validation
    from pipelines.registry.store import Registry
    from pipelines.release.deploy import load_version, read_pointer
    from pipelines.release.export import check_exports

    spec, settings, layout = _context(vertical, ds, settings)
    trained = layout.read_record(ds, "train", needed_by="evaluate")
    kept = _kept_record(layout, ds, "evaluate", trained["model_version"], settings)
    if kept is not None:
        return _evaluation_headline(kept)
    train_frame, holdout, _ = _window_split(spec, ds, settings, layout)
    missing = [s.column for s in spec.gate.slices if s.column not in holdout.columns]
    if missing:
        raise SpecError(
            f"gate.slices names column(s) {missing} that the data lacks; columns are {sorted(holdout.columns)[:30]}",
            vertical=spec.name,
            ds=ds,
        )
    y_true = label_vector(holdout, spec.label)
    model_dir = layout.state.local(trained["model_dir"])
    challenger = load_model_dir(model_dir)
    prob = challenger.predict_proba(holdout)
    # The threshold the artefact carries (chosen on validation where the spec asks): what serving uses.
    metrics = compute_metrics(y_true, prob, challenger.decision_threshold)
    pointer = read_pointer(settings.bucket_url, spec.name)
    champion_version = pointer["version"] if pointer else None
    champion_metrics = champion_prob = None
    if champion_version is not None:
        champion = load_version(spec.name, champion_version, bucket_url=settings.bucket_url)
        champion_prob = champion.predict_proba(holdout)
        champion_metrics = compute_metrics(y_true, champion_prob, champion.decision_threshold)
    # Baselines fit on the same rows as the model and choose their thresholds on the same validation split.
    fit_frame, validation = split_validation(train_frame, spec, ds)
    baselines = [
        majority_baseline(label_vector(fit_frame, spec.label), y_true),
        logistic_baseline(fit_frame, holdout, spec, c=spec.gate.baselines.logistic_c, validation=validation),
    ]
    scores = holdout_scores_frame(
        y_true,
        prob,
        champion=champion_prob,
        baselines={b.name: b.prob for b in baselines},
        # The gate's slice columns, and the feature the model card shows per value.
        slices={column: slice_values(holdout[column]) for column in _score_slices(spec)},
    )
    scores_path = layout.report_dir(ds) / "holdout_scores.parquet"
    scores_sha256 = write_holdout_scores(scores_path, scores)
    record = {
        "model_version": trained["model_version"],
        "holdout_rows": len(holdout),
        "holdout_start": str(holdout[spec.source.event_time].min()),
        "holdout_end": str(holdout[spec.source.event_time].max()),
        "challenger": metrics,
        "champion": champion_metrics,
        "champion_version": champion_version,
        "baselines": {b.name: b.to_record() for b in baselines},
        # Each ONNX export re-scored on these rows; the gate turns them into export rules.
        "exports": check_exports(model_dir, holdout, y_true, prob, spec.model.decision_threshold),
        "holdout_scores": layout.state.uri(scores_path),
        # The gate checks it reads exactly the rows scored here.
        "holdout_scores_sha256": scores_sha256,
    }
    write_json_atomic(layout.report_dir(ds) / "roc.json", {"roc": roc_points(y_true, prob)})
    layout.state.push(scores_path, layout.report_dir(ds) / "roc.json")
    layout.write_record(ds, "evaluate", record)
    snap = layout.read_record(ds, "snapshot", needed_by="evaluate")
    Registry.from_settings(settings).record_model(
        vertical=spec.name,
        model_version=trained["model_version"],
        data_version=trained["data_version"],
        ds=ds,
        dag_run_id=trained.get("run_id"),
        metrics=metrics,
        lineage=_lineage(spec, ds, trained, snap, trained.get("run_id")),
    )
    return _evaluation_headline(record)


def _score_slices(spec: VerticalSpec) -> list[str]:
    """Columns whose values go with the holdout scores: the gate's slices, then the card's."""
    columns = [s.column for s in spec.gate.slices]
    card = spec.card_slice_column
    return columns + ([card] if card is not None and card not in columns else [])


def _evaluation_headline(record: dict[str, Any]) -> dict[str, Any]:
    """What goes to XCom: headline numbers only; the full record and per-row scores stay on disk."""
    headline = ("accuracy", "recall", "f1", "precision", "auroc", "balanced_accuracy")

    def pick(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if metrics is None else {m: metrics.get(m) for m in headline}

    return {
        "model_version": record["model_version"],
        "champion_version": record["champion_version"],
        "holdout_rows": record["holdout_rows"],
        "challenger": pick(record["challenger"]),
        "champion": pick(record["champion"]),
        "baselines": {name: pick(m) for name, m in (record.get("baselines") or {}).items()},
        "holdout_scores": record.get("holdout_scores"),
    }


# -- gate ----------------------------------------------------------------------


def gate(
    vertical: str,
    ds: str,
    *,
    settings: Settings | None = None,
    force_reason: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Decide promotion from the evaluation; record the decision with its reasons.

    The paired comparisons (against the champion and the logistic baseline)
    and the slice checks run here, on the holdout scores evaluate stored, so a
    gate-only change (a threshold, the comparison settings) needs no rescoring.
    """
    from pipelines.errors import StageOrderError
    from pipelines.gate.comparison import gate_comparisons
    from pipelines.gate.evaluation import gate_slice_metrics, read_holdout_scores
    from pipelines.gate.promotion import decide_promotion
    from pipelines.registry.store import Registry
    from pipelines.release.export import export_rules
    from pipelines.release.rollout import block_message

    spec, settings, layout = _context(vertical, ds, settings)
    evaluation = layout.read_record(ds, "evaluate", needed_by="gate")
    kept = _kept_record(layout, ds, "gate", evaluation["model_version"], settings)
    if kept is not None and kept.get("approved"):
        return {k: kept[k] for k in ("model_version", "approved", "forced", "reasons", "already_in_production")}
    champion, baselines = evaluation["champion"], evaluation.get("baselines") or {}
    scores = None
    if spec.gate.comparison.method != "point" or spec.gate.slices:
        try:
            scores = read_holdout_scores(
                layout.state.local(evaluation.get("holdout_scores") or ""), evaluation.get("holdout_scores_sha256")
            )
        except (FileNotFoundError, ValueError) as exc:
            raise StageOrderError(
                f"{exc}; rerun `python -m pipelines evaluate {spec.name} --date {ds}`", vertical=spec.name, ds=ds
            ) from exc
    thresholds = {
        name: metrics["threshold"]
        for name, metrics in (("challenger", evaluation["challenger"]), ("champion", champion), *baselines.items())
        if metrics is not None
    }
    comparisons = {} if scores is None else gate_comparisons(scores, spec.gate, thresholds)
    registry = Registry.from_settings(settings)
    # Sticky rollback: a version a person rolled back away from never returns by itself.
    block = registry.block(spec.name, evaluation["model_version"])
    decision = decide_promotion(
        spec.gate,
        evaluation["challenger"],
        champion=champion,
        champion_version=evaluation["champion_version"],
        holdout_rows=evaluation["holdout_rows"],
        comparisons=comparisons,
        baselines=baselines or None,
        slices=None if scores is None else gate_slice_metrics(spec.gate.slices, scores, evaluation["challenger"]),
        force_reason=force_reason,
        blocked=block_message(block) if block else None,
    )
    # Export checks never reject the model; a failing export is only left out of the deploy.
    decision = replace(decision, rules=[*decision.rules, *export_rules(evaluation.get("exports"), spec.gate.exports)])
    record = {
        "model_version": evaluation["model_version"],
        "already_in_production": evaluation["model_version"] == evaluation["champion_version"],
        **decision.to_dict(),
    }
    layout.write_record(ds, "gate", record)
    registry.record_decision(
        vertical=spec.name,
        ds=ds,
        model_version=evaluation["model_version"],
        approved=decision.approved,
        forced=decision.forced,
        forced_reason=decision.forced_reason,
        reasons=record["rules"],
        champion_version=evaluation["champion_version"],
        actor=actor(run_id),
    )
    log.info(
        "%s %s: %s (%s)",
        spec.name,
        ds,
        "approved" if decision.approved else "rejected",
        "; ".join(decision.reasons),
    )
    return {k: record[k] for k in ("model_version", "approved", "forced", "reasons", "already_in_production")}


# -- deploy --------------------------------------------------------------------


def deploy(
    vertical: str,
    ds: str,
    *,
    settings: Settings | None = None,
    dry_run: bool = False,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Push an approved model to the bucket and flip the pointer last.

    A rejected decision, a version rolled back away from (until forced or
    unblocked) or a dry run deploys nothing and says so; a version already in
    production is a no-op.  The registry learns of the deploy before the
    pointer moves (an intent), so a registry outage stops the deploy while
    production is untouched, and a crash after the flip is reconciled by the
    next run, ``status`` or the Models view.
    """
    from pipelines.registry.store import Registry
    from pipelines.release.rollout import block_message, reconcile_production

    spec, settings, layout = _context(vertical, ds, settings)
    decision = layout.read_record(ds, "gate", needed_by="deploy")
    version = decision["model_version"]
    registry = Registry.from_settings(settings)
    # An earlier attempt may have died between the pointer flip and the registry write.
    reconcile_production(registry, settings.bucket_url, spec.name)
    if not decision["approved"]:
        record = {"deployed": False, "model_version": version, "why": "; ".join(decision["reasons"])}
    elif dry_run:
        record = {"deployed": False, "model_version": version, "why": "dry run: approved but not deployed"}
    elif (kept := _kept_record(layout, ds, "deploy", version, settings)) is not None and kept.get("deployed"):
        record = kept
    elif (block := registry.block(spec.name, version)) is not None:
        record = {"deployed": False, "model_version": version, "why": block_message(block)}
    elif (blocked := _deploy_blocker(spec, ds, decision, settings)) is not None:
        record = {"deployed": False, "model_version": version, "why": blocked}
    else:
        record = _push(
            spec,
            ds,
            version=version,
            decision=decision,
            registry=registry,
            settings=settings,
            layout=layout,
            run_id=run_id,
        )
    layout.write_record(ds, "deploy", record)
    return record


def _push(
    spec: VerticalSpec,
    ds: str,
    *,
    version: str,
    decision: dict[str, Any],
    registry: Registry,
    settings: Settings,
    layout: Layout,
    run_id: str | None,
) -> dict[str, Any]:
    """Intent in the registry, then the bucket (upload, verify, pointer), then the registry row."""
    from pipelines.errors import PipelineError, RegistryError
    from pipelines.release.deploy import deploy_version, read_pointer
    from pipelines.release.export import refused_export_files
    from pipelines.release.model_card import build_model_card

    trained = layout.read_record(ds, "train", needed_by="deploy")
    evaluation = layout.read_record(ds, "evaluate", needed_by="deploy")
    snap = layout.read_record(ds, "snapshot", needed_by="deploy")
    model = registry.model(spec.name, version)
    if model is None:
        # Check before the pointer flips: a deployment the registry can't record must not happen.
        raise DeployError(
            f"model {version} is not in the registry; rerun train and evaluate", vertical=spec.name, ds=ds
        )
    # The bucket's lineage.json names the run that first produced the model, as the registry does.
    lineage = {**(model.lineage or _lineage(spec, ds, trained, snap, run_id)), "decision": decision}
    model_dir = layout.state.local(trained["model_dir"])
    # The card reads model.json (reliability) from this worker's copy of the model folder.
    card = build_model_card(
        spec,
        ds,
        {**trained, "model_dir": str(model_dir)},
        evaluation,
        decision,
        scores=_holdout_scores(spec, ds, evaluation, layout),
    )
    pointer = read_pointer(settings.bucket_url, spec.name)
    who = actor(run_id)
    intent = registry.record_intent(
        vertical=spec.name,
        model_version=version,
        action="deploy",
        actor=who,
        ds=ds,
        previous_version=pointer["version"] if pointer else None,
    )
    try:
        result = deploy_version(
            bucket_url=settings.bucket_url,
            vertical=spec.name,
            model_version=version,
            model_dir=model_dir,
            metrics=evaluation,
            lineage=lineage,
            model_card=card.markdown,
            model_card_json=card.data,
            card_images=card.images,
            ds=ds,
            exclude=refused_export_files(decision),
        )
    except PipelineError as exc:
        # Production is unchanged (the pointer moves last): close the intent, keep the error.
        registry.close_intent(intent, actor=who, outcome=f"failed: {exc}")
        raise
    try:
        # Always record: idempotent (no row when the version is already champion), and
        # it repairs the registry when an earlier attempt died after the pointer flip.
        registry.record_deployment(
            vertical=spec.name,
            model_version=version,
            action="deploy",
            previous_version=result.previous_version,
            actor=who,
            ds=ds,
        )
    except RegistryError as exc:
        raise RegistryError(
            f"production now serves {version} but the registry could not record it ({exc}); the pending "
            "intent is confirmed by the next run, `python -m pipelines status` or the Models view",
            vertical=spec.name,
            ds=ds,
        ) from exc
    return {
        "deployed": result.changed,
        "model_version": version,
        "uri": result.uri,
        "previous_version": result.previous_version,
        "why": "deployed" if result.changed else "already in production",
    }


def _holdout_scores(spec: VerticalSpec, ds: str, evaluation: dict[str, Any], layout: Layout) -> Any:
    """The rows evaluate scored (for the model card's curves and slices), checked against its record.

    None for a record that names no scores file (one written before evaluate kept them): its card
    has the tables without the curves.  A named file that is gone or changed is an error.
    """
    from pipelines.errors import StageOrderError
    from pipelines.gate.evaluation import read_holdout_scores

    if not evaluation.get("holdout_scores"):
        return None
    try:
        return read_holdout_scores(
            layout.state.local(evaluation["holdout_scores"]), evaluation.get("holdout_scores_sha256")
        )
    except (FileNotFoundError, ValueError) as exc:
        raise StageOrderError(
            f"{exc}; rerun `python -m pipelines evaluate {spec.name} --date {ds}`", vertical=spec.name, ds=ds
        ) from exc


def _deploy_blocker(spec: VerticalSpec, ds: str, decision: dict[str, Any], settings: Settings) -> str | None:
    """Why an approved model must still not replace production, or None.

    Raises when the decision is stale (production changed since evaluate:
    a rollback or another run); returns a reason when production serves a
    model for a later date, which a rerun or backfill of an older date never
    replaces unless the promotion was forced.
    """
    from pipelines.release.deploy import read_pointer

    pointer = read_pointer(settings.bucket_url, spec.name)
    current = pointer["version"] if pointer else None
    if current in (decision["model_version"], decision.get("champion_version")):
        later = pointer.get("ds") if pointer else None
        if later and later > ds and current != decision["model_version"] and not decision.get("forced"):
            return f"production serves a model for a later date ({later}); a rerun of {ds} does not replace it"
        return None
    raise DeployError(
        f"production changed since this run's evaluation (it serves {current}; the gate compared against "
        f"{decision.get('champion_version')}); rerun evaluate and gate for {ds}",
        vertical=spec.name,
        ds=ds,
    )


# -- report --------------------------------------------------------------------


def report(vertical: str, ds: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """Write the run summary (and mail it when the spec asks) ; refresh ``latest``."""
    from pipelines.notify import alerts
    from pipelines.notify.reporting import build_summary, render_summary, write_latest

    spec, settings, layout = _context(vertical, ds, settings)
    records = {
        stage: layout.read_record(ds, stage, needed_by="report")
        for stage in ("validate", "snapshot", "train", "evaluate", "gate", "deploy")
    }
    summary = build_summary(spec, ds, records)
    text = render_summary(summary)
    layout.state.pull(layout.report_dir(ds))  # quality.json, roc.json, scores: written by earlier tasks
    write_latest(layout, ds, summary, text)
    layout.state.push(layout.report_dir(ds), layout.latest_report_dir)
    outcome = "promoted" if summary["deployed"] else ("approved" if summary["approved"] else "rejected")
    if outcome in spec.alerts.report_on or (outcome == "approved" and "promoted" in spec.alerts.report_on):
        summary["emailed"] = alerts.deliver(
            alerts.summary_email(spec, ds, text, outcome=outcome),
            settings,
            dedupe_key=f"{spec.name}-{ds}-report",
        )
    layout.write_record(ds, "report", summary)
    return summary


# -- all -----------------------------------------------------------------------


def run_all(
    vertical: str,
    ds: str,
    *,
    settings: Settings | None = None,
    force_reason: str | None = None,
    dry_run: bool = False,
    on_stage: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Every stage in order, as the DAG runs them; returns the run summary."""
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("extract", lambda: extract(vertical, ds, settings=settings)),
        ("validate", lambda: validate(vertical, ds, settings=settings)),
        ("snapshot", lambda: snapshot(vertical, ds, settings=settings)),
        ("train", lambda: train(vertical, ds, settings=settings)),
        ("evaluate", lambda: evaluate(vertical, ds, settings=settings)),
        ("gate", lambda: gate(vertical, ds, settings=settings, force_reason=force_reason)),
        ("deploy", lambda: deploy(vertical, ds, settings=settings, dry_run=dry_run)),
        ("report", lambda: report(vertical, ds, settings=settings)),
    ]
    from pipelines.memory import release_freed_memory

    result: dict[str, Any] = {}
    for name, step in steps:
        if on_stage:
            on_stage(vertical, name)
        result = step()
        # One process for every stage: what one freed must not stay under the next.
        release_freed_memory(between_stages=True)
    return result
