"""Sealing of secret values at rest (AES-GCM from ``cryptography``) under a data dir's key.

The key is ``<data>/secrets.key`` (32 random bytes, base64, mode 0600, made on first use and
never replaced). Each value is sealed with associated data naming where it belongs (a workspace
and secret name, a sandbox's egress header): a sealed value copied elsewhere does not open.
Used for workspace secrets (the database holds only sealed values) and for the header values of
a sandbox's saved egress policy.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_FILE", "SealError", "SecretBox"]

KEY_FILE = "secrets.key"
_NONCE = 12


class SealError(ValueError):
    """A key file or a sealed value that cannot be used; ``str()`` says what to do."""


class SecretBox:
    """Seals and opens values under one key."""

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
        try:
            key = base64.b64decode(path.read_bytes().strip(), validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise SealError(f"{path} does not hold a 32-byte key; restore it from a backup")
        return cls(key)

    def seal(self, where: str, value: str) -> str:
        nonce = secrets.token_bytes(_NONCE)
        sealed: bytes = self._aead.encrypt(nonce, value.encode(), where.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, where: str, sealed: str) -> str:
        try:
            raw = base64.b64decode(sealed, validate=True)
            plain: bytes = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], where.encode())
        except (InvalidTag, ValueError):
            raise SealError(
                f"a sealed value ({where}) does not open with this server's {KEY_FILE}; "
                "set it again"
            ) from None
        return plain.decode()
