"""The transparent egress proxy: TCP of sandboxes with an access control, redirected here by the
firewall (see :mod:`_network`), is let through or refused by name.

One proxy per server, listening on the bridge's address; the firewall redirects a sandbox's TCP
to it (``REDIRECT``), so the connection's original destination comes from ``SO_ORIGINAL_DST``
and the sandbox from the peer address. The first bytes are read: a TLS ClientHello's SNI or an
HTTP request's ``Host`` names the destination. Allowed: the proxy dials the original
destination and copies bytes both ways unchanged (TLS end to end). Refused: the sandbox's
connection is reset at once. Only a connection to a host a header rule names is altered: its
requests get the rule's headers (:mod:`_egress_http`), its TLS terminated and re-originated
(:mod:`_egress_tls`).

A name is trusted only for the address it resolves to on the host: a sandbox that says
``allowed.example`` but dials another address is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import socket
import ssl
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime._egress_policy import EgressPolicy, IPAddress, Verdict, valid_name
from hutch.runtime.runc._egress_http import Buffered, Forward, HttpError, HttpRewriter
from hutch.runtime.runc._egress_tls import EgressCA, TlsServerStream, upstream_context

__all__ = ["NEED_MORE", "EgressProxy", "sniff_name"]

log = logging.getLogger("hutch.runtime")

SO_ORIGINAL_DST = 80
#: Bytes read to find a name: a ClientHello or request head is smaller (bounded buffer).
PEEK_LIMIT = 16 * 1024
#: How long a client gets to send its first bytes when only a name can decide. Client-first
#: protocols (TLS, HTTP) send at once; a server-first one (SSH) is judged by address after this.
PEEK_TIMEOUT = 3.0
CONNECT_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 5.0
CHUNK = 256 * 1024
REGEX_TIMEOUT = 0.5
#: Connections one sandbox may have open through the proxy; more are refused (each costs the
#: host a task and two sockets).
MAX_CONNECTIONS = 512


class _NeedMore:
    """More bytes are needed to tell."""


NEED_MORE = _NeedMore()

_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
            b"CONNECT ", b"TRACE ")  # fmt: skip


def _tls_sni(data: bytes) -> str | _NeedMore | None:
    """SNI of a TLS ClientHello at the start of ``data`` (first record only)."""
    if len(data) < 5:
        return NEED_MORE
    record_len = struct.unpack("!H", data[3:5])[0]
    if len(data) < 5 + record_len:
        return NEED_MORE if 5 + record_len <= PEEK_LIMIT else None
    hello = data[5 : 5 + record_len]
    try:
        if hello[0] != 1:  # not a ClientHello
            return None
        pos = 4 + 2 + 32  # handshake header, version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + struct.unpack("!H", hello[pos : pos + 2])[0]  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        end = pos + 2 + struct.unpack("!H", hello[pos : pos + 2])[0]
        pos += 2
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack("!HH", hello[pos : pos + 4])
            pos += 4
            if ext_type == 0:  # server_name: list length, then (type, length, name)
                body = hello[pos : pos + ext_len]
                if len(body) >= 5 and body[2] == 0:
                    name_len = struct.unpack("!H", body[3:5])[0]
                    return body[5 : 5 + name_len].decode("ascii")
                return None
            pos += ext_len
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


def _http_host(data: bytes) -> str | _NeedMore | None:
    """``Host`` of an HTTP/1 request head at the start of ``data`` (port stripped)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return NEED_MORE if len(data) < PEEK_LIMIT else None
    for line in data[:end].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace")
            if host.startswith("["):
                return host[1:].partition("]")[0]
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return None


def sniff_name(data: bytes) -> str | _NeedMore | None:
    """The destination name the first bytes of a connection carry: None when they carry none
    (not TLS, not HTTP, or malformed), NEED_MORE when more bytes could tell."""
    if not data:
        return NEED_MORE
    if data[0] == 0x16:
        return _tls_sni(data)
    if any(m.startswith(data[: len(m)]) for m in _METHODS) and len(data) < 8:
        return NEED_MORE
    if data.startswith(_METHODS):
        return _http_host(data)
    return None


