"""TCP sockets inside another process's network namespace (the tunnel's dial, spec §6.4 step 4).

``setns(2)`` moves only the calling *thread* into a namespace, and a socket belongs for its whole
life to the network namespace it was created in. So a socket for a sandbox is made like this: a
fresh, short-lived :class:`threading.Thread` (never a pooled one: a pooled thread left behind in a
sandbox's namespace would later open the server's own sockets there) opens its own
``/proc/thread-self/ns/net`` and ``/proc/<pid>/ns/net``, switches to the sandbox's, creates the
socket, switches back and exits. If switching back fails, the thread does nothing more than
report and exit, so no code ever runs in a namespace it was not meant for. Connecting happens
afterwards, from the caller's thread: ``connect()`` goes by the socket's namespace, not the
thread's.

A pid whose network namespace is the caller's own (a reused pid, a process without a namespace of
its own) is refused: a tunnel must never reach the host's loopback by accident.

Python 3.11 has no ``os.setns``, hence ctypes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Final

__all__ = ["aconnect_in_netns", "asocket_in_netns", "connect_in_netns", "socket_in_netns"]

#: ``CLONE_NEWNET`` from <sched.h>: the namespace type ``setns`` must find behind the fd.
CLONE_NEWNET: Final = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("hutch.runtime")


class SharedNamespaceError(PermissionError):
    """The target process shares the caller's network namespace; refused on purpose."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


@dataclass
class _Outcome:
    sock: socket.socket | None = None
    error: BaseException | None = None
    #: True when the worker could not return to its own namespace (it then exited at once).
    stranded: bool = False


def _make_socket(pid: int, family: int, kind: int, outcome: _Outcome) -> None:
    """Body of the short-lived worker thread; reports through ``outcome``, never raises."""
    fds: list[int] = []
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(home)
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(target)
        home_st, target_st = os.fstat(home), os.fstat(target)
        if (home_st.st_dev, home_st.st_ino) == (target_st.st_dev, target_st.st_ino):
            raise SharedNamespaceError(
                f"process {pid} shares this server's network namespace; refusing to dial "
                "the host's loopback through it"
            )
        _setns(target)
        try:
            outcome.sock = socket.socket(family, kind)
        except OSError as exc:
            outcome.error = exc
        try:
            _setns(home)
        except OSError as exc:
            # This thread now lives in the sandbox's namespace: it must run nothing else. The
            # socket is fine (its namespace is the one intended); only report and exit.
            outcome.stranded = True
            outcome.error = outcome.error or exc
    except BaseException as exc:  # reported to the caller, which re-raises it
        outcome.error = exc
    finally:
        for fd in fds:
            os.close(fd)


def _start_worker(pid: int, family: int, kind: int, outcome: _Outcome) -> threading.Thread:
    thread = threading.Thread(
        target=_make_socket, args=(pid, family, kind, outcome), name=f"netns-{pid}", daemon=True
    )
    thread.start()
    return thread


def _result(outcome: _Outcome) -> socket.socket:
    if outcome.stranded:
        # Loud, because it means setns misbehaves; the thread that hit it has exited.
        log.error("a netns worker thread could not return to the host namespace: %s", outcome.error)
    if outcome.sock is None:
        raise outcome.error or OSError("socket creation in the target namespace failed")
    return outcome.sock


def socket_in_netns(
    pid: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new, unconnected socket in the network namespace of ``pid`` (blocking; quick).

    Raises:
        FileNotFoundError: ``pid`` does not exist (its ``/proc`` entry is gone).
        SharedNamespaceError: ``pid`` is in the caller's own network namespace.
        OSError: ``setns`` or ``socket`` failed (``EPERM`` without ``CAP_SYS_ADMIN``).
    """
    outcome = _Outcome()
    _start_worker(pid, family, kind, outcome).join()
    return _result(outcome)


async def asocket_in_netns(
    pid: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """:func:`socket_in_netns` without blocking the event loop (the worker reports back).

    If the caller is cancelled meanwhile, the socket the worker makes is closed.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    outcome = _Outcome()

    def report() -> None:
        if done.cancelled():
            if outcome.sock is not None:
                outcome.sock.close()
        else:
            done.set_result(None)

    def work() -> None:
        _make_socket(pid, family, kind, outcome)
        try:
            loop.call_soon_threadsafe(report)
        except RuntimeError:  # the loop closed meanwhile: nobody will take the socket
            if outcome.sock is not None:
                outcome.sock.close()

    threading.Thread(target=work, name=f"netns-{pid}", daemon=True).start()
    await done
    return _result(outcome)


def connect_in_netns(pid: int, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP socket in the network namespace of ``pid``, connected to ``host:port`` there.

    Blocking (at most ``timeout`` seconds for the connect). The socket is returned in blocking
    mode with that timeout set; the caller closes it.

    Raises:
        ConnectionRefusedError: Nothing listens there (inside that namespace).
        TimeoutError: The connect took longer than ``timeout``.
        OSError: See :func:`socket_in_netns`.
    """
    sock = socket_in_netns(pid)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def aconnect_in_netns(pid: int, host: str, port: int, timeout: float) -> socket.socket:
    """:func:`connect_in_netns` for asyncio: the socket is returned non-blocking."""
    sock = await asocket_in_netns(pid)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock
