"""``RuncRuntime.connect``: TCP into a sandbox's own network namespace, and nothing else.

One sandbox for the module; services in it are busybox ``nc`` and ``httpd``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.runtime import _netns
from hutch.runtime._interface import ExecSpec, Process, SandboxNotFound, SandboxSpec
from hutch.runtime.images import ImageStore
from hutch.runtime.runc import RuncRuntime
from tests.conftest import TIME_SCALE

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]

QUICK = 10 * TIME_SCALE
HOST_NETNS = os.readlink("/proc/self/ns/net")


@pytest.fixture(scope="module")
async def box(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path
) -> AsyncIterator[tuple[RuncRuntime, str]]:
    """A running busybox sandbox and its runtime."""
    root = tmp_path_factory.mktemp("connect")
    image = ImageStore(root / "images").import_path("local/busybox", busybox_tar)
    runtime = RuncRuntime(root / "data")
    sandbox_id = uuid.uuid4().hex
    await runtime.create(SandboxSpec(id=sandbox_id, hostname="conn-test", image=image))
    try:
        yield runtime, sandbox_id
    finally:
        await runtime.delete(sandbox_id)
        await runtime.aclose()


async def start(runtime: RuncRuntime, sandbox_id: str, argv: list[str]) -> Process:
    return await runtime.exec(sandbox_id, ExecSpec(argv=argv))


async def stop(proc: Process) -> None:
    await proc.kill()
    await asyncio.wait_for(proc.wait(), QUICK)
    await proc.close()


async def connect_when_listening(runtime: RuncRuntime, sandbox_id: str, port: int) -> socket.socket:
    """Connect, retrying while the service inside is still starting (deadline, no sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUICK
    while True:
        try:
            return await runtime.connect(sandbox_id, port)
        except ConnectionRefusedError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_reaches_a_listener_on_the_sandbox_loopback(box: tuple[RuncRuntime, str]) -> None:
    """A socket from connect() talks to a service inside the sandbox, both ways."""
    runtime, sandbox_id = box
    nc = await start(runtime, sandbox_id, ["nc", "-l", "-p", "7000"])
    try:
        sock = await connect_when_listening(runtime, sandbox_id, 7000)
        loop = asyncio.get_running_loop()
        with sock:
            assert not sock.getblocking()
            await loop.sock_sendall(sock, b"to-sandbox\n")
            assert await asyncio.wait_for(nc.stdout.readline(), QUICK) == b"to-sandbox\n"
            assert nc.stdin is not None
            nc.stdin.write(b"to-host\n")
            await nc.stdin.drain()
            assert await asyncio.wait_for(loop.sock_recv(sock, 100), QUICK) == b"to-host\n"
    finally:
        await stop(nc)


async def test_loopback_only_service_inside_is_reachable(box: tuple[RuncRuntime, str]) -> None:
    """A service bound to 127.0.0.1 *inside* the sandbox answers (httpd serving its hostname)."""
    runtime, sandbox_id = box
    httpd = await start(runtime, sandbox_id, ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"])
    try:
        sock = await connect_when_listening(runtime, sandbox_id, 8080)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /hostname HTTP/1.0\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), QUICK)
        writer.close()
        assert reply.startswith(b"HTTP/1.") and reply.endswith(b"\r\n\r\nconn-test\n")
    finally:
        await stop(httpd)


async def test_host_loopback_is_not_reachable(box: tuple[RuncRuntime, str]) -> None:
    """A listener on the host's 127.0.0.1 is refused through the sandbox; nothing reaches it."""
    runtime, sandbox_id = box
    with socket.socket() as host_listener:
        host_listener.bind(("127.0.0.1", 0))
        host_listener.listen()
        host_listener.setblocking(False)
        port = host_listener.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await runtime.connect(sandbox_id, port)
        with pytest.raises(BlockingIOError):
            host_listener.accept()


async def test_unknown_sandbox_and_own_namespace_are_refused(box: tuple[RuncRuntime, str]) -> None:
    """No sandbox: SandboxNotFound. A pid sharing the caller's netns is refused outright."""
    runtime, _ = box
    with pytest.raises(SandboxNotFound):
        await runtime.connect(uuid.uuid4().hex, 80)
    with pytest.raises(_netns.SharedNamespaceError):
        _netns.socket_in_netns(os.getpid())
    with pytest.raises(_netns.SharedNamespaceError):
        await _netns.asocket_in_netns(os.getpid())


async def test_threads_stay_in_the_host_namespace(box: tuple[RuncRuntime, str]) -> None:
    """After many connects (refused and accepted, concurrent), no thread of ours is left in the
    sandbox's netns: the main thread, every thread of the process, new and pooled threads."""
    runtime, sandbox_id = box
    httpd = await start(runtime, sandbox_id, ["httpd", "-f", "-p", "127.0.0.1:8081", "-h", "/etc"])
    try:
        (await connect_when_listening(runtime, sandbox_id, 8081)).close()

        async def one(port: int) -> bool:
            try:
                (await runtime.connect(sandbox_id, port)).close()
            except ConnectionRefusedError:
                return False
            return True

        results = await asyncio.gather(*(one(8081 if i % 2 else 8082) for i in range(200)))
        assert results.count(True) == 100
        # The blocking variant, too.
        pid = runtime.init_pid(sandbox_id)
        _netns.connect_in_netns(pid, "127.0.0.1", 8081, timeout=QUICK).close()
    finally:
        await stop(httpd)

    assert os.readlink("/proc/self/ns/net") == HOST_NETNS
    task_ns = {
        os.readlink(f"/proc/self/task/{tid}/ns/net") for tid in os.listdir("/proc/self/task")
    }
    assert task_ns == {HOST_NETNS}
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(os.readlink("/proc/thread-self/ns/net")))
    thread.start()
    thread.join()
    pooled = await asyncio.gather(
        *(asyncio.to_thread(os.readlink, "/proc/thread-self/ns/net") for _ in range(8))
    )
    assert set(seen) | set(pooled) == {HOST_NETNS}
    sandbox_ns = os.readlink(f"/proc/{runtime.init_pid(sandbox_id)}/ns/net")
    assert sandbox_ns != HOST_NETNS


async def test_cancelled_socket_creation_leaks_nothing(box: tuple[RuncRuntime, str]) -> None:
    """A caller cancelled while the worker thread makes its socket: the socket is closed."""
    runtime, sandbox_id = box
    pid = runtime.init_pid(sandbox_id)
    baseline = len(os.listdir("/proc/self/fd"))
    tasks = [asyncio.create_task(_netns.asocket_in_netns(pid)) for _ in range(50)]
    await asyncio.sleep(0)  # let them start their threads
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The workers finish on their own; poll (with a deadline) until their sockets are closed.
    async with asyncio.timeout(QUICK):
        while len(os.listdir("/proc/self/fd")) > baseline:  # noqa: ASYNC110 - no event for fds
            await asyncio.sleep(0.01)
