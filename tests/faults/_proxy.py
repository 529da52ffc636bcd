"""A TCP proxy for fault tests: forwards ``127.0.0.1:<port>`` to a target and breaks connections.

The proxy runs its own asyncio loop in a daemon thread, so blocking test code (the sync SDK)
can talk through it while telling it, from the test's thread, to cut every current connection:

* :meth:`FaultProxy.cut` at once;
* :meth:`FaultProxy.cut_at` when the bytes forwarded from the server to the clients (all
  connections together) reach given totals: a cut lands inside whatever was in flight, often
  in the middle of a WebSocket frame;
* a :data:`Rule` that sees every piece of data before it is forwarded and may cut instead
  (e.g. "the first bytes the server answers on an ``/execute/ws`` upgrade").

A cut is abrupt on both halves of every connection: with ``rst=True`` each socket gets
``SO_LINGER`` 0 and is aborted, so the peer sees a TCP reset and anything still buffered is
gone; with ``rst=False`` each socket is closed (what was queued in the proxy is flushed, then
FIN), a peer vanishing without a WebSocket close frame. New connections are accepted as usual
after a cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar

Direction = Literal["up", "down"]  # up: client → server; down: server → client
T = TypeVar("T")

#: Bytes of a connection's first client data kept in :attr:`Connection.head`.
HEAD_BYTES = 4096
_READ_SIZE = 256 * 1024
_LINGER_0 = struct.pack("ii", 1, 0)


class Action(enum.Enum):
    FORWARD = "forward"
    CUT = "cut"  # drop this data and cut every connection


@dataclass
class Connection:
    """One proxied client connection (read by rules on the proxy's thread)."""

    id: int
    #: The first bytes the client sent (request line and headers), up to HEAD_BYTES.
    head: bytes = b""
    #: Bytes forwarded so far, per direction.
    up: int = 0
    down: int = 0
    dead: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def is_exec_websocket(self) -> bool:
        return self.head.startswith(b"GET ") and b"/execute/ws" in self.head.split(b"\r\n")[0]


#: Called with each piece of data before it is forwarded, on the proxy's thread.
Rule = Callable[[Connection, Direction, bytes], Action]


class FaultProxy:
    """``with FaultProxy(target_port) as proxy: ... proxy.port ... proxy.cut()``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._conns: dict[int, Connection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._rule: Rule | None = None
        # cut_at(): remaining downstream totals (ascending) and whether each cut is a reset.
        self._marks: list[tuple[int, bool]] = []
        self._down_total = 0
        #: Counters, for assertions (read them from any thread).
        self.connections = 0
        self.cuts = 0
        self.exec_websockets = 0
        #: Bytes forwarded, over all connections, per direction.
        self.up_bytes = 0
        self.down_bytes = 0

    # -- lifecycle (test thread) ---------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults (test thread) ------------------------------------------------------------------

    def cut(self, *, rst: bool = True) -> int:
        """Cut every current connection now; returns how many there were."""

        async def cut() -> int:
            return self._cut_all(rst)

        return self._call(cut())

    def cut_at(self, marks: Iterable[tuple[int, bool]]) -> None:
        """Cut every connection when the server → client bytes forwarded from now on (over all
        connections) reach each ``(total, rst)`` mark; replaces marks still pending."""

        async def arm() -> None:
            self._down_total = 0
            self._marks = sorted(marks)

        self._call(arm())

    def pending_marks(self) -> int:
        async def count() -> int:
            return len(self._marks)

        return self._call(count())

    def set_rule(self, rule: Rule | None) -> None:
        """Consult ``rule`` for every piece of data from now on (``None``: forward all)."""

        async def install() -> None:
            self._rule = rule

        self._call(install())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the proxy's loop ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all(rst=False)
        # Cut connections end their handlers by themselves; cancel only what is left after that
        # (asyncio logs an error for a cancelled connection handler).
        handlers = set(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=5)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    def _cut_all(self, rst: bool) -> int:
        conns = list(self._conns.values())
        for conn in conns:
            conn.dead = True
            for writer in conn.writers:
                if rst:
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                    writer.transport.abort()
                else:
                    writer.close()
        self._conns.clear()
        self.cuts += 1
        return len(conns)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        conn = Connection(next(self._ids), writers=[c_writer])
        self.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()
            return
        conn.writers.append(s_writer)
        if conn.dead:  # cut while connecting
            s_writer.transport.abort()
            return
        self._conns[conn.id] = conn
        try:
            await asyncio.gather(
                self._pump(conn, "up", c_reader, s_writer),
                self._pump(conn, "down", s_reader, c_writer),
            )
        finally:
            self._conns.pop(conn.id, None)
            for writer in conn.writers:
                writer.close()

    async def _pump(
        self,
        conn: Connection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while not conn.dead:
                data = await reader.read(_READ_SIZE)
                if conn.dead:
                    return
                if not data:
                    # Half-close: pass the EOF on; the other direction may still carry data.
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if direction == "up" and len(conn.head) < HEAD_BYTES:
                    first = not conn.head
                    conn.head += data[: HEAD_BYTES - len(conn.head)]
                    if first and conn.is_exec_websocket():
                        self.exec_websockets += 1
                if self._rule is not None and self._rule(conn, direction, data) is Action.CUT:
                    self._cut_all(rst=True)
                    return
                if direction == "down" and self._marks:
                    mark, rst = self._marks[0]
                    if self._down_total + len(data) >= mark:
                        # Forward up to the mark, then cut (inside a frame, most likely).
                        head = data[: mark - self._down_total]
                        writer.write(head)
                        conn.down += len(head)
                        self.down_bytes += len(head)
                        self._down_total = mark
                        self._marks.pop(0)
                        self._cut_all(rst)
                        return
                    self._down_total += len(data)
                writer.write(data)
                if direction == "up":
                    conn.up += len(data)
                    self.up_bytes += len(data)
                else:
                    conn.down += len(data)
                    self.down_bytes += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            # One side went away: the connection is over for both.
            if not conn.dead:
                conn.dead = True
                for w in conn.writers:
                    w.transport.abort()
