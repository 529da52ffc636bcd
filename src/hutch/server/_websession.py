"""Web UI sign-in: an API key traded for an opaque session cookie, and the cross-site rule.

The browser never keeps the API key. Signing in checks it and answers a random token in an
``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over https). The server keeps only the token's
SHA-256 with the key's hash and an expiry, in memory: a restart signs everyone out, and deleting
the key ends its sessions at once.

``SameSite=Strict`` keeps the cookie off requests started by other *sites*, but another origin
of the same site (a page on another port of the same host) still gets it sent. So a request
authenticated by the cookie that can change something (any method but GET/HEAD/OPTIONS, and
every WebSocket upgrade) must carry an ``Origin`` naming this server, and a read that the browser
marks as started by another origin (``Sec-Fetch-Site``) is refused too; scripts send ``X-Api-Key``
instead and are not affected.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from hutch.protocol._errors import ErrorType
from hutch.server._auth import KeyRing, Principal
from hutch.server._errors import ApiError

COOKIE = "hutch_session"
#: Seconds a sign-in lasts; the cookie's Max-Age says the same.
LIFETIME = 12 * 3600
#: Sessions kept at most (about 200 bytes each); past that the oldest sign-in ends.
MAX_SESSIONS = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Entry:
    key_hash: str
    expires: float


class WebSessions:
    """Sign-in sessions by token digest, oldest first; bounded by ``limit``."""

    def __init__(
        self,
        *,
        lifetime: float = LIFETIME,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self._limit = limit
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, key_hash: str) -> str:
        """A new session for the key with this hash; returns the token for the cookie."""
        now = self._clock()
        for digest in [d for d, e in self._entries.items() if e.expires <= now]:
            del self._entries[digest]
        while len(self._entries) >= self._limit:
            self._entries.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._entries[_digest(token)] = _Entry(key_hash, now + self.lifetime)
        return token

    def key_hash(self, token: str) -> str | None:
        """The hash of the key a live session was opened with; ``None`` if unknown or expired."""
        digest = _digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[digest]
            return None
        return entry.key_hash

    def delete(self, token: str) -> None:
        self._entries.pop(_digest(token), None)


def is_https(conn: HTTPConnection, public_url: str | None) -> bool:
    return conn.url.scheme in ("https", "wss") or (public_url or "").startswith("https:")


def _own_origins(conn: HTTPConnection, public_url: str | None) -> set[str]:
    scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
    origins = set()
    host = conn.headers.get("host")
    if host:
        origins.add(f"{scheme}://{host}".lower())
    if public_url:
        parts = urlsplit(public_url)
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return origins


def check_origin(conn: HTTPConnection, public_url: str | None) -> None:
    """Refuse (403) a request whose ``Origin`` is missing or names another origin."""
    origin = (conn.headers.get("origin") or "").lower()
    if origin not in _own_origins(conn, public_url):
        raise ApiError(
            ErrorType.FORBIDDEN,
            "Cross-site request refused: a request signed in with the web UI's cookie must come "
            "from the UI's own pages; scripts should send the X-Api-Key header instead",
        )


def session_principal(
    conn: HTTPConnection, sessions: WebSessions, keys: KeyRing
) -> Principal | None:
    """Whose live session the request's cookie is, if any (no cross-site checks)."""
    token = conn.cookies.get(COOKIE, "")
    key_hash = sessions.key_hash(token) if token else None
    return keys.by_hash(key_hash) if key_hash else None


def cookie_principal(
    conn: HTTPConnection,
    sessions: WebSessions,
    keys: KeyRing,
    public_url: str | None,
    *,
    changes_state: bool,
) -> Principal:
    """The principal of the request's session cookie, or 401; 403 for a cross-site request."""
    who = session_principal(conn, sessions, keys)
    if who is None:
        raise ApiError(
            ErrorType.UNAUTHORIZED,
            "Your web UI session has expired or was signed out; sign in again with an API key",
        )
    if changes_state:
        check_origin(conn, public_url)
    elif conn.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        # A read started by another origin's page (<script src>, <img>): never with our cookie.
        raise ApiError(
            ErrorType.FORBIDDEN,
            "Cross-site request refused: the web UI's cookie is only good on the UI's own pages",
        )
    return who
