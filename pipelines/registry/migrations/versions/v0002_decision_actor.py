"""Record who or what wrote a gate decision (a forced promotion names its person).

Nullable: decisions written before this revision have no actor, and the
automatic gate may still omit it.

Revision ID: 0002_decision_actor
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_decision_actor"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # batch_alter_table: a plain ALTER on PostgreSQL, the copy-and-swap SQLite needs for most changes.
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("actor", sa.String(250), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("actor")
