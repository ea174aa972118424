"""The metadata schema as SQLAlchemy Core tables. Migrations in ``migrations/versions`` must match it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("arn", sa.String(256), nullable=False, unique=True),
    sa.Column("creation_time", sa.Float, nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
)

endpoint_configs = sa.Table(
    "endpoint_configs",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("arn", sa.String(256), nullable=False, unique=True),
    sa.Column("creation_time", sa.Float, nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
)

endpoints = sa.Table(
    "endpoints",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("arn", sa.String(256), nullable=False, unique=True),
    sa.Column("config_name", sa.String(63), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.Text, nullable=True),
    sa.Column("creation_time", sa.Float, nullable=False),
    sa.Column("last_modified_time", sa.Float, nullable=False),
    # Per variant: VariantName, DesiredWeight, DesiredInstanceCount.
    sa.Column("variants", sa.JSON, nullable=False),
    # The deployed config and its models, snapshotted (see domain.specs.DeploymentSpec).
    sa.Column("deployment", sa.JSON, nullable=False),
    sa.Column("pending_config_name", sa.String(63), nullable=True),
    sa.Column("pending_deployment", sa.JSON, nullable=True),
    sa.Column("pending_variants", sa.JSON, nullable=True),
    sa.Column("pending_start_time", sa.Float, nullable=True),
    sa.Column("deployment_config", sa.JSON, nullable=True),
    # Bumped by every save; a save that does not find the revision it read loses (optimistic locking).
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("resource_arn", sa.String(256), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
