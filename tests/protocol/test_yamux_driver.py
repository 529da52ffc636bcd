"""The shared yamux driver: two drivers talking over an in-memory message pipe."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from hutch.protocol import _yamux_driver
from hutch.protocol._yamux import INITIAL_WINDOW, Flag, FrameType, encode_header
from hutch.protocol._yamux_driver import (
    Stream,
    StreamHandler,
    TransportClosed,
    YamuxDriver,
    splice,
)

PROMPT = 10.0


class _Pipe:
    """One end of an in-memory message pipe. Unbounded: the yamux windows are what bound the
    bytes in flight, which is what these tests prove."""

    def __init__(self, inbox: asyncio.Queue[bytes | None], outbox: asyncio.Queue[bytes | None]):
        self.inbox = inbox
        self.outbox = outbox
        self.closed = False
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise TransportClosed
        self.sent.append(data)
        await self.outbox.put(data)

    async def recv(self) -> bytes:
        data = await self.inbox.get()
        if data is None:
            self.inbox.put_nowait(None)  # every later recv sees the close too
            raise TransportClosed
        return data

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


def pipe_pair() -> tuple[_Pipe, _Pipe]:
    a: asyncio.Queue[bytes | None] = asyncio.Queue()
    b: asyncio.Queue[bytes | None] = asyncio.Queue()
    return _Pipe(a, b), _Pipe(b, a)


class Pair:
    """A client driver and a server driver on one pipe, each run by a task of the test."""

    def __init__(self, on_stream: StreamHandler | None) -> None:
        self.client_pipe, self.server_pipe = pipe_pair()
        self.client = YamuxDriver(self.client_pipe, client=True)
        self.server_handler = on_stream
        self.server = YamuxDriver(self.server_pipe, client=False, on_stream=on_stream)
        self.tasks = [
            asyncio.create_task(self.client.run()),
            asyncio.create_task(self.server.run()),
        ]

    async def aclose(self) -> None:
        await self.client.aclose(PROMPT)
        await self.server.aclose(PROMPT)
        async with asyncio.timeout(PROMPT):
            await asyncio.gather(*self.tasks)


async def read_to_eof(stream: Stream) -> bytes:
    parts: list[bytes] = []
    while True:
        await stream.wait_readable()
        if not stream.inbox_bytes:
            return b"".join(parts)
        data = stream.take()
        parts.append(data)
        stream.consumed(len(data))


async def echo(stream: Stream) -> None:
    """Echo every byte back, then FIN after the peer's FIN."""
    while True:
        await stream.wait_readable()
        if not stream.inbox_bytes:
            stream.close()
            return
        data = stream.take()
        await stream.send_all(data)
        stream.consumed(len(data))


