"""Control-plane state: SQLAlchemy 2 async over SQLite (default) or PostgreSQL."""

from hutch.store._db import Database, contains_ci
from hutch.store._models import (
    ApiKey,
    Base,
    Registry,
    Sandbox,
    Snapshot,
    SnapshotTag,
    Template,
    Workspace,
    WorkspaceSecret,
    utcnow,
)

__all__ = [
    "ApiKey",
    "Base",
    "Database",
    "Registry",
    "Sandbox",
    "Snapshot",
    "SnapshotTag",
    "Template",
    "Workspace",
    "WorkspaceSecret",
    "contains_ci",
    "utcnow",
]
