"""Initial schema: models, endpoint configs, endpoints, tags."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("arn", sa.String(256), nullable=False, unique=True),
        sa.Column("creation_time", sa.Float, nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
    )
    op.create_table(
        "endpoint_configs",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("arn", sa.String(256), nullable=False, unique=True),
        sa.Column("creation_time", sa.Float, nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
    )
    op.create_table(
        "endpoints",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("arn", sa.String(256), nullable=False, unique=True),
        sa.Column("config_name", sa.String(63), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.Column("creation_time", sa.Float, nullable=False),
        sa.Column("last_modified_time", sa.Float, nullable=False),
        sa.Column("variants", sa.JSON, nullable=False),
        sa.Column("deployment", sa.JSON, nullable=False),
        sa.Column("pending_config_name", sa.String(63), nullable=True),
        sa.Column("pending_deployment", sa.JSON, nullable=True),
        sa.Column("pending_variants", sa.JSON, nullable=True),
        sa.Column("pending_start_time", sa.Float, nullable=True),
        sa.Column("deployment_config", sa.JSON, nullable=True),
    )
    op.create_table(
        "tags",
        sa.Column("resource_arn", sa.String(256), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    for name in ("tags", "endpoints", "endpoint_configs", "models"):
        op.drop_table(name)
