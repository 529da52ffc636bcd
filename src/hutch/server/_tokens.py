"""Signed, expiring tokens: service URLs (§2.3) and download URLs carry one instead of an API key.

A token is ``<base64url payload>.<base64url HMAC-SHA256>``; the payload is compact JSON with a
``kind`` (what the token may be used for), its scope (a sandbox id and a port or a path) and an
``exp`` (Unix seconds, absent: never). The key is 32 random bytes made on the server's first start
and kept in ``<data-dir>/token-key`` (mode 0600), so tokens survive a restart; deleting the file
(and restarting) revokes every token ever issued.

Verification is constant-time and checks, in order: shape, signature, kind, expiry. Scope checks
(is this the sandbox and port the request is for?) are the caller's, on the returned claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = ["TokenError", "TokenSigner"]

KEY_FILE = "token-key"
KEY_BYTES = 32


class TokenError(Exception):
    """The token is malformed, forged, of another kind, or expired; ``str()`` says which."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a token key needs at least 16 bytes")
        self._key = key

    @classmethod
    def in_dir(cls, data_dir: Path) -> TokenSigner:
        """The signer of this data dir (its key is made, 0600, on first use)."""
        path = data_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        key = secrets.token_bytes(KEY_BYTES)
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        return cls(key)

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def sign(self, kind: str, claims: dict[str, Any], expires_at: float | None) -> str:
        """A token of ``kind`` carrying ``claims``; ``expires_at`` in Unix seconds or None."""
        body: dict[str, Any] = {"kind": kind, **claims, "n": secrets.token_hex(4)}
        if expires_at is not None:
            body["exp"] = int(expires_at)
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, kind: str, *, now: float | None = None) -> dict[str, Any]:
        """The claims of a valid, unexpired token of ``kind``; else :class:`TokenError`."""
        payload, dot, mac = token.partition(".")
        # Tokens are base64url: anything else is malformed (and compare_digest refuses
        # non-ASCII strings with a TypeError).
        if not dot or not payload or not mac or len(token) > 4096 or not token.isascii():
            raise TokenError("malformed token")
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise TokenError("invalid token signature")
        try:
            claims = json.loads(_unb64(payload))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("malformed token") from exc
        if not isinstance(claims, dict) or claims.get("kind") != kind:
            raise TokenError("token is not valid here")
        exp = claims.get("exp")
        if exp is not None and (now if now is not None else time.time()) >= exp:
            raise TokenError("token has expired")
        return claims
