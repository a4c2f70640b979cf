"""The one-step rollback, as a DAG triggered from the Airflow UI.

Trigger ``rollback_model`` with params ``vertical``, ``to_version`` (empty: the
version before the current one) and ``reason`` (required): the production
pointer moves back (only to an approved, registered version whose files
verify), the registry records who did it and why, the version rolled back
away from is blocked from automatic re-promotion, and the vertical's owners
get a notice (`pipelines.release.rollout.rollback_vertical`, the same function as
``python -m pipelines rollback``).  One DAG serves every vertical, so the
nightly DAGs keep their shape and a rollback never waits behind a retraining.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from pipelines.config import Settings, vertical_names
from pipelines.orchestration.tasks import InvalidRunParams

DAG_ID = "rollback_model"


def rollback_params(verticals: list[str]) -> dict[str, Param]:
    """The trigger form (JSON schema, validated by Airflow before the run starts)."""
    return {
        "vertical": Param(
            verticals[0] if verticals else None,
            type="string",
            enum=verticals,
            title="Vertical",
            description="Whose production model to roll back.",
        ),
        "to_version": Param(
            None,
            type=["null", "string"],
            pattern=r"^(mv-[0-9a-f]{6,64})?$",
            title="Version to restore",
            description="A model version (mv-…) approved earlier; empty restores the previous production version.",
        ),
        # Required: no default and a type without "null", so the form keeps
        # Trigger disabled until it is filled; the pattern refuses a blank one
        # (a REST trigger with "   " is a 400), and the task checks it again.
        "reason": Param(
            type="string",
            minLength=1,
            maxLength=500,
            pattern=r"\S",
            title="Reason",
            description="Required: why production is rolled back (kept in the registry, shown in "
            "`status --json` and the Models view, and sent in the notice email). The version rolled "
            "back away from stays blocked until forced or unblocked.",
        ),
    }


def build_rollback_dag() -> DAG:
    """The manual rollback DAG (no schedule; one run per request)."""
    verticals = vertical_names(Settings.from_env())
    with DAG(
        dag_id=DAG_ID,
        description="Move a vertical's production pointer back to an earlier approved model",
        schedule=None,
        catchup=False,
        max_active_runs=1,  # two rollbacks never race on the pointer
        tags=["operations", "rollback"],
        params=rollback_params(verticals),
        doc_md=__doc__,
        default_args={"owner": "ml-platform", "retries": 0},
    ) as dag:

        @task(task_id="rollback", doc_md="Move the pointer back, record it, notify the owners.")
        def rollback() -> dict[str, Any]:
            from pipelines.orchestration import connections
            from pipelines.release.rollout import rollback_vertical

            connections.install()  # the bucket's credentials may live only in Airflow

            context = get_current_context()
            params = context["params"]
            reason = str(params.get("reason") or "").strip()
            if not reason:
                raise InvalidRunParams("a rollback needs a reason: fill in 'Reason' and trigger again")
            return rollback_vertical(
                params["vertical"],
                to_version=params.get("to_version") or None,
                actor=f"airflow:{context['run_id']}",
                reason=reason,
            )

        rollback()
    return dag
