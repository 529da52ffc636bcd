"""TCP tunnels (spec §6) against a real server and real sandboxes: through the hutch SDK, and
through a raw WebSocket speaking yamux by hand for the bad input of issue 4.

Services run in one busybox sandbox for the module: ``httpd`` bound to the sandbox's 127.0.0.1
(port 8080, serving its hostname and a 4 MiB file) and an echo (``nc -ll -p 7000 -e cat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from hutch import AsyncSandboxClient, Sandbox, SandboxClient, SandboxConnectionError
from hutch.client._async_tunnel import AsyncTunnel
from hutch.client._sync_tunnel import Tunnel
from tests.conftest import TIME_SCALE, Server, free_port, wait_until

root = pytest.mark.root
MiB = 1024 * 1024
PROMPT = 10 * TIME_SCALE
WINDOW = 256 * 1024
HTTP, ECHO = 8080, 7000

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """A sandbox running the module's services."""
    with client.sandbox(bb_template) as sb:
        sb.run(
            "mkdir -p /www && hostname > /www/hostname"
            " && dd if=/dev/zero of=/www/big bs=1M count=4 2>/dev/null"
            " && httpd -p 127.0.0.1:8080 -h /www"
        )
        sb.run(f"nc -ll -p {ECHO} -e /bin/cat </dev/null >/dev/null 2>&1 &")
        assert wait_until(lambda: _listening(sb, HTTP, ECHO), PROMPT)
        yield sb


def _listening(sb: Sandbox, *ports: int) -> bool:
    out = sb.run("netstat -ltn").stdout
    return all(f":{port} " in out for port in ports)


def recv_all(sock: socket.socket) -> bytes:
    sock.settimeout(PROMPT)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def http_get(port: int, path: str) -> bytes:
    """The body of ``GET path`` from 127.0.0.1:port (HTTP/1.0: the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=PROMPT) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        reply = recv_all(s)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


def server_sockets_in(server: Server, sb: Sandbox) -> int:
    """Sockets the server process holds in the sandbox's network namespace (its dials)."""
    assert sb.id is not None
    init = int((server.data_dir / "sandboxes" / sb.id / "init.pid").read_text())
    inside: set[str] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{init}/net/{table}").read_text().splitlines()[1:]:
            inside.add(line.split()[9])
    held: set[str] = set()
    fd_dir = f"/proc/{server.proc.pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            held.add(link[8:-1])
    return len(held & (inside - {"0"}))


class Frame(NamedTuple):
    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes


DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
HEADER = struct.Struct(">BBHII")


def frame(kind: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(0, kind, flags, stream_id, length) + payload


def data(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return frame(DATA, flags, stream_id, len(payload), payload)


def syn(stream_id: int) -> bytes:
    return frame(WINDOW_UPDATE, SYN, stream_id, 0)


class RawTunnel:
    """A WebSocket to ``/tunnel`` speaking yamux by hand (this test's own frame parser)."""

    def __init__(self, sb: Sandbox, key: str) -> None:
        from websockets.sync.client import connect

        assert sb.dataplane_url is not None
        url = sb.dataplane_url.replace("http://", "ws://") + "/tunnel"
        # Entered by hand: websockets 17.1 deprecates a bare sync connect().
        self.ws = connect(url, additional_headers={"X-Api-Key": key}, compression=None).__enter__()
        self.buf = b""
        self.frames: list[Frame] = []
        self.largest_message = 0

    def send(self, *parts: bytes) -> None:
        self.ws.send(b"".join(parts))

    def read_until(self, done: Callable[[list[Frame]], bool]) -> list[Frame]:
        deadline = time.monotonic() + PROMPT
        while not done(self.frames):
            message = self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            assert isinstance(message, bytes)
            self.largest_message = max(self.largest_message, len(message))
            self.buf += message
            while len(self.buf) >= 12:
                _v, kind, flags, sid, length = HEADER.unpack_from(self.buf)
                size = 12 + (length if kind == DATA else 0)
                if len(self.buf) < size:
                    break
                self.frames.append(Frame(kind, flags, sid, length, self.buf[12:size]))
                self.buf = self.buf[size:]
        return self.frames

    def stream_bytes(self, stream_id: int) -> bytes:
        return b"".join(
            f.payload for f in self.frames if f.type == DATA and f.stream_id == stream_id
        )

    def ping(self, opaque: int) -> None:
        """Round trip a PING: everything the server queued before the answer has arrived."""
        self.send(frame(PING, SYN, 0, opaque))
        self.read_until(lambda fs: Frame(PING, ACK, 0, opaque, b"") in fs)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def raw(server: Server, box: Sandbox) -> Iterator[RawTunnel]:
    tunnel = RawTunnel(box, server.key)
    try:
        yield tunnel
    finally:
        tunnel.close()


# -- through the SDK ---------------------------------------------------------------------------


@root
def test_loopback_service_inside_is_reachable(box: Sandbox) -> None:
    """A service bound only to the sandbox's 127.0.0.1 answers through sb.tunnel(); port 0
    picks a free local port, and an explicit local port is used as given."""
    with box.tunnel(HTTP) as t:
        assert t.remote_port == HTTP and t.local_port not in (0, HTTP)
        assert http_get(t.local_port, "/hostname") == f"{box.name}\n".encode()
    wanted = free_port()
    with box.tunnel(remote_port=HTTP, local_port=wanted) as t:
        assert t.local_port == wanted
        assert http_get(wanted, "/hostname") == f"{box.name}\n".encode()
    assert t.closed


@root
def test_host_loopback_is_not_reachable(box: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    """A listener on the host's 127.0.0.1 is not reached: the local connection is closed and
    the refusal (status 2) logged; the tunnel keeps serving."""
    caplog.set_level(logging.WARNING, logger="hutch.client")
    with socket.socket() as host_listener:
        host_listener.bind(("127.0.0.1", 0))
        host_listener.listen()
        host_listener.setblocking(False)
        port = host_listener.getsockname()[1]
        with box.tunnel(port) as t:
            with socket.create_connection(("127.0.0.1", t.local_port), timeout=PROMPT) as s:
                s.sendall(b"hello?")
                assert recv_all(s) == b""
            with pytest.raises(BlockingIOError):
                host_listener.accept()
            assert wait_until(lambda: "nothing listens on 127.0.0.1" in caplog.text, PROMPT)


@root
def test_three_concurrent_64_mib_echo_transfers(box: Sandbox) -> None:
    """Three streams of 64 MiB each through one tunnel to an echo come back intact (sha256)."""
    size = 64 * MiB
    results: dict[int, tuple[str, str, int]] = {}
    errors: list[BaseException] = []

    def transfer(t: Tunnel, i: int) -> None:
        try:
            block = os.urandom(MiB)
            sent = hashlib.sha256()
            got = hashlib.sha256()
            with socket.create_connection(("127.0.0.1", t.local_port), timeout=PROMPT) as s:

                def send() -> None:
                    for n in range(size // MiB):
                        chunk = bytes([n & 0xFF, i]) + block[2:]
                        s.sendall(chunk)
                        sent.update(chunk)
                    s.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send)
                sender.start()
                count = 0
                while chunk := s.recv(MiB):
                    got.update(chunk)
                    count += len(chunk)
                sender.join()
            results[i] = (sent.hexdigest(), got.hexdigest(), count)
        except BaseException as exc:
            errors.append(exc)

    with box.tunnel(ECHO) as t:
        threads = [threading.Thread(target=transfer, args=(t, i)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert len(results) == 3
    for sent, got, count in results.values():
        assert (got, count) == (sent, size)


@root
def test_closing_the_tunnel_frees_its_streams(server: Server, box: Sandbox) -> None:
    """Closing a tunnel ends its connections on both sides: the server closes every socket it
    dialled into the sandbox."""
    assert wait_until(lambda: server_sockets_in(server, box) == 0, PROMPT)
    with box.tunnel(ECHO) as t:
        conns = [socket.create_connection(("127.0.0.1", t.local_port)) for _ in range(4)]
        for i, c in enumerate(conns):
            c.settimeout(PROMPT)
            c.sendall(b"ping %d" % i)
            assert c.recv(100) == b"ping %d" % i
        assert server_sockets_in(server, box) == 4
    for c in conns:
        # An abort (ConnectionResetError) is as good an end as a FIN here.
        with c, contextlib.suppress(ConnectionResetError):
            assert c.recv(100) == b""
    assert wait_until(lambda: server_sockets_in(server, box) == 0, PROMPT)


@root
def test_refused_upgrades_raise_sandbox_connection_error(
    server: Server, client: SandboxClient, box: Sandbox
) -> None:
    """A wrong key or an unknown sandbox refuses the upgrade: SandboxConnectionError, with the
    server's status, from tunnel() itself (the WebSocket opens before the port is bound)."""
    assert box.dataplane_url is not None
    with server.client(api_key="wrong-key") as bad:
        unauthorised = Sandbox.from_dict(
            {"name": box.name, "dataplane_url": box.dataplane_url}, client=bad
        )
        with pytest.raises(SandboxConnectionError, match="HTTP 401"):
            unauthorised.tunnel(HTTP)
    gone = Sandbox.from_dict(
        {"name": "gone", "dataplane_url": box.dataplane_url.rsplit("/", 1)[0] + "/nope"},
        client=client,
    )
    with pytest.raises(SandboxConnectionError, match="HTTP 404"):
        gone.tunnel(HTTP)


@root
async def test_async_tunnels_at_once_and_reconnect(server: Server, box: Sandbox) -> None:
    """The async SDK: two tunnels open at once; after the session dies, the next connection
    opens a new one; with max_reconnects=0 it is dropped instead."""
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as client:
        sb = await client.get_sandbox(box.name)
        async with await sb.tunnel(HTTP) as web, await sb.tunnel(ECHO) as echo:

            async def get() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", web.local_port)
                writer.write(b"GET /hostname HTTP/1.0\r\n\r\n")
                reply = await asyncio.wait_for(reader.read(), PROMPT)
                writer.close()
                return reply.partition(b"\r\n\r\n")[2]

            async def echo_once(payload: bytes) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", echo.local_port)
                writer.write(payload)
                writer.write_eof()
                reply = await asyncio.wait_for(reader.read(), PROMPT)
                writer.close()
                return reply

            replies = await asyncio.gather(*(get() for _ in range(50)), echo_once(b"x" * 100_000))
            assert replies[:50] == [f"{box.name}\n".encode()] * 50
            assert replies[50] == b"x" * 100_000

            # Kill the session under the tunnel (as a network loss would).
            first = web._conn
            assert first is not None
            await first.ws.close()
            for _ in range(int(PROMPT / 0.01)):
                if first.dead:
                    break
                await asyncio.sleep(0.01)
            assert first.dead
            assert await get() == f"{box.name}\n".encode()
            assert web._conn is not first and web._conn is not None and not web._conn.dead

        async with await sb.tunnel(HTTP, max_reconnects=0) as once:
            assert once._conn is not None
            await once._conn.ws.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", once.local_port)
            writer.write(b"GET /hostname HTTP/1.0\r\n\r\n")
            # Closed unanswered: a FIN, or an RST since the request was never read.
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), PROMPT) == b""
            writer.close()


# -- bad input on a raw WebSocket --------------------------------------------------------------


@root
def test_connect_header_statuses(raw: RawTunnel, box: Sandbox) -> None:
    """Port 0 → 1, header version 2 → 3, nothing listening → 2, each followed by FIN; a header
    split across frames works (0, then the service's bytes)."""
    raw.send(
        syn(1),
        data(1, b"\x01\x00\x00"),
        syn(3),
        data(3, b"\x02\x1f\x90"),
        syn(5),
        data(5, b"\x01\x00\x01"),
        syn(7),
        data(7, b"\x01"),
    )
    raw.send(data(7, b"\x1f\x90" + b"GET /hostname HTTP/1.0\r\n\r\n"))
    fins = {1, 3, 5, 7}

    def all_ended(frames: list[Frame]) -> bool:
        return fins <= {f.stream_id for f in frames if f.flags & FIN}

    raw.read_until(all_ended)
    assert raw.stream_bytes(1) == b"\x01"
    assert raw.stream_bytes(3) == b"\x03"
    assert raw.stream_bytes(5) == b"\x02"
    reply = raw.stream_bytes(7)
    assert reply[:1] == b"\x00" and reply.endswith(f"\r\n\r\n{box.name}\n".encode())
    acks = {f.stream_id for f in raw.frames if f.type == WINDOW_UPDATE and f.flags & ACK}
    assert acks == {1, 3, 5, 7}
    assert not any(f.flags & RST for f in raw.frames)


@root
def test_unknown_streams_get_rst_and_the_session_lives(raw: RawTunnel) -> None:
    """DATA and WINDOW_UPDATE for streams never opened are answered with RST; PING still works."""
    raw.send(data(41, b"stray"), frame(WINDOW_UPDATE, 0, 43, 1000))
    raw.read_until(lambda fs: {41, 43} <= {f.stream_id for f in fs if f.flags & RST})
    raw.ping(12345)
    assert not any(f.type == GO_AWAY for f in raw.frames)


@root
def test_window_overrun_ends_the_session_with_go_away(
    raw: RawTunnel, box: Sandbox, server: Server
) -> None:
    """More DATA than the window grants is a protocol error: GO_AWAY(1), then the server closes
    the WebSocket. Other tunnels are unaffected."""
    from websockets.exceptions import ConnectionClosed

    # Two bytes of an unfinished header stay unconsumed, so the window left is 256 KiB - 2.
    raw.send(syn(1), data(1, b"\x01\x1f"))
    raw.send(data(1, bytes(WINDOW - 1)))
    raw.read_until(lambda fs: any(f.type == GO_AWAY for f in fs))
    assert [f.length for f in raw.frames if f.type == GO_AWAY] == [1]
    with pytest.raises(ConnectionClosed):
        raw.read_until(lambda fs: False)
    with box.tunnel(HTTP) as t:
        assert http_get(t.local_port, "/hostname") == f"{box.name}\n".encode()


@root
def test_thousands_of_syns_are_bounded(raw: RawTunnel, box: Sandbox) -> None:
    """2000 SYNs at once: 256 streams are admitted (ACK), the rest refused with RST; another
    tunnel is served meanwhile."""
    raw.send(*(syn(2 * i + 1) for i in range(2000)))
    with box.tunnel(HTTP) as t:
        assert http_get(t.local_port, "/hostname") == f"{box.name}\n".encode()

    def answered(frames: list[Frame]) -> bool:
        return len({f.stream_id for f in frames if f.type == WINDOW_UPDATE}) == 2000

    raw.read_until(answered)
    acks = [f for f in raw.frames if f.flags & ACK]
    rsts = [f for f in raw.frames if f.flags & RST]
    assert (len(acks), len(rsts)) == (256, 1744)
    raw.ping(1)


@root
def test_client_that_never_reads_stalls_only_its_stream(raw: RawTunnel, box: Sandbox) -> None:
    """A client that grants no window gets exactly 256 KiB (status byte included), then exactly
    what it grants; another tunnel is served meanwhile; no message exceeds 1 MiB."""
    raw.send(syn(1), data(1, b"\x01\x1f\x90" + b"GET /big HTTP/1.0\r\n\r\n"))
    raw.read_until(lambda fs: len(raw.stream_bytes(1)) >= WINDOW)
    with box.tunnel(HTTP) as t:
        assert http_get(t.local_port, "/hostname") == f"{box.name}\n".encode()
    raw.ping(2)
    assert len(raw.stream_bytes(1)) == WINDOW
    raw.send(frame(WINDOW_UPDATE, 0, 1, 1000))
    raw.read_until(lambda fs: len(raw.stream_bytes(1)) >= WINDOW + 1000)
    raw.ping(3)
    assert len(raw.stream_bytes(1)) == WINDOW + 1000
    assert raw.largest_message <= MiB


@root
def test_upgrade_refused_without_key(box: Sandbox) -> None:
    """A raw upgrade without X-Api-Key is refused with 401 before any yamux byte."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        RawTunnel(box, "")
    assert info.value.response.status_code == 401


# -- SDK surface, no server --------------------------------------------------------------------


def test_tunnel_classes_have_the_same_api() -> None:
    """Tunnel and AsyncTunnel offer the same public members (aclose ↔ close)."""

    def members(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")}

    assert members(Tunnel) == {"close" if n == "aclose" else n for n in members(AsyncTunnel)}
    assert inspect.signature(Tunnel.open).parameters.keys() == (
        inspect.signature(AsyncTunnel.open).parameters.keys()
    )


async def test_arguments_and_missing_websockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ports out of range raise ValueError; without websockets, ImportError says what to do."""
    url = "http://127.0.0.1:9/dp/x"
    for bad in ({"remote_port": 0}, {"remote_port": 70000}, {"local_port": -1}):
        kwargs = {"remote_port": 80, **bad}
        port = kwargs.pop("remote_port")
        with pytest.raises(ValueError):
            await AsyncTunnel.open(url, {}, port, **kwargs)
        with pytest.raises(ValueError):
            Tunnel.open(url, {}, port, **kwargs)
    monkeypatch.setitem(sys.modules, "websockets.asyncio.client", None)
    with pytest.raises(ImportError, match="TCP tunnel requires the 'websockets' package"):
        await AsyncTunnel.open(url, {}, 80)
    with pytest.raises(ImportError, match="TCP tunnel requires the 'websockets' package"):
        Tunnel.open(url, {}, 80)
