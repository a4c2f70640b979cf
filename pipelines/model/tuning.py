"""Tuning sweeps within a budget, and warm starts from the champion.

A sweep (Optuna, TPE seeded by ``model.tuning.seed``) trains candidate
configurations on the fit split and scores them on the validation split,
never the holdout.  It runs only on the nights the spec names (weekly, after
a rejection, on the first run); other nights reuse the best configuration of
the latest sweep, so the nightly cost stays bounded.  Studies are stored
through SQLAlchemy in the registry's database (see `study_storage_url`), one study
per vertical and sweep date, so the CLI and the Models view can list trials,
and a rerun of a sweep night finds its finished study instead of sweeping again.

The chosen configuration is applied to the spec's ``model`` section, so the
model version id (which hashes it) covers it.

Optuna is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.config import Settings, VerticalSpec
from pipelines.errors import TrainingError
from pipelines.layout import Layout

if TYPE_CHECKING:
    from pipelines.model.training import WarmStartSource
    from pipelines.registry.store import Registry

log = logging.getLogger(__name__)


# -- warm start ----------------------------------------------------------------


def choose_warm_start(
    spec: VerticalSpec, ds: str, *, settings: Settings, registry: Registry, layout: Layout
) -> tuple[WarmStartSource | None, dict[str, Any]]:
    """The champion to fine-tune from (or None: cold), and a note saying which and why.

    The source is the model production served before this date's run: the
    pointer's version when it was deployed for an earlier date; on a rerun
    of a date whose own model is now in production, the source that date's
    model recorded, so the rerun reproduces the same model version.  The
    champion is loaded from the bucket through the checksum-verified path.
    """
    from pipelines.model.training import WarmStartSource, warm_start_compatible
    from pipelines.release.deploy import load_version, read_pointer

    if not spec.model.warm_start.enabled:
        return None, {"from": None, "why": "model.warm_start.enabled is false"}
    source: str | None = None
    pointer = read_pointer(settings.bucket_url, spec.name)
    if pointer is not None and (pointer.get("ds") or "") < ds:
        source = str(pointer["version"])
    else:
        # Production is this date's (or a later date's) model: reuse what this date's model started from.
        for model in registry.models(spec.name, limit=200):
            if model.ds == ds and (model.lineage or {}).get("warm_start"):
                source = (model.lineage["warm_start"] or {}).get("from")
                break
    if source is None:
        return None, {"from": None, "why": "no earlier champion"}
    champion = load_version(spec.name, source, bucket_url=settings.bucket_url)
    why = warm_start_compatible(champion.model, spec)
    if why is not None:
        log.info("%s %s: training cold: champion %s is incompatible (%s)", spec.name, ds, source, why)
        return None, {"from": None, "why": f"champion {source} incompatible: {why}"}
    return WarmStartSource(source, champion.model), {"from": source, "why": "compatible champion"}


# -- sweeps --------------------------------------------------------------------


def study_storage_url(settings: Settings) -> str:
    """Where Optuna studies live: the registry's database, beside (not inside) the registry's tables.

    Optuna keeps its own Alembic ``alembic_version`` table; in the registry's
    SQLite file or PostgreSQL schema it would find the registry's revision and
    refuse to start ("no longer compatible with the table schema"), after
    creating its tables among the registry's.  So:

    * PostgreSQL: the same database, in a schema of its own, ``optuna`` (or
      ``<registry schema>_optuna`` when the registry URL sets a
      ``search_path``), chosen through the connection's ``options``;
    * SQLite: a database is a file and has no schemas (an attached database
      would not be seen by Alembic's unqualified ``alembic_version``), so a
      sibling file ``optuna.db``;
    * anything else, or to override: ``PIPELINES_TUNING_URL``.
    """
    import os

    explicit = os.environ.get("PIPELINES_TUNING_URL")
    if explicit:
        return explicit
    url = settings.registry_url
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).with_name('optuna.db')}"
    if url.startswith(("postgresql:", "postgresql+")):
        return _postgres_study_url(url)
    raise TrainingError(
        f"tuning studies cannot share the registry database {url.split('://', 1)[0]}:// "
        "(Optuna's Alembic table would clash with the registry's); set PIPELINES_TUNING_URL to a database of their own"
    )


def _postgres_study_url(registry_url: str) -> str:
    """The registry URL with ``search_path`` set to the studies' own schema."""
    from sqlalchemy.engine import make_url

    url = make_url(registry_url)
    options = url.query.get("options", "")
    options = options if isinstance(options, str) else " ".join(options)
    found = _SEARCH_PATH.search(options)
    registry_schema = found.group(1).split(",")[0].strip('"') if found else "public"
    schema = "optuna" if registry_schema == "public" else f"{registry_schema}_optuna"
    if not _SCHEMA_NAME.match(schema):
        raise TrainingError(
            f"registry search_path schema {registry_schema!r} gives no safe schema name for tuning studies; "
            "set PIPELINES_TUNING_URL"
        )
    rest = _SEARCH_PATH.sub("", options).strip()
    new_options = " ".join(part for part in (rest, f"-csearch_path={schema}") if part)
    return url.update_query_dict({"options": new_options}).render_as_string(hide_password=False)


def _study_schema(url: str) -> str | None:
    """The PostgreSQL schema a study URL selects through ``options`` (None: none, or not PostgreSQL)."""
    from sqlalchemy.engine import make_url

    if not url.startswith(("postgresql:", "postgresql+")):
        return None
    options = make_url(url).query.get("options", "")
    found = _SEARCH_PATH.search(options if isinstance(options, str) else " ".join(options))
    return found.group(1).split(",")[0].strip('"') if found else None


_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*(\S+)")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def study_name(vertical: str, ds: str) -> str:
    return f"{vertical}:{ds}"


def sweep_reason(spec: VerticalSpec, ds: str, *, last_sweep: str | None, last_rejected: bool) -> str | None:
    """Why tonight sweeps (None: reuse the best known configuration)."""
    tuning = spec.model.tuning
    if not tuning.enabled:
        return None
    if "always" in tuning.when:
        return "always"
    if last_sweep == ds:
        return "rerun of this date's sweep"
    if "first_run" in tuning.when and last_sweep is None:
        return "first run: no sweep yet"
    if "weekly" in tuning.when and date.fromisoformat(ds).weekday() == tuning.weekday:
        return f"weekly (weekday {tuning.weekday})"
    if "after_rejection" in tuning.when and last_rejected:
        return "the last decision was a rejection"
    return None


def tuned_spec(
    spec: VerticalSpec,
    ds: str,
    fit: pd.DataFrame,
    validation: pd.DataFrame | None,
    *,
    settings: Settings,
    registry: Registry,
    layout: Layout,
) -> tuple[VerticalSpec, dict[str, Any] | None]:
    """The spec with tonight's configuration applied, and a record of where it came from (None: untuned)."""
    if not spec.model.tuning.enabled:
        return spec, None
    if validation is None:
        raise TrainingError("model.tuning needs window.validation_days", vertical=spec.name, ds=ds)
    storage = _storage(settings)
    last = _latest_sweep(storage, spec.name, ds)
    decision = registry.last_decision(spec.name)
    rejected = decision is not None and decision.ds < ds and not decision.approved
    reason = sweep_reason(spec, ds, last_sweep=last, last_rejected=rejected)
    if reason is not None:
        result = run_sweep(spec, fit, validation, storage=storage, name=study_name(spec.name, ds))
        params, source = result["best_params"], study_name(spec.name, ds)
        record = {"swept": True, "why": reason, **result}
    elif last is not None:
        params, source = _best_params(storage, study_name(spec.name, last)), study_name(spec.name, last)
        record = {"swept": False, "why": "reusing the latest sweep", "best_params": params}
    else:
        return spec, {"swept": False, "why": "no sweep yet and none due tonight", "study": None}
    record["study"] = source
    return apply_params(spec, params), record


def apply_params(spec: VerticalSpec, params: dict[str, Any]) -> VerticalSpec:
    """``spec`` with a sweep's parameters (``width``/``depth`` become ``hidden``) written into ``model``."""
    update = {k: v for k, v in params.items() if k not in ("width", "depth")}
    if "width" in params and "depth" in params:
        # Funnel: each layer half the previous one's width (at least 4).
        update["hidden"] = [max(4, int(params["width"]) // (2**i)) for i in range(int(params["depth"]))]
    model = spec.model.model_copy(update=update)
    # Validate again: a search space must not produce a config the schema forbids.
    return type(spec).model_validate({**spec.model_dump(), "model": model.model_dump()})


def run_sweep(
    spec: VerticalSpec, fit: pd.DataFrame, validation: pd.DataFrame, *, storage: Any, name: str
) -> dict[str, Any]:
    """Run (or finish) the study ``name`` within the spec's trial and time budget; return its summary."""
    import optuna

    from pipelines.gate.evaluation import auroc
    from pipelines.model.features import label_vector
    from pipelines.model.modeling import load_model_dir
    from pipelines.model.training import derive_seed, train_model

    tuning = spec.model.tuning
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize" if tuning.metric == "auroc" else "minimize",
        # Seeded per study from (model.tuning.seed, study name): deterministic, yet each vertical and
        # sweep night explores its own candidates instead of every sweep replaying the same ones.
        sampler=optuna.samplers.TPESampler(
            seed=derive_seed(tuning.seed, 0, f"sweep:{name}") % 2**32,
            n_startup_trials=max(3, tuning.trials // 2),
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    done = [t for t in study.trials if t.state.is_finished()]
    # A finished sweep (budget spent, by trials or by time) is final: a rerun of the night
    # reuses it, so it reproduces the same configuration; an interrupted one continues.
    remaining = 0 if study.user_attrs.get("complete") else tuning.trials - len(done)
    fit = sweep_rows(fit, tuning.max_rows, tuning.seed)
    validation = sweep_rows(validation, tuning.max_rows, tuning.seed)
    y_val = label_vector(validation, spec.label)
    started = time.monotonic()

    def objective(trial: Any) -> float:
        candidate = apply_params(spec, sample_params(trial, spec))
        with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
            train_model(
                fit,
                candidate,
                model_dir=Path(tmp) / "model",
                checkpoint_dir=Path(tmp) / "ckpt",
                validation=validation,
                callbacks=[_pruning_callback(trial, tuning.metric)],
            )
            prob = load_model_dir(Path(tmp) / "model").predict_proba(validation)
        if tuning.metric == "auroc":
            return float(auroc(y_val, prob) or 0.5)
        return float(_log_loss(y_val, prob))

    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=tuning.timeout_seconds, catch=())
        study.set_user_attr("complete", True)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise TrainingError(
            f"tuning study {name} has no completed trial; raise model.tuning.timeout_seconds", vertical=spec.name
        )
    return {
        "best_params": dict(study.best_params),
        "best_value": float(study.best_value),
        "metric": tuning.metric,
        "trials": len(study.trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seconds": round(time.monotonic() - started, 2),
    }


def sweep_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame`` (``model.tuning.max_rows``), a seeded sample kept in row order."""
    import numpy as np

    from pipelines.model.training import derive_seed

    if max_rows is None or len(frame) <= max_rows:
        return frame
    rows = np.random.default_rng(derive_seed(seed, 0, "sweep-rows")).choice(len(frame), max_rows, replace=False)
    return frame.iloc[np.sort(rows)].reset_index(drop=True)


def sample_params(trial: Any, spec: VerticalSpec) -> dict[str, Any]:
    """One point of the spec's search space (``model.tuning.space``)."""
    space = spec.model.tuning.space
    params: dict[str, Any] = {
        "width": trial.suggest_categorical("width", list(space.width)),
        "depth": trial.suggest_categorical("depth", list(space.depth)),
        "dropout": trial.suggest_float("dropout", *space.dropout),
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
        "epochs": trial.suggest_int("epochs", *space.epochs),
        "wide": trial.suggest_categorical("wide", list(space.wide)),
        "batch_norm": trial.suggest_categorical("batch_norm", list(space.batch_norm)),
        "embedding_dim": trial.suggest_categorical("embedding_dim", list(space.embedding_dim)),
    }
    return params


def _pruning_callback(trial: Any, metric: str) -> Any:
    """A Lightning callback reporting each epoch's validation metric to the trial and pruning on its verdict.

    optuna-integration's callback is built on the ``lightning`` package, not
    ``pytorch_lightning`` (which this project trains with), so this is a plain one.
    """
    import optuna
    import pytorch_lightning as pl

    key = "val_auroc" if metric == "auroc" else "val_loss"

    class ReportToTrial(pl.Callback):
        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            value = trainer.callback_metrics.get(key)
            if value is None:
                return
            trial.report(float(value), step=trainer.current_epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {trainer.current_epoch}: {key}={float(value):.4f}")

    return ReportToTrial()


def list_studies(settings: Settings, vertical: str) -> list[dict[str, Any]]:
    """Every sweep of ``vertical``, oldest first: its date, trial counts and the best configuration.

    The one reader of the studies: the ``tuning`` CLI command and the models view both use it.
    """
    import optuna

    storage = _storage(settings)
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        if not summary.study_name.startswith(f"{vertical}:"):
            continue
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
        best = summary.best_trial
        started = summary.datetime_start
        out.append(
            {
                "study": summary.study_name,
                "ds": summary.study_name.split(":", 1)[1],
                "started": None if started is None else started.isoformat(timespec="seconds"),
                "direction": summary.direction.name.lower(),
                "trials": len(trials),
                "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
                "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
                "best_value": None if best is None else best.value,
                "best_params": None if best is None else best.params,
            }
        )
    return sorted(out, key=lambda s: str(s["study"]))


def _log_loss(y: Any, prob: Any) -> float:
    import numpy as np

    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    t = np.asarray(y, dtype=np.float64)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))


def _storage(settings: Settings) -> Any:
    import optuna
    from sqlalchemy.engine import make_url

    url = study_storage_url(settings)
    parsed = make_url(url)
    database = parsed.database if url.startswith("sqlite:///") and not parsed.query else None
    if database and database != ":memory:":
        from functools import partial

        from pipelines.registry.schema import sqlite_connect

        path = Path(database)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A sweep commits every suggested parameter and every epoch's report: with SQLite's
        # default journal each commit is fsyncs (~1.7 s of a 12-trial sweep); WAL is one append.
        return optuna.storages.RDBStorage(url, engine_kwargs={"creator": partial(sqlite_connect, str(path))})
    schema = _study_schema(url)
    if schema is not None and _SCHEMA_NAME.match(schema):
        _create_schema(url, schema)
    return optuna.storages.RDBStorage(url)


def _create_schema(url: str, schema: str) -> None:
    """Create the studies' PostgreSQL schema if absent (Optuna creates tables, not schemas)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            # The name matched _SCHEMA_NAME, so quoting it is enough.
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()


def _latest_sweep(storage: Any, vertical: str, ds: str) -> str | None:
    """The date of the latest sweep of ``vertical`` on or before ``ds`` that completed a trial."""
    import optuna

    dates = [
        s.study_name.split(":", 1)[1]
        for s in optuna.get_all_study_summaries(storage, include_best_trial=True)
        if s.study_name.startswith(f"{vertical}:") and s.best_trial is not None
    ]
    eligible = [d for d in dates if d <= ds]
    return max(eligible) if eligible else None


def _best_params(storage: Any, name: str) -> dict[str, Any]:
    import optuna

    return dict(optuna.load_study(study_name=name, storage=storage).best_params)
