"""The append-only audit trail: one ``events`` row per decision, force, deploy intent,
deployment, rollback, block and unblock, with actor, run id, time and reason.

Rows are only ever inserted, so a rerun adds to the trail and never rewrites it.

Revision ID: 0003_audit_events
Revises: 0002_decision_actor
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_audit_events"
down_revision: str | None = "0002_decision_actor"
branch_labels: str | None = None
depends_on: str | None = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vertical", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ds", sa.String(10), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", _json, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_vertical_id", "events", ["vertical", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_vertical_id", table_name="events")
    op.drop_table("events")
