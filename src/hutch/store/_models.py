"""Tables of the control plane (SQLAlchemy 2 declarative)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Workspace(Base):
    __tablename__ = "workspaces"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Quotas (None: the server's default; see hutch.server._quota).
    max_sandboxes: Mapped[int | None] = mapped_column(nullable=True)
    max_cpu_millis: Mapped[int | None] = mapped_column(nullable=True)
    max_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


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
    #: The ``proxy_config`` (JSON, access control only) of its sandboxes that name none.
    proxy_config: Mapped[str | None] = mapped_column(Text, nullable=True)
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
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
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
    #: The snapshot it booted from (None: a template or the default image). The snapshot may
    #: have been deleted since: the sandbox has its own copy-on-write clone of its files.
    snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Its run configuration as JSON (the snapshot's layer with the sandbox's own over it).
    run_config: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Free-form labels as a JSON object.
    labels: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Disk limit of its writable layer, when one was asked for (else the server's default).
    fs_capacity_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: False: what it writes is thrown away at each stop (it restarts with its first files).
    persistent: Mapped[bool] = mapped_column(default=True, server_default=true())
    #: The server (node) that runs it: only that one reconciles and reaps it (None: a row from
    #: before nodes, claimed by the first server to start).
    node: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    #: Its ``proxy_config`` as answers show it (JSON; opaque header values blanked, workspace
    #: secrets only by reference): never a secret value.
    proxy_config: Mapped[str | None] = mapped_column(Text, nullable=True)


class Snapshot(Base):
    """An immutable root filesystem sandboxes boot from: an image, plus (when captured from a
    sandbox) a read-only copy-on-write copy of that sandbox's writable layer."""

    __tablename__ = "snapshots"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(128))
    #: ``building``, ``ready`` or ``failed``.
    status: Mapped[str] = mapped_column(String(32))
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The image reference as the client gave it, and as resolved (qualified).
    docker_image: Mapped[str | None] = mapped_column(Text, nullable=True)
    image: Mapped[str] = mapped_column(Text)
    image_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    fs_capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    fs_used_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source_sandbox_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Captured from a sandbox: the runtime holds a layer under this snapshot's id.
    has_layer: Mapped[bool] = mapped_column(default=False)
    network: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    registry_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_config: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SnapshotTag(Base):
    """``name:tag`` → snapshot id: a mutable pointer (publishing a tag again moves it)."""

    __tablename__ = "snapshot_tags"
    __table_args__ = (UniqueConstraint("workspace_id", "name", "tag"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(128))
    tag: Mapped[str] = mapped_column(String(128))
    snapshot_id: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Registry(Base):
    """A workspace's private registry credentials (``registry_id`` of snapshots); the password
    lives in a 0600 file of the data dir, never in the database and never in an answer."""

    __tablename__ = "registries"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(Text)
    username: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkspaceSecret(Base):
    """A workspace's secret for egress header rules (``{NAME}`` in a rule's header value). The
    value is sealed (AES-GCM, key in ``<data>/secrets.key``) and never leaves the server but
    to the egress proxy; see hutch.server._secrets_store."""

    __tablename__ = "workspace_secrets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(128))
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
