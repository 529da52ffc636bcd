"""Control-plane state: SQLAlchemy 2 async over SQLite (default) or PostgreSQL."""

from hutch.store._db import Database
from hutch.store._models import ApiKey, Base, Sandbox, Template, Workspace, utcnow

__all__ = ["ApiKey", "Base", "Database", "Sandbox", "Template", "Workspace", "utcnow"]
