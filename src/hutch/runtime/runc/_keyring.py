"""Kernel keyrings: no sandbox gets one of its own, and none inherits the operator's.

By default runc makes every container (and every ``runc exec``) join a new session keyring, created
from inside the sandbox's user namespace and so charged to the sandbox's host uid. Every sandbox
runs as the same host uid (see _userns), and ``kernel.keys.maxkeys`` (200 by default) caps the keys
one uid may own: past about 200 sandboxes per host, all servers together, every create failed with
"unable to create session key: disk quota exceeded".

Sandboxes cannot use keyrings anyway (the seccomp profile denies ``keyctl``, ``add_key`` and
``request_key``), so containers are started with ``--no-new-keyring`` (it is stored in the
container's config, so ``runc exec`` honours it too) and inherit the session keyring of the process
that ran runc: this server. So that none of the operator's keys (a login session's keyring) is
even reachable that way, the server first joins a fresh, empty, anonymous session keyring of its
own, charged to root (whose quota is ``kernel.keys.root_maxkeys``), one per server thread that runs
runc.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEY_SPEC_SESSION_KEYRING = -3

#: Serials of the session keyrings this process made (one per thread that asked).
_private: set[int] = set()


class KeyringError(Exception):
    pass


def _keyctl(op: int, arg2: int, arg3: int = 0) -> int:
    if _SYS_KEYCTL is None:
        raise KeyringError(f"no keyctl syscall number for {os.uname().machine}")
    res = int(
        _libc.syscall(_SYS_KEYCTL, ctypes.c_long(op), ctypes.c_long(arg2), ctypes.c_long(arg3))
    )
    if res < 0:
        raise KeyringError(f"keyctl: {os.strerror(ctypes.get_errno())}")
    return res


def session_keyring() -> int:
    """The serial of the calling thread's session keyring (0 when it has none yet)."""
    try:
        return _keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
    except KeyringError:
        return 0


def join_private_session() -> int:
    """Give the calling thread a new, empty, anonymous session keyring, unless it has one; its
    serial.

    Credentials are per thread, so this is asked before each runc is started; the answer is one
    ``keyctl`` read once the thread has its keyring.
    """
    current = session_keyring()
    if current in _private:
        return current
    # A NULL name: an anonymous keyring, which nobody can join by name.
    serial = _keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0)
    _private.add(serial)
    return serial
