"""The sockets ``hutch serve`` listens on give connections without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket

from hutch.cli import _listen


def test_accepted_connections_have_tcp_nodelay() -> None:
    """A connection accepted by asyncio from the server's listening socket has TCP_NODELAY set
    (otherwise answers written in two parts wait for the client's delayed ACK)."""

    async def main() -> int:
        sock = _listen("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            conn = w.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            w.close()

        server = await asyncio.start_server(connected, sock=sock)
        async with server:
            _r, w = await asyncio.open_connection(*sock.getsockname())
            value = await asyncio.wait_for(seen, 5)
            w.close()
        return value

    assert asyncio.run(main()) != 0
