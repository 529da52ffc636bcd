"""Tables of the control plane (SQLAlchemy 2 declarative)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Workspace(Base):
    __tablename__ = "workspaces"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Quotas (None: the server's default; see hutch.server._quota).
    max_sandboxes: Mapped[int | None] = mapped_column(nullable=True)
    max_cpu_millis: Mapped[int | None] = mapped_column(nullable=True)
    max_memory_bytes: Mapped[int | None] = mapped_column(nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(128), default="")
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(63))
    image: Mapped[str] = mapped_column(Text)
    cpu: Mapped[str] = mapped_column(String(32))
    memory: Mapped[str] = mapped_column(String(32))
    storage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: ``none`` or ``egress`` (hutch extension); fixed when the template is made.
    network: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sandbox(Base):
    __tablename__ = "sandboxes"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(63))
    template_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    template_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    image: Mapped[str] = mapped_column(Text)
    cpu_millis: Mapped[int | None] = mapped_column(nullable=True)
    memory_bytes: Mapped[int | None] = mapped_column(nullable=True)
    #: The template's network mode when the sandbox was made.
    network: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    status: Mapped[str] = mapped_column(String(32))
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    ttl_seconds: Mapped[int | None] = mapped_column(nullable=True)
    idle_ttl_seconds: Mapped[int | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_active_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: When it was stopped (status ``stopped``); None while it runs.
    stopped_at: Mapped[datetime | None] = mapped_column(nullable=True)
    delete_after_stop_seconds: Mapped[int | None] = mapped_column(nullable=True)
