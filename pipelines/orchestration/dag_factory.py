"""One Airflow DAG per vertical spec, built from the spec alone.

``dags/<vertical>.py`` (generated, see `pipelines.orchestration.dag_files`)
calls `build_vertical_dag` with its name.  Parsing stays fast and side-effect
free: the spec is read and validated (YAML + pydantic, both already loaded by
Airflow), nothing touches a database or the network, and the stage functions,
with pandas, torch, Great Expectations and DVC behind them, are imported only
inside the task callables.

Shape: extract >> validate >> snapshot >> train >> evaluate >> gate >> deploy >> report.
The gate is a short-circuit: a rejected model (or a dry run) skips ``deploy``
only, and ``report`` still runs (trigger rule ``none_failed``: a skipped deploy
is fine, a failure anywhere upstream is not).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, TriggerRule, chain, get_current_context, task

from pipelines.config import Settings, VerticalSpec, load_spec
from pipelines.orchestration.notifiers import FailureNotifier
from pipelines.orchestration.tasks import data_quality_retry_policy, run_ds, run_options, run_stage
from pipelines.orchestration.tasks import run_context as task_run_context
from pipelines.orchestration.timetable import UtcDayTimetable

TASK_IDS = ("extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report")

#: Scheduling starts here; with catchup off only the latest interval is ever
#: scheduled, and any earlier date can still be run on demand (trigger with it).
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
RETRIES = 2
RETRY_DELAY = timedelta(minutes=1)
#: Delay multiplier per retry (1 min, 2 min, ... capped): a flaky source or
#: bucket gets time to recover instead of being hammered.
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = timedelta(minutes=15)
TASK_TIMEOUT = timedelta(hours=2)
RUN_TIMEOUT = timedelta(hours=6)


def training_window_asset(vertical: str) -> Asset:
    """The Airflow Asset the snapshot task updates (one per vertical).

    ``x-dvc`` is a custom scheme (Airflow leaves ``x-`` URIs alone): the data
    lives in the vertical's DVC repo and remote, and each asset event carries
    the data version and tag in its extra.
    """
    return Asset(name=f"{vertical}_training_window", uri=f"x-dvc://pipelines/{vertical}/training_window")


def run_params() -> dict[str, Param]:
    """The trigger form, validated by Airflow (JSON schema) before a run starts.

    Every field is optional, so the form submits with its defaults: Airflow's
    form marks a typed param *required* unless its JSON-schema type admits
    ``null`` (see Airflow's ``example_params_ui_tutorial``).  Airflow validates
    each param against its own schema only (checked in 3.3: neither the form
    nor the server evaluates one param's schema against another's value), so
    "a forced promotion needs a reason" is enforced when the run starts
    (`pipelines.orchestration.tasks.RunOptions`), before any work.
    """
    return {
        "dry_run": Param(
            False,
            type=["boolean", "null"],
            title="Dry run",
            description="Extract, validate, train, evaluate and decide, but do not deploy.",
        ),
        "force_promotion": Param(
            False,
            type=["boolean", "null"],
            title="Force promotion",
            description="Promote the challenger even if the gate rejects it. Needs a reason (below): "
            "a forced run without one fails at once, before any work.",
        ),
        "force_reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Reason for forcing",
            description="Required (non-empty) when 'Force promotion' is on; recorded with the decision. "
            "Ignored when not forcing.",
        ),
    }


def _doc_md(spec: VerticalSpec, settings: Settings) -> str:
    source = spec.source
    where = f"SQL table `{source.table}` (connection `{source.conn_id}`)" if source.kind == "sql" else source.url
    thresholds = ", ".join(f"{m} ≥ {v:g}" for m, v in spec.gate.thresholds.items())
    tolerance = ", ".join(f"{m} -{v:g}" for m, v in spec.gate.champion_tolerance.items()) or "none"
    return f"""### {spec.name}: nightly retraining

{spec.description.strip()}

| | |
|---|---|
| predicts | `{spec.label.column}` = `{spec.label.positive}` |
| source | {where}, one day per run (`{source.event_time}`) |
| training window | {spec.window.train_days} days, last {spec.window.holdout_days} held out for evaluation |
| gate thresholds | {thresholds} |
| allowed drop vs champion | {tolerance} |
| suite | `expectations/{spec.suite_name}.json` |
| alerts | {", ".join(spec.alerts.emails)} |
| spec | `{settings.specs_dir / (spec.name + ".yaml")}` |

Each run processes **one UTC day**: the day of its logical date, which is
exactly its data interval (`D 00:00` → `D+1 00:00` UTC). The nightly run for
day D starts at `{spec.schedule}` (UTC) on D+1. To rerun a day, trigger with
that logical date (a day that is not over yet is refused), or clear the run
(or a task with its downstream): the stages are idempotent, so the data and
model versions come out the same and nothing is registered or deployed twice.

Params (all optional): `dry_run` (decide, don't deploy), `force_promotion` +
`force_reason` (override a rejection; a non-empty reason is required and
recorded, else the run fails at once). Bad data fails `validate`
without retries, quarantines the day and emails the owners; the deployed model
never changes on a failed run.
"""


def build_vertical_dag(vertical: str) -> DAG:
    """The DAG for ``vertical``; a missing or invalid spec raises `SpecError` (an import error)."""
    settings = Settings.from_env()
    spec = load_spec(vertical, settings)
    name = spec.name
    asset = training_window_asset(name)

    with DAG(
        dag_id=name,
        description=spec.description.strip().split(". ")[0][:200],
        schedule=UtcDayTimetable(spec.schedule),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=RUN_TIMEOUT,
        tags=sorted({*spec.tags, f"vertical:{name}"}),
        doc_md=_doc_md(spec, settings),
        params=run_params(),
        default_args={
            "owner": spec.owner,
            "retries": RETRIES,
            "retry_delay": RETRY_DELAY,
            "retry_exponential_backoff": RETRY_BACKOFF,
            "max_retry_delay": MAX_RETRY_DELAY,
            "execution_timeout": TASK_TIMEOUT,
            "retry_policy": data_quality_retry_policy(),
            "on_failure_callback": FailureNotifier(vertical=name, to=spec.alerts.emails),
        },
    ) as dag:

        @task(task_id="extract", doc_md="Pull the day's raw rows (and any window day never stored).")
        def extract() -> dict[str, Any]:
            context = get_current_context()
            run_options(name, context)  # fail in seconds, not after training, on contradictory params
            return run_stage("extract", name, context)

        @task(task_id="validate", doc_md="Run the GX suite; bad data fails here, without retries.")
        def validate() -> dict[str, Any]:
            context = get_current_context()
            return run_stage("validate", name, context, run_context=task_run_context(context))

        @task(task_id="snapshot", outlets=[asset], doc_md="Version the validated window with DVC.")
        def snapshot() -> dict[str, Any]:
            context = get_current_context()
            version = run_stage("snapshot", name, context, run_context=task_run_context(context))
            context["outlet_events"][asset].extra = {
                "ds": run_ds(context),
                "data_version": version["id"],
                "tag": version["tag"],
                "rows": version["rows"],
            }
            return version

        @task(task_id="train", doc_md="Train (or reuse) the challenger on that exact data version.")
        def train() -> dict[str, Any]:
            context = get_current_context()
            return run_stage("train", name, context, run_id=context["run_id"])

        @task(task_id="evaluate", doc_md="Score challenger and champion on the same time-based holdout.")
        def evaluate() -> dict[str, Any]:
            return run_stage("evaluate", name, get_current_context())

        @task.short_circuit(
            task_id="gate",
            ignore_downstream_trigger_rules=False,
            doc_md="Decide promotion; a rejection or a dry run skips deploy (report still runs).",
        )
        def gate() -> bool:
            context = get_current_context()
            options = run_options(name, context)
            run_id = context["run_id"]
            decision = run_stage("gate", name, context, force_reason=options.force_reason, run_id=run_id)
            context["ti"].xcom_push(key="decision", value=decision)
            deploy_now = bool(decision["approved"]) and not options.dry_run
            if not deploy_now:
                # deploy is about to be skipped: record its no-op outcome (and why) now,
                # so the report states it; dry_run=True can never touch the bucket.
                run_stage("deploy", name, context, dry_run=True, run_id=run_id)
            return deploy_now

        @task(task_id="deploy", doc_md="Upload the approved model, flip the production pointer last.")
        def deploy() -> dict[str, Any]:
            context = get_current_context()
            return run_stage("deploy", name, context, run_id=context["run_id"])

        @task(
            task_id="report",
            trigger_rule=TriggerRule.NONE_FAILED,
            doc_md="Write (and mail, where the spec asks) the run summary.",
        )
        def report() -> dict[str, Any]:
            return run_stage("report", name, get_current_context())

        chain(extract(), validate(), snapshot(), train(), evaluate(), gate(), deploy(), report())
    return dag
