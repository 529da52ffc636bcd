"""Mounting a sandbox's overlay root filesystem, whatever the number of image layers.

mount(2) passes options in one page, so ``lowerdir=<path>:<path>:...`` with the store's long
layer paths (~100 bytes each) stops at about 35 layers. The new mount API (``fsopen``,
``fsconfig``, ``fsmount``, ``move_mount``) takes each layer as its own ``lowerdir+`` parameter
(Linux 6.8+), so there is no such limit below overlayfs' own (500 layers). On older kernels the
classic mount(2) is used, with a clear error if the options do not fit.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

from hutch.runtime._interface import RuntimeError_
from hutch.runtime.runc import _mountapi as _m

__all__ = ["mount_overlay"]

_libc = _m.libc
_syscall = _m.syscall
_SYS_MOVE_MOUNT = _m.SYS_MOVE_MOUNT
_SYS_FSOPEN = _m.SYS_FSOPEN
_SYS_FSCONFIG = _m.SYS_FSCONFIG
_SYS_FSMOUNT = _m.SYS_FSMOUNT
_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOVE_MOUNT_F_EMPTY_PATH = _m.MOVE_MOUNT_F_EMPTY_PATH
_AT_FDCWD = _m.AT_FDCWD
_PAGE_LIMIT = 4000  # mount(2) copies at most one page of options; keep a margin


class _NoLowerdirPlus(Exception):
    """The kernel has no ``lowerdir+`` (before 6.8) or no new mount API at all."""


def _fs_log(fs_fd: int) -> str:
    """The kernel's messages about the failed configuration (read from the fs context)."""
    lines: list[str] = []
    for _ in range(16):
        try:
            data = os.read(fs_fd, 1024)
        except OSError:
            break
        if not data:
            break
        lines.append(data.decode(errors="replace").rstrip("\n").removeprefix("e "))
    return "; ".join(lines)


def _mount_new_api(target: str, lowerdirs: Sequence[str], upper: str, work: str) -> None:
    try:
        fs_fd = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
    except OSError as exc:
        raise _NoLowerdirPlus from exc
    try:
        params = [("lowerdir+", d) for d in lowerdirs] + [("upperdir", upper), ("workdir", work)]
        for i, (key, value) in enumerate(params):
            try:
                _syscall(
                    _SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0
                )
            except OSError as exc:
                if i == 0 and exc.errno == errno.EINVAL:
                    raise _NoLowerdirPlus from exc
                raise RuntimeError_(
                    f"overlay {key}={value}: {exc.strerror} {_fs_log(fs_fd)}".rstrip()
                ) from None
        try:
            _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_CMD_CREATE, None, None, 0)
            mnt_fd = _syscall(_SYS_FSMOUNT, fs_fd, _FSMOUNT_CLOEXEC, 0)
        except OSError as exc:
            raise RuntimeError_(
                f"mount overlay on {target}: {exc.strerror} {_fs_log(fs_fd)}".rstrip()
            ) from None
    finally:
        os.close(fs_fd)
    try:
        _syscall(_SYS_MOVE_MOUNT, mnt_fd, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH)
    except OSError as exc:
        raise RuntimeError_(f"mount overlay on {target}: {exc.strerror}") from None
    finally:
        os.close(mnt_fd)


def _mount_legacy(target: str, lowerdirs: Sequence[str], upper: str, work: str) -> None:
    data = f"lowerdir={':'.join(lowerdirs)},upperdir={upper},workdir={work}"
    if len(data) >= _PAGE_LIMIT:
        raise RuntimeError_(
            f"The image has too many layers ({len(lowerdirs)}) for one overlay mount on this "
            "kernel; Linux 6.8 or later mounts any number (lowerdir+), or flatten the image"
        )
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise RuntimeError_(f"mount overlay on {target}: {os.strerror(err)}")


def mount_overlay(
    target: str, lowerdirs: Sequence[str], upper: str, work: str, *, legacy: bool = False
) -> None:
    """Mount an overlay of ``lowerdirs`` (top layer first) plus ``upper``/``work`` on ``target``.

    ``legacy`` forces the classic mount(2) path (used by tests of the fallback).
    """
    if not lowerdirs:
        raise RuntimeError_("an overlay needs at least one lower directory")
    if not legacy:
        try:
            _mount_new_api(target, lowerdirs, upper, work)
            return
        except _NoLowerdirPlus:
            pass
    _mount_legacy(target, lowerdirs, upper, work)
