"""Workspace secrets: sealed at rest, named by egress header rules, never answered.

A value is sealed with AES-GCM (``cryptography``) under the server's key, ``<data>/secrets.key``
(32 random bytes, base64, mode 0600, made on first use). The workspace id and the secret's name
are the associated data: a sealed value copied to another row (another workspace, another name)
does not open. The database holds only sealed values; the key file never enters it, so a
database dump alone reveals nothing. Values are opened only to hand them to the egress proxy.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select

from hutch.store import Database, Workspace, WorkspaceSecret, utcnow

__all__ = [
    "MAX_SECRETS",
    "MAX_VALUE",
    "SecretBox",
    "SecretError",
    "SecretInfo",
    "check_name",
    "delete_secret",
    "list_secrets",
    "open_secrets",
    "set_secret",
]

KEY_FILE = "secrets.key"
#: Bytes of one value (a token, a service account's JSON) and secrets per workspace.
MAX_VALUE = 64 * 1024
MAX_SECRETS = 1000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_NONCE = 12


class SecretError(ValueError):
    """A refused name or value, or a value that does not open; ``str()`` says what to do."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise SecretError(
            f"{name[:80]!r} is not a secret name: use 1-128 letters, digits, '_', '.' and '-', "
            "starting with a letter or '_' (e.g. OPENAI_API_KEY)"
        )
    return name


class SecretBox:
    """Seals and opens values under the key of one data dir."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def in_dir(cls, data_dir: Path) -> SecretBox:
        """The data dir's key, made (0600, never replaced) if there is none."""
        path = data_dir / KEY_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            finally:
                os.close(fd)
        key = base64.b64decode(path.read_bytes().strip())
        if len(key) != 32:
            raise SecretError(f"{path} does not hold a 32-byte key; restore it from a backup")
        return cls(key)

    def seal(self, workspace_id: str, name: str, value: str) -> str:
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode(), f"{workspace_id}/{name}".encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, workspace_id: str, name: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        try:
            plain = self._aead.decrypt(
                raw[:_NONCE], raw[_NONCE:], f"{workspace_id}/{name}".encode()
            )
        except InvalidTag:
            raise SecretError(
                f"secret {name!r} does not open with this server's {KEY_FILE}; set it again"
            ) from None
        return plain.decode()


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a secret: never its value."""

    name: str
    created_at: datetime
    updated_at: datetime


def _info(row: WorkspaceSecret) -> SecretInfo:
    return SecretInfo(row.name, row.created_at, row.updated_at)


async def set_secret(
    db: Database, box: SecretBox, workspace_id: str, name: str, value: str
) -> SecretInfo:
    """Create or replace; returns what may be shown."""
    check_name(name)
    if not value or len(value.encode()) > MAX_VALUE:
        raise SecretError(f"a secret's value is 1 to {MAX_VALUE} bytes")
    sealed = box.seal(workspace_id, name, value)
    async with db.session() as s, s.begin():
        row = (
            await s.execute(
                select(WorkspaceSecret).where(
                    WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name == name
                )
            )
        ).scalar()
        if row is None:
            count = len(
                (
                    await s.execute(
                        select(WorkspaceSecret.id).where(
                            WorkspaceSecret.workspace_id == workspace_id
                        )
                    )
                ).all()
            )
            if count >= MAX_SECRETS:
                raise SecretError(
                    f"the workspace holds {MAX_SECRETS} secrets already; remove one first"
                )
            now = utcnow()
            row = WorkspaceSecret(
                id=uuid.uuid4().hex,
                workspace_id=workspace_id,
                name=name,
                sealed=sealed,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
        else:
            row.sealed, row.updated_at = sealed, utcnow()
    return _info(row)


async def list_secrets(db: Database, workspace_id: str) -> list[SecretInfo]:
    async with db.session() as s:
        rows = (
            await s.execute(
                select(WorkspaceSecret)
                .where(WorkspaceSecret.workspace_id == workspace_id)
                .order_by(WorkspaceSecret.name)
            )
        ).scalars()
        return [_info(r) for r in rows]


async def delete_secret(db: Database, workspace_id: str, name: str) -> bool:
    """False: there was none of that name."""
    async with db.session() as s, s.begin():
        result = await s.execute(
            delete(WorkspaceSecret).where(
                WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name == name
            )
        )
    return bool(getattr(result, "rowcount", 0))


async def open_secrets(
    db: Database, box: SecretBox, workspace_id: str, names: set[str]
) -> dict[str, str]:
    """The values of ``names`` that the workspace holds (missing names are left out)."""
    if not names:
        return {}
    async with db.session() as s:
        rows = list(
            (
                await s.execute(
                    select(WorkspaceSecret).where(
                        WorkspaceSecret.workspace_id == workspace_id,
                        WorkspaceSecret.name.in_(sorted(names)),
                    )
                )
            ).scalars()
        )
    return {r.name: box.open(workspace_id, r.name, r.sealed) for r in rows}


async def workspace_id(db: Database, workspace: str) -> str:
    """The id of the workspace named ``workspace`` (operator commands name workspaces)."""
    async with db.session() as s:
        row = (await s.execute(select(Workspace).where(Workspace.name == workspace))).scalar()
    if row is None:
        raise SecretError(f"no workspace {workspace!r} (see `hutch workspaces list`)")
    return row.id
