"""Header injection into a sandbox's HTTP/1 requests, outside the sandbox (egress header rules).

The egress proxy hands the sandbox-to-upstream direction of a connection to
:class:`HttpRewriter` when a rule names the connection's host (see :mod:`_egress_proxy`). Each
request of the connection (keep-alive included) is framed: its head is read (bounded), the
rule's headers replace any of the same name, and its body is copied by its own framing
(``Content-Length`` or chunked). Answers travel the other way untouched.

Framing is strict, because the sandbox is hostile and the upstream may frame differently:
``Content-Length`` with ``Transfer-Encoding``, two lengths, a transfer coding other than
``chunked``, a folded or bare-LF header line, or a head over the limit ends the connection
(:class:`HttpError`). A request for another host than the one checked (a later ``Host`` on
the same connection) is passed on without any header of the rules, and so is a ``TRACE``
(whose answer echoes the request). An upgrade (``Upgrade``, ``CONNECT``) ends framing: the rest
is copied as it comes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from hutch.runtime._egress_policy import EgressPolicy

__all__ = ["Buffered", "Forward", "HttpError", "HttpRewriter", "rewrite_head"]

#: Bytes of one request head, and of one chunk-size line.
HEAD_LIMIT = 64 * 1024
LINE_LIMIT = 4 * 1024
CHUNK = 256 * 1024
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,16})(;[^\r\n]*)?$")

Send = Callable[[bytes], Awaitable[None]]


class HttpError(Exception):
    """A request the proxy will not frame (ends the connection)."""


class Buffered:
    """Bytes from ``recv`` (b"" at the end), with what was read ahead kept in front."""

    def __init__(self, recv: Callable[[int], Awaitable[bytes]], head: bytes = b"") -> None:
        self._recv = recv
        self._buf = bytearray(head)

    async def _more(self) -> bool:
        data = await self._recv(CHUNK)
        self._buf += data
        return bool(data)

    async def until(self, mark: bytes, limit: int) -> bytes | None:
        """Bytes up to and including ``mark``; None at a clean end (nothing buffered)."""
        start = 0
        while True:
            at = self._buf.find(mark, start)
            if at >= 0:
                out = bytes(self._buf[: at + len(mark)])
                del self._buf[: at + len(mark)]
                return out
            if len(self._buf) > limit:
                raise HttpError("a request head or line over the limit")
            start = max(0, len(self._buf) - len(mark) + 1)
            if not await self._more():
                if self._buf:
                    raise HttpError("the connection ended inside a request head")
                return None

    async def copy(self, n: int, send: Send) -> None:
        """Send exactly ``n`` bytes on."""
        while n > 0:
            if not self._buf and not await self._more():
                raise HttpError("the connection ended inside a request body")
            take = bytes(self._buf[: min(n, CHUNK)])
            del self._buf[: len(take)]
            n -= len(take)
            await send(take)

    async def rest(self, send: Send) -> None:
        """Send everything until the end."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            await send(data)
        while data := await self._recv(CHUNK):
            await send(data)


Forward = Callable[[Buffered, Send], Awaitable[None]]


def _host_of(value: bytes) -> str:
    host = value.strip().decode("ascii", "replace").lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def rewrite_head(head: bytes, host: str, policy: EgressPolicy) -> tuple[bytes, int | str]:
    """The head with the rules' headers set (when the request is for ``host``) and how its
    body is framed: a length, ``"chunked"``, or ``"raw"`` (an upgrade: copy the rest).

    Raises HttpError: framing the proxy will not pass on.
    """
    text = head[:-4]
    if b"\n" in text.replace(b"\r\n", b"") or b"\r" in text.replace(b"\r\n", b""):
        raise HttpError("a bare CR or LF in a request head")
    lines = text.split(b"\r\n")
    request, fields = lines[0], lines[1:]
    parts = request.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HttpError("not an HTTP/1 request line")
    method, target = parts[0], parts[1].decode("ascii", "replace")
    pairs: list[tuple[bytes, bytes]] = []
    for line in fields:
        if not line or line[:1] in b" \t":
            raise HttpError("a folded header line")
        key, sep, value = line.partition(b":")
        if not sep or key != key.strip() or not key:
            raise HttpError("a malformed header line")
        pairs.append((key, value.strip()))
    lowered = [(k.lower(), v) for k, v in pairs]
    lengths = {v for k, v in lowered if k == b"content-length"}
    codings = [v.lower() for k, v in lowered if k == b"transfer-encoding"]
    if codings and lengths:
        raise HttpError("both Content-Length and Transfer-Encoding")
    framing: int | str = 0
    if codings:
        if codings != [b"chunked"]:
            raise HttpError("a transfer coding other than chunked")
        framing = "chunked"
    elif lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise HttpError("a bad Content-Length")
        framing = int(next(iter(lengths)))
    connection = b",".join(v.lower() for k, v in lowered if k == b"connection")
    if method == b"CONNECT" or (b"upgrade" in connection and b"upgrade" in dict(lowered)):
        framing = "raw"
    hosts = [v for k, v in lowered if k == b"host"]
    path = target
    if target.startswith(("http://", "https://")):  # absolute form: its host is the host
        rest = target.split("://", 1)[1]
        authority, slash, tail = rest.partition("/")
        hosts, path = [authority.encode()], slash + tail
    if len(hosts) != 1 or _host_of(hosts[0]) != host.lower().rstrip("."):
        return head, framing  # not the host checked: nothing of the rules
    if method == b"TRACE":  # the server would echo the request, headers and all
        return head, framing
    add = policy.headers_for(host, path or "/")
    if not add:
        return head, framing
    names = {n.lower().encode() for n, _ in add}
    kept = [(k, v) for k, v in pairs if k.lower() not in names]
    out = [request, *(k + b": " + v for k, v in kept)]
    out += [n.encode() + b": " + v.encode() for n, v in add]
    return b"\r\n".join(out) + b"\r\n\r\n", framing


class HttpRewriter:
    """Frames a connection's requests and sets the rules' headers on those for ``host``."""

    def __init__(self, host: str, policy: EgressPolicy) -> None:
        self.host, self.policy = host, policy

    async def run(self, src: Buffered, send: Send) -> None:
        while True:
            head = await src.until(b"\r\n\r\n", HEAD_LIMIT)
            if head is None:
                return
            new, framing = rewrite_head(head, self.host, self.policy)
            await send(new)
            if framing == "raw":
                await src.rest(send)
                return
            if framing == "chunked":
                await self._chunks(src, send)
            else:
                assert isinstance(framing, int)
                await src.copy(framing, send)

    async def _chunks(self, src: Buffered, send: Send) -> None:
        while True:
            line = await src.until(b"\r\n", LINE_LIMIT)
            if line is None:
                raise HttpError("the connection ended inside a chunked body")
            m = _CHUNK_SIZE.match(line[:-2])
            if m is None:
                raise HttpError("a bad chunk size")
            await send(line)
            size = int(m.group(1), 16)
            if size == 0:
                break
            await src.copy(size, send)
            crlf = await src.until(b"\r\n", 2)
            if crlf != b"\r\n":
                raise HttpError("a chunk not ended by CRLF")
            await send(crlf)
        while True:  # trailers, then the empty line
            line = await src.until(b"\r\n", LINE_LIMIT)
            if line is None:
                raise HttpError("the connection ended inside trailers")
            await send(line)
            if line == b"\r\n":
                return