class Hang:
    """A handler that reports its stream and then never returns (until cancelled)."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[Stream] = asyncio.Queue()

    async def __call__(self, stream: Stream) -> None:
        await self.started.put(stream)
        await asyncio.Event().wait()


async def open_hanging(pair: Pair) -> tuple[Stream, Stream]:
    """Open a stream to a :class:`Hang` handler: this side's end and the handler's."""
    assert isinstance(pair.server_handler, Hang)
    stream = pair.client.open_stream()
    await stream.send_all(b"hi")
    return stream, await within(pair.server_handler.started.get())


@contextlib.asynccontextmanager
async def pair_of(on_stream: StreamHandler | None = echo) -> AsyncIterator[Pair]:
    pair = Pair(on_stream)
    try:
        yield pair
    finally:
        await pair.aclose()


async def within(coro: Coroutine[Any, Any, Any]) -> Any:
    async with asyncio.timeout(PROMPT):
        return await coro


async def test_open_echo_and_half_close() -> None:
    """A stream opened by the client reaches the server's handler; bytes echo back; the client's
    FIN is passed on and the answer still arrives after it."""
    async with pair_of() as pair:
        stream = pair.client.open_stream()
        payload = bytes(range(256)) * 4096  # 1 MiB: several windows' worth

        async def send() -> None:
            await stream.send_all(payload)
            stream.close()

        # Read while sending, as a TCP client must: the echo stalls once its window is full.
        _, reply = await within(asyncio.gather(send(), read_to_eof(stream)))
        assert reply == payload
        stream.forget()
        assert pair.client.streams == {}


async def test_many_streams_at_once() -> None:
    """Concurrent streams are independent: each gets its own bytes back."""
    async with pair_of() as pair:

        async def one(i: int) -> bytes:
            stream = pair.client.open_stream()
            await stream.send_all(str(i).encode() * 10_000)  # within one window
            stream.close()
            try:
                return await read_to_eof(stream)
            finally:
                stream.forget()

        replies = await within(asyncio.gather(*(one(i) for i in range(20))))
        assert replies == [str(i).encode() * 10_000 for i in range(20)]


async def test_window_exhaustion_backpressure() -> None:
    """A handler that does not consume stalls the sender at exactly one window; consuming
    re-opens it."""
    reached: asyncio.Queue[Stream] = asyncio.Queue()
    release = asyncio.Event()

    async def slow(stream: Stream) -> None:
        await reached.put(stream)
        await release.wait()
        assert await read_to_eof(stream) == b"x" * (INITIAL_WINDOW * 3)

    async with pair_of(slow) as pair:
        stream = pair.client.open_stream()
        sender = asyncio.create_task(stream.send_all(b"x" * (INITIAL_WINDOW * 3)))
        peer = await within(reached.get())
        while peer.inbox_bytes < INITIAL_WINDOW:
            await within(peer.wait_changed())
        # The whole window arrived and nothing more can: the sender waits for credit.
        assert pair.client.session.send_window(stream.stream_id) == 0
        assert not sender.done()
        assert peer.inbox_bytes == INITIAL_WINDOW
        release.set()
        await within(sender)
        stream.close()
        await within(peer.task)  # type: ignore[arg-type]


async def test_reset_by_the_handler_reaches_the_opener() -> None:
    """A handler that returns without closing resets the stream; the opener's waits raise."""

    async def refuse(stream: Stream) -> None:
        return

    async with pair_of(refuse) as pair:
        stream = pair.client.open_stream()
        with pytest.raises(ConnectionResetError):
            await within(stream.wait_readable())
        assert stream.stream_id not in pair.client.streams
        # The session lives on: another stream works.
        assert not pair.client.dead


async def test_reset_by_the_opener_cancels_the_handler() -> None:
    """An RST from the opener cancels the handler task that serves the stream."""
    async with pair_of(Hang()) as pair:
        stream, peer = await open_hanging(pair)
        stream.forget()
        assert peer.task is not None
        with pytest.raises(asyncio.CancelledError):
            await within(peer.task)
        assert peer.stream_id not in pair.server.streams


async def test_splice_bridges_a_socket() -> None:
    """splice copies both ways between a stream and a TCP socket, half-close included."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data[::-1])
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def to_socket(stream: Stream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await splice(stream, reader, writer, read_chunk=INITIAL_WINDOW) is None

    try:
        async with pair_of(to_socket) as pair:
            stream = pair.client.open_stream()
            await within(stream.send_all(b"abcdef" * 50_000))
            stream.close()
            assert await within(read_to_eof(stream)) == (b"abcdef" * 50_000)[::-1]
    finally:
        server.close()
        await server.wait_closed()


async def test_go_away_ends_the_peer_and_resets_its_streams() -> None:
    """aclose sends GO_AWAY: the peer is dead, its handlers are cancelled, its run returns."""
    async with pair_of(Hang()) as pair:
        stream, peer = await open_hanging(pair)
        await within(pair.client.aclose(PROMPT))
        assert pair.client.dead and stream.reset
        await within(pair.tasks[1])  # the server's run returned
        assert pair.server.dead and peer.reset
        assert peer.task is not None and peer.task.cancelled()
        with pytest.raises(Exception, match="ended"):
            pair.client.open_stream()


async def test_peer_gone_kills_every_stream() -> None:
    """The transport closing under a driver resets its streams and ends its run."""
    async with pair_of(None) as pair:
        stream = pair.client.open_stream()
        waiter = asyncio.create_task(stream.wait_readable())
        await pair.server_pipe.close()  # the server vanishes without a GO_AWAY
        with pytest.raises(ConnectionResetError):
            await within(waiter)
        await within(pair.tasks[0])
        assert pair.client.dead


async def test_streams_without_a_handler_are_reset() -> None:
    """A side without on_stream refuses the peer's streams with RST."""
    async with pair_of(None) as pair:
        stream = pair.server.open_stream()
        with pytest.raises(ConnectionResetError):
            await within(stream.wait_readable())


