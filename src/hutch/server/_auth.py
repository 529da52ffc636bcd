"""API keys: sent as ``X-Api-Key``, stored as SHA-256 hashes, scoped to a workspace."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from hutch.protocol._errors import ErrorType
from hutch.server._errors import ApiError
from hutch.store import ApiKey, Database, Workspace

log = logging.getLogger("hutch.server")

DEFAULT_WORKSPACE = "default"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "hk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    key_id: str
    workspace_id: str
    is_admin: bool


class KeyRing:
    """Authenticates requests; keeps the key table in memory (it is small and read per request)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_hash: dict[str, Principal] = {}

    async def load(self) -> None:
        async with self._db.session() as s:
            rows = (await s.execute(select(ApiKey))).scalars().all()
        self._by_hash = {r.key_hash: Principal(r.id, r.workspace_id, r.is_admin) for r in rows}

    async def watch(self, interval: float = 1.0) -> None:
        """Re-read the key table every ``interval`` seconds (``hutch keys`` changes it while the
        server runs: new keys work, revoked keys stop working, without a restart)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception:  # a locked or busy database: keep the last table, try again
                log.warning("could not re-read the API keys", exc_info=True)

    async def add(
        self,
        key: str,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        name: str = "",
        is_admin: bool = False,
    ) -> Principal:
        async with self._db.session() as s, s.begin():
            ws = (await s.execute(select(Workspace).where(Workspace.name == workspace))).scalar()
            if ws is None:
                ws = Workspace(id=uuid.uuid4().hex, name=workspace)
                s.add(ws)
                await s.flush()
            row = ApiKey(
                id=uuid.uuid4().hex,
                key_hash=hash_key(key),
                workspace_id=ws.id,
                name=name,
                is_admin=is_admin,
            )
            s.add(row)
        await self.load()
        return self._by_hash[hash_key(key)]

    async def bootstrap(self, data_dir: Path) -> str | None:
        """With an empty key table, create the first admin key.

        ``HUTCH_API_KEY`` (if set) becomes that key; otherwise one is generated and written to
        ``<data_dir>/api-key`` (mode 0600). Returns the path written, if any.
        """
        async with self._db.session() as s:
            count = (await s.execute(select(func.count()).select_from(ApiKey))).scalar_one()
        if count:
            await self.load()
            return None
        env_key = os.environ.get("HUTCH_API_KEY", "").strip()
        key = env_key or new_key()
        await self.add(key, name="bootstrap", is_admin=True)
        if env_key:
            return None
        path = data_dir / "api-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.chmod(path, 0o600)
        return str(path)

    def by_hash(self, key_hash: str) -> Principal | None:
        """The key's principal, if the key (given by its hash) still exists."""
        return self._by_hash.get(key_hash)

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise ApiError(
                ErrorType.UNAUTHORIZED,
                "Missing API key: send it in the X-Api-Key header "
                "(HUTCH_API_KEY for the hutch SDK)",
            )
        principal = self._by_hash.get(hash_key(key))
        if principal is not None:
            return principal
        raise ApiError(
            ErrorType.UNAUTHORIZED, "Invalid API key; check the X-Api-Key header (HUTCH_API_KEY)"
        )