@dataclass
class _Sandbox:
    sandbox_id: str
    policy: EgressPolicy
    denied: int = 0
    allowed: int = 0
    active: int = 0


def _original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


def _forbidden_target(ip: IPAddress) -> bool:
    """Never dialled from the host on a sandbox's behalf, whatever the policy (the firewall
    keeps these off the proxy; this is the second lock)."""
    return ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified


#: How long the host's address table is trusted before it is read again.
ADDRESSES_TTL = 2.0


class _HostAddresses:
    """The host's own IPv4 addresses, and those of its bridges (Docker's, other sandboxes'):
    the proxy dials from the host, so it must refuse what hutch's FORWARD chain refuses to
    sandboxes, including bridges made after the sandbox's rules were."""

    def __init__(self) -> None:
        self._at = -ADDRESSES_TTL
        self._local: frozenset[str] = frozenset()
        self._bridges: frozenset[str] = frozenset()

    def _read(self) -> None:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        local, bridges = set(), set()
        for link in json.loads(out or "[]"):
            is_bridge = Path(f"/sys/class/net/{link['ifname']}/bridge").exists()
            for a in link.get("addr_info", []):
                local.add(str(a["local"]))
                if is_bridge:
                    bridges.add(str(a["local"]))
        self._local, self._bridges = frozenset(local), frozenset(bridges)

    async def forbidden(self, ip: str) -> bool:
        """Is ``ip`` the host itself, or reached through one of the host's bridges?"""
        # The source address the kernel picks for the destination names its interface.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((ip, 9))  # UDP: no packet is sent
            except OSError:
                return True
            source = str(probe.getsockname()[0])
        loop = asyncio.get_running_loop()
        # A source the table does not hold means the table is stale (an address or a bridge
        # was added since): read it again, whatever its age.
        if source not in self._local or loop.time() - self._at > ADDRESSES_TTL:
            await asyncio.to_thread(self._read)
            self._at = loop.time()
        return ip in self._local or source in self._bridges


