"""Initial registry schema: model_versions, decisions, deployments.

Exactly what ``Base.metadata.create_all`` made before migrations existed, so a
database from that time is stamped at this revision instead of re-created.
Types are spelled out here rather than imported from the ORM: a revision is a
frozen record of the schema at its time, and must not change when the models do.

Revision ID: 0001_initial
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vertical", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("data_version", sa.String(128), nullable=False),
        sa.Column("ds", sa.String(10), nullable=False),
        sa.Column("dag_run_id", sa.String(250), nullable=True),
        sa.Column("metrics", _json, nullable=False),
        sa.Column("lineage", _json, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("vertical", "model_version", name="uq_model_versions_vertical_version"),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vertical", sa.String(64), nullable=False),
        sa.Column("ds", sa.String(10), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("forced_reason", sa.Text(), nullable=True),
        sa.Column("reasons", _json, nullable=False),
        sa.Column("champion_version", sa.String(128), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("vertical", "ds", "model_version", name="uq_decisions_vertical_ds_version"),
    )
    op.create_index("ix_decisions_vertical_ds", "decisions", ["vertical", "ds"])
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vertical", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_version", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("ds", sa.String(10), nullable=True),
        sa.Column("at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("vertical", "seq", name="uq_deployments_vertical_seq"),
        sa.ForeignKeyConstraint(
            ["vertical", "model_version"],
            ["model_versions.vertical", "model_versions.model_version"],
            name="fk_deployments_model_version",
        ),
    )


def downgrade() -> None:
    op.drop_table("deployments")
    op.drop_index("ix_decisions_vertical_ds", table_name="decisions")
    op.drop_table("decisions")
    op.drop_table("model_versions")
