"""The schema as it stood when hutch moved to Alembic, frozen.

Revision ``0001`` creates exactly these tables, and the pre-Alembic upgrade path creates the ones
an old database lacks from them. Never edit this file to follow the models: a schema change is a
new revision under ``versions/``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)


def baseline_metadata() -> MetaData:
    """A fresh MetaData holding the baseline's tables (fresh: callers may bind or alter it)."""
    md = MetaData()
    Table(
        "workspaces",
        md,
        Column("id", String(64), primary_key=True),
        Column("name", String(128), nullable=False, unique=True),
        Column("created_at", DateTime(), nullable=False),
        Column("max_sandboxes", Integer(), nullable=True),
        Column("max_cpu_millis", Integer(), nullable=True),
        Column("max_memory_bytes", BigInteger(), nullable=True),
    )
    Table(
        "api_keys",
        md,
        Column("id", String(64), primary_key=True),
        Column("key_hash", String(64), nullable=False, unique=True),
        Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
        Column("name", String(128), nullable=False),
        Column("is_admin", Boolean(), nullable=False),
        Column("created_at", DateTime(), nullable=False),
    )
    Table(
        "templates",
        md,
        Column("id", String(64), primary_key=True),
        Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
        Column("name", String(63), nullable=False),
        Column("image", Text(), nullable=False),
        Column("cpu", String(32), nullable=False),
        Column("memory", String(32), nullable=False),
        Column("storage", String(32), nullable=True),
        Column("network", String(16), nullable=False, server_default="none"),
        Column("created_at", DateTime(), nullable=False),
        Column("updated_at", DateTime(), nullable=False),
        UniqueConstraint("workspace_id", "name"),
    )
    Table(
        "sandboxes",
        md,
        Column("id", String(64), primary_key=True),
        Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
        Column("name", String(63), nullable=False),
        Column("template_id", String(64), nullable=True),
        Column("template_name", String(63), nullable=True),
        Column("image", Text(), nullable=False),
        Column("cpu_millis", Integer(), nullable=True),
        Column("memory_bytes", BigInteger(), nullable=True),
        Column("network", String(16), nullable=False, server_default="none"),
        Column("status", String(32), nullable=False),
        Column("status_message", Text(), nullable=True),
        Column("ttl_seconds", Integer(), nullable=True),
        Column("idle_ttl_seconds", Integer(), nullable=True),
        Column("created_at", DateTime(), nullable=False),
        Column("updated_at", DateTime(), nullable=False),
        Column("last_active_at", DateTime(), nullable=False),
        Column("stopped_at", DateTime(), nullable=True),
        Column("delete_after_stop_seconds", Integer(), nullable=True),
        Column("snapshot_id", String(64), nullable=True),
        Column("run_config", Text(), nullable=True),
        Column("labels", Text(), nullable=True),
        Column("fs_capacity_bytes", BigInteger(), nullable=True),
        Column("persistent", Boolean(), nullable=False, server_default=true()),
        UniqueConstraint("workspace_id", "name"),
    )
    Table(
        "snapshots",
        md,
        Column("id", String(64), primary_key=True),
        Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
        Column("name", String(128), nullable=False),
        Column("status", String(32), nullable=False),
        Column("status_message", Text(), nullable=True),
        Column("docker_image", Text(), nullable=True),
        Column("image", Text(), nullable=False),
        Column("image_digest", String(80), nullable=True),
        Column("fs_capacity_bytes", BigInteger(), nullable=False),
        Column("fs_used_bytes", BigInteger(), nullable=True),
        Column("source_sandbox_id", String(64), nullable=True),
        Column("has_layer", Boolean(), nullable=False),
        Column("network", String(16), nullable=False, server_default="none"),
        Column("created_by", String(128), nullable=True),
        Column("registry_id", String(64), nullable=True),
        Column("run_config", Text(), nullable=True),
        Column("created_at", DateTime(), nullable=False),
        Column("updated_at", DateTime(), nullable=False),
    )
    Table(
        "snapshot_tags",
        md,
        Column("id", Integer(), primary_key=True, autoincrement=True),
        Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
        Column("name", String(128), nullable=False),
        Column("tag", String(128), nullable=False),
        Column("snapshot_id", String(64), nullable=False),
        Column("updated_at", DateTime(), nullable=False),
        UniqueConstraint("workspace_id", "name", "tag"),
    )
    Table(
        "registries",
        md,
        Column("id", String(64), primary_key=True),
        Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
        Column("name", String(128), nullable=False),
        Column("url", Text(), nullable=False),
        Column("username", Text(), nullable=False),
        Column("created_at", DateTime(), nullable=False),
        Column("updated_at", DateTime(), nullable=False),
        UniqueConstraint("workspace_id", "name"),
    )
    return md