class EgressProxy:
    """Listens on ``host:port``; sandboxes are known by address (:meth:`set`)."""

    def __init__(self, host: str, port: int, ca_dir: Path | None = None) -> None:
        self.host, self.port = host, port
        #: Where the interception CA lives (None: HTTPS is never intercepted).
        self._ca_dir = ca_dir
        self._ca: EgressCA | None = None
        self._upstream_tls: ssl.SSLContext | None = None
        self._by_ip: dict[str, _Sandbox] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        #: Denials of sandboxes no longer registered are kept by id for :meth:`denied`.
        self._denied: dict[str, int] = {}
        self._host = _HostAddresses()
        self._regex_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="hutch-egress-regex"
        )

    # -- sandboxes ---------------------------------------------------------------------------

    def set(self, address: str, sandbox_id: str, policy: EgressPolicy) -> None:
        """Register or replace the policy of the sandbox at ``address`` (new connections)."""
        current = self._by_ip.get(address)
        if current is not None and current.sandbox_id == sandbox_id:
            current.policy = policy
        else:
            self._by_ip[address] = _Sandbox(sandbox_id, policy, self._denied.get(sandbox_id, 0))

    def remove(self, address: str) -> None:
        self._by_ip.pop(address, None)

    def denied(self, sandbox_id: str) -> int:
        """Connections of the sandbox this proxy refused."""
        for sb in self._by_ip.values():
            if sb.sandbox_id == sandbox_id:
                return sb.denied
        return self._denied.get(sandbox_id, 0)

    # -- serving -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle,
                self.host,
                self.port,
                reuse_address=True,
                backlog=1024,
                limit=2 * CHUNK,
            )

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A runaway regex cannot be interrupted: its thread is left to finish, not waited for.
        self._regex_pool.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")[0]
        sb = self._by_ip.get(peer)
        if sb is None or sb.active >= MAX_CONNECTIONS:  # not (or no longer) a sandbox with a
            _reset(writer)  # policy, or one at its limit
            return
        sb.active += 1
        try:
            await self._relay(sb, sock, reader, writer)
        finally:
            sb.active -= 1

    async def _relay(
        self,
        sb: _Sandbox,
        sock: socket.socket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        dst_ip, dst_port = _original_dst(sock)
        ip = ipaddress.ip_address(dst_ip)
        policy = sb.policy
        forbidden = _forbidden_target(ip) or await self._host.forbidden(dst_ip)
        verdict = Verdict.DENY if forbidden else policy.ip_verdict(ip)
        head = b""
        name: str | None = None
        if verdict == Verdict.UNKNOWN or (verdict == Verdict.ALLOW and policy.headers):
            head, name = await _peek(reader)
            if verdict == Verdict.UNKNOWN:
                verdict = await self._decide(policy, ip, name)
        if verdict != Verdict.ALLOW:
            self._deny(sb, dst_ip, dst_port, name)
            _reset(writer)
            return
        # Headers go only where a rule names the host and the address dialled is one the name
        # has on the host: a sandbox that sends ``Host: api.example`` to its own server gets
        # nothing.
        inject = (
            name is not None
            and policy.injects_for(name)
            and (head[:1] != b"\x16" or self._ca_dir is not None)
            and ip in await _resolve(name)
        )
        if inject and head[:1] == b"\x16":
            assert name is not None
            await self._intercept(sb, name, dst_ip, dst_port, reader, writer, head)
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(
                    dst_ip, dst_port, limit=2 * CHUNK
                )
        except (OSError, TimeoutError):
            _reset(writer)  # what a direct connection would have seen: refused
            return
        sb.allowed += 1
        try:
            if inject:
                assert name is not None
                rewriter = HttpRewriter(name, policy)
                await _splice(reader, writer, up_reader, up_writer, rewriter.run, head)
                return
            if head:
                up_writer.write(head)
            await _splice(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()

    async def _intercept(
        self,
        sb: _Sandbox,
        name: str,
        dst_ip: str,
        dst_port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        """TLS to a rule's host: terminated here with a leaf of the server's CA, requests
        rewritten, re-originated to the real server (verified, same name)."""
        assert self._ca_dir is not None
        if self._ca is None:
            self._ca = await asyncio.to_thread(EgressCA, self._ca_dir)
            self._upstream_tls = upstream_context()
        assert self._upstream_tls is not None
        ctx = await asyncio.to_thread(self._ca.context_for, name)
        tls = TlsServerStream(ctx, reader, writer, head)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await tls.handshake()
                up_reader, up_writer = await asyncio.open_connection(
                    dst_ip, dst_port, ssl=self._upstream_tls, server_hostname=name,
                    limit=2 * CHUNK,
                )  # fmt: skip
        except (OSError, TimeoutError) as exc:  # ssl.SSLError included: an unverified upstream
            log.info("egress: TLS to %s:%d (%s) of sandbox %s failed: %s", dst_ip, dst_port,
                     name, sb.sandbox_id, exc)  # fmt: skip
            _reset(writer)
            return
        sb.allowed += 1
        rewriter = HttpRewriter(name, sb.policy)
        try:
            await _splice_tls(tls, writer, up_reader, up_writer, rewriter.run)
        finally:
            up_writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await up_writer.wait_closed()

    async def _decide(self, policy: EgressPolicy, ip: IPAddress, name: str | None) -> str:
        if name is None or not valid_name(name):  # no name to go by: the address decides
            return Verdict.ALLOW if policy.ip_allowed(ip) else Verdict.DENY
        if not await self._name_allowed(policy, name):
            return Verdict.DENY
        if policy.ip_allowed(ip):
            return Verdict.ALLOW
        # Allowed by name only: the address dialled must be one the name has on the host.
        return Verdict.ALLOW if ip in await _resolve(name) else Verdict.DENY

    async def _name_allowed(self, policy: EgressPolicy, name: str) -> bool:
        """The policy's verdict on a name the sandbox chose. ``~regex`` entries run on worker
        threads under a deadline: a regex that backtracks without end on a crafted name must
        not stall the proxy; it fails closed (refused)."""
        if not policy.has_regexes:
            return policy.name_allowed(name)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(REGEX_TIMEOUT):
                return await loop.run_in_executor(self._regex_pool, policy.name_allowed, name)
        except TimeoutError:
            log.warning("egress: a ~regex entry took over %.1f s on %r; refused", REGEX_TIMEOUT,
                        name[:80])  # fmt: skip
            return False

    def _deny(self, sb: _Sandbox, ip: str, port: int, name: str | None) -> None:
        sb.denied += 1
        self._denied[sb.sandbox_id] = sb.denied
        log.info(
            "egress denied: sandbox %s to %s:%d%s (%d denied so far)",
            sb.sandbox_id, ip, port, f" ({name})" if name else "", sb.denied,
        )  # fmt: skip


async def _peek(reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
    """The first bytes and the name they carry (None: none within the limits)."""
    head = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PEEK_TIMEOUT
    while True:
        found = sniff_name(head)
        if not isinstance(found, _NeedMore):
            return head, found
        remaining = deadline - loop.time()
        if remaining <= 0 or len(head) >= PEEK_LIMIT:
            return head, None
        try:
            async with asyncio.timeout(remaining):
                chunk = await reader.read(PEEK_LIMIT - len(head))
        except TimeoutError:
            return head, None
        if not chunk:
            return head, None
        head += chunk


async def _resolve(name: str) -> set[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return set()
    return {ipaddress.ip_address(str(info[4][0])) for info in infos}


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0): the sandbox's client fails at once, not on a timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    a_to_b: Forward | None = None,
    head: bytes = b"",
) -> None:
    """Copy both ways until both sides are done (half-closes passed on). ``a_to_b``, when
    given, carries the ``a`` side's bytes (``head`` first) instead of a plain copy."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(CHUNK):
                dst.write(chunk)
                await dst.drain()  # bounded: at most one chunk in flight per direction
        except OSError:
            # A reset on either side ends both: the other direction must not wait for ever.
            a_writer.transport.abort()
            b_writer.transport.abort()
            return
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()

    async def forward(fn: Forward) -> None:
        async def send(data: bytes) -> None:
            b_writer.write(data)
            await b_writer.drain()

        try:
            await fn(Buffered(a_reader.read, head), send)
        except (OSError, HttpError, asyncio.IncompleteReadError):
            # Malformed or hostile framing, or a reset: both sides end, nothing more is sent.
            a_writer.transport.abort()
            b_writer.transport.abort()
            return
        if b_writer.can_write_eof():
            with contextlib.suppress(OSError):
                b_writer.write_eof()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(pump(a_reader, b_writer) if a_to_b is None else forward(a_to_b))
        tg.create_task(pump(b_reader, a_writer))


async def _splice_tls(
    tls: TlsServerStream,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    forward: Forward,
) -> None:
    """Like :func:`_splice`, the sandbox's side being TLS terminated here."""

    def abort() -> None:
        writer.transport.abort()
        up_writer.transport.abort()

    async def to_sandbox() -> None:
        try:
            while chunk := await up_reader.read(CHUNK):
                await tls.send(chunk)
        except (OSError, ssl.SSLError):
            abort()
            return
        writer.close()  # the server is done: so is the sandbox's connection

    async def to_upstream() -> None:
        async def send(data: bytes) -> None:
            up_writer.write(data)
            await up_writer.drain()

        try:
            await forward(Buffered(tls.recv), send)
        except (OSError, ssl.SSLError, HttpError, asyncio.IncompleteReadError):
            abort()
            return
        up_writer.close()  # TLS has no half-close: the sandbox is done, so is the server

    async with asyncio.TaskGroup() as tg:
        tg.create_task(to_sandbox())
        tg.create_task(to_upstream())