async def test_protocol_error_ends_the_session() -> None:
    """Garbage from the peer ends the session with GO_AWAY and stops the driver."""
    async with pair_of() as pair:
        # A 12-byte header of yamux version 9, as if the client had sent it.
        await pair.client_pipe.send(b"\x09" + bytes(11))
        await within(pair.tasks[1])
        assert pair.server.dead and pair.server.session.go_away_sent


async def test_output_is_split_into_bounded_messages() -> None:
    """No message handed to the transport exceeds max_message."""
    async with pair_of() as pair:
        stream = pair.client.open_stream()

        async def send() -> None:
            await stream.send_all(b"y" * (3 * INITIAL_WINDOW))
            stream.close()

        _, reply = await within(asyncio.gather(send(), read_to_eof(stream)))
        assert len(reply) == 3 * INITIAL_WINDOW
        limit = _yamux_driver.MAX_MESSAGE
        assert max(len(m) for m in pair.client_pipe.sent + pair.server_pipe.sent) <= limit


def test_the_driver_imports_no_transport_library() -> None:
    """The driver stays transport-agnostic: no websockets, Starlette, FastAPI or httpx."""
    tree = ast.parse(inspect.getsource(_yamux_driver))
    names = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not names & {"websockets", "starlette", "fastapi", "httpx"}


class _StuckPeer:
    """A transport whose peer never takes a message: ``send`` waits until ``unstick``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.gate = asyncio.Event()

    async def send(self, data: bytes) -> None:
        await self.gate.wait()

    async def recv(self) -> bytes:
        data = await self.inbox.get()
        if data is None:
            raise TransportClosed
        return data

    async def close(self) -> None:
        self.gate.set()
        self.inbox.put_nowait(None)


async def test_a_peer_that_takes_nothing_is_dropped_after_send_timeout() -> None:
    """With send_timeout set, a message the transport does not take in time ends the session."""
    driver = YamuxDriver(_StuckPeer(), client=True, send_timeout=0.05)
    run = asyncio.create_task(driver.run())
    stream = driver.open_stream()  # queues the SYN, which the stuck peer never takes
    await within(run)
    assert driver.dead and stream.reset


async def yield_to_others() -> None:
    """Let every other task run until it waits on something (event-loop turns, no wall time)."""
    for _ in range(1000):
        await asyncio.sleep(0)


async def test_the_reader_pauses_while_control_replies_pile_up() -> None:
    """Input that only makes control replies (PING ACKs) stops being read once the replies
    exceed output_limit, so a peer that does not read cannot grow this side's output."""
    transport = _StuckPeer()
    limit = 12 * 100
    driver = YamuxDriver(transport, client=False, output_limit=limit)
    run = asyncio.create_task(driver.run())
    ping = encode_header(FrameType.PING, Flag.SYN, 0, 7)
    for _ in range(50):
        transport.inbox.put_nowait(ping * 10)  # 10 PINGs a message: 120 bytes of replies
    await yield_to_others()
    # The queued replies went past the limit by less than one message's worth, and the reader
    # stopped there: input is left unread, and stays so.
    assert limit < driver.session.pending_output_bytes <= limit + 120
    unread = transport.inbox.qsize()
    assert unread > 0
    await yield_to_others()
    assert transport.inbox.qsize() == unread
    transport.gate.set()  # the peer reads again: everything is answered
    await yield_to_others()
    assert transport.inbox.qsize() == 0 and driver.session.pending_output_bytes == 0
    await within(driver.aclose(PROMPT))
    await within(run)
