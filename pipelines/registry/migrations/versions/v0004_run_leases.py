"""The run lease table: one run per vertical at a time, across processes and machines.

Revision ID: 0004_run_leases
Revises: 0002_decision_actor
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_leases"
down_revision: str | None = "0003_audit_events"
branch_labels: str | None = None
depends_on: str | None = None


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "run_leases",
        sa.Column("vertical", sa.String(64), nullable=False),
        sa.Column("ds", sa.String(10), nullable=False),
        sa.Column("holder", sa.String(250), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("acquired_at", _timestamp(), nullable=False),
        sa.Column("heartbeat_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("vertical"),
    )


def downgrade() -> None:
    op.drop_table("run_leases")
