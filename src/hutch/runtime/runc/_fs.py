"""Path resolution inside a sandbox's own view of its filesystem.

Every path a client names is resolved by the kernel with ``openat2(RESOLVE_IN_ROOT)`` against a
directory fd of the sandbox's root (``/proc/<init pid>/root``): ``..`` clamps at that root and
symlinks (absolute or relative) resolve as they would inside the sandbox, so no path, symlink or
``..`` from a sandbox can reach a host file. ``RESOLVE_NO_MAGICLINKS`` refuses ``/proc/*/root``
style magic links, which would otherwise jump out of the root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from hutch.runtime._interface import (
    FileIOError,
    FileNotFound,
    InvalidPath,
    NotADirectory,
    NotAFile,
)

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine, 437)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(
    dirfd: int,
    path: str,
    flags: int,
    mode: int = 0,
    resolve: int = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
) -> int:
    """Open ``path`` relative to ``dirfd`` with the kernel's ``openat2``; raises ``OSError``."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    while True:
        fd = _libc.syscall(
            _SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.EINTR, errno.EAGAIN):
            continue  # EAGAIN: a concurrent rename raced the lookup; the kernel asks us to retry
        raise OSError(err, os.strerror(err), path)


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def exists(root_fd: int, path: str) -> bool:
    """Whether ``path`` exists inside the sandbox (following its symlinks within its root)."""
    try:
        os.close(openat2(root_fd, path, os.O_PATH))
    except OSError:
        return False
    return True


def makedirs(root_fd: int, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    """``mkdir -p`` inside the sandbox; every component is created relative to a resolved fd."""
    parts = [p for p in path.split("/") if p]
    current = "/"
    for part in parts:
        nxt = posixpath.join(current, part)
        try:
            os.close(openat2(root_fd, nxt, os.O_PATH | os.O_DIRECTORY))
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise InvalidPath(path, f"'{nxt}' exists and is not a directory") from exc
            if exc.errno != errno.ENOENT:
                raise FileIOError(path, f"Cannot open '{nxt}': {exc.strerror}") from exc
            with _fd(openat2(root_fd, current, os.O_PATH | os.O_DIRECTORY)) as parent:
                try:
                    os.mkdir(part, mode, dir_fd=parent)
                    os.chown(part, uid, gid, dir_fd=parent, follow_symlinks=False)
                except FileExistsError:
                    pass  # raced with the sandbox creating it; the next lookup decides
                except OSError as exc2:
                    raise FileIOError(path, f"Cannot create '{nxt}': {exc2.strerror}") from exc2
            try:
                os.close(openat2(root_fd, nxt, os.O_PATH | os.O_DIRECTORY))
            except OSError as exc3:
                raise InvalidPath(path, f"'{nxt}' is not a directory") from exc3
        current = nxt


def open_for_read(root_fd: int, path: str) -> tuple[int, int]:
    """Open a regular file for reading; returns ``(fd, size)``."""
    try:
        fd = openat2(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFound(path, f"File '{path}' not found") from exc
        if exc.errno == errno.ELOOP:
            raise InvalidPath(
                path, f"'{path}' goes through a link that cannot be followed"
            ) from exc
        raise FileIOError(path, f"Cannot open '{path}': {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotAFile(path, f"'{path}' is {what}; only files can be read")
    os.set_blocking(fd, True)
    return fd, st.st_size


def open_for_write(root_fd: int, path: str, uid: int = 0, gid: int = 0) -> int:
    """Create or truncate a regular file, creating missing parent directories."""
    parent, name = posixpath.split(path)
    if not name:
        raise InvalidPath(path, "Path names a directory, not a file")
    makedirs(root_fd, parent, uid=uid, gid=gid)
    try:
        fd = openat2(root_fd, path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY, 0o644)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise NotAFile(path, f"'{path}' is a directory") from exc
        if exc.errno == errno.ELOOP:
            raise InvalidPath(
                path, f"'{path}' goes through a link that cannot be followed"
            ) from exc
        raise FileIOError(path, f"Cannot write '{path}': {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotAFile(path, f"'{path}' is not a regular file")
    os.set_blocking(fd, True)
    if st.st_uid != uid and st.st_nlink == 1 and st.st_size == 0:
        os.fchown(fd, uid, gid)  # freshly created by us
    os.ftruncate(fd, 0)
    return fd


def write_all(fd: int, chunks: Iterable[bytes]) -> int:
    total = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            n = os.write(fd, view)
            view = view[n:]
            total += n
    return total


# -- walking a directory tree (glob, grep) -----------------------------------------------------

#: How a walk opens a child by name relative to a directory fd it already holds: no symlink in
#: any component (a directory swapped for a symlink mid-walk fails with ELOOP instead of being
#: followed), nothing above that fd, no magic links. A walk therefore never leaves the tree it
#: started in, whatever the sandbox does to it meanwhile.
WALK_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

#: statfs ``f_type`` of filesystems a walk never descends into and never reads files from: their
#: "files" are kernel interfaces, and the server reads as host root, so a read of e.g.
#: ``/proc/kmsg`` would show the host's kernel log (or block). FUSE is here because a read from
#: it can block for as long as the sandbox likes.
PSEUDO_FS = frozenset(
    {
        0x9FA0,  # proc
        0x62656572,  # sysfs
        0x1CD1,  # devpts
        0x64626720,  # debugfs
        0x74726163,  # tracefs
        0x73636673,  # securityfs
        0x27E0EB,  # cgroup
        0x63677270,  # cgroup2
        0xCAFE4A11,  # bpf
        0x65735546,  # fuse
        0x6E736673,  # nsfs
        0xF97CFF8C,  # selinuxfs
        0x42494E4D,  # binfmt_misc
    }
)


def open_dir(root_fd: int, path: str) -> int:
    """Open a directory inside the sandbox for listing (resolved in its root, like every path)."""
    try:
        return openat2(root_fd, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFound(path, f"Directory '{path}' not found") from exc
        if exc.errno == errno.ENOTDIR:
            # ENOTDIR also comes from a missing parent that is a file; both mean "not a dir".
            raise NotADirectory(
                path, f"'{path}' is not a directory; pass the directory to search"
            ) from exc
        if exc.errno == errno.ELOOP:
            raise InvalidPath(
                path, f"'{path}' goes through a link that cannot be followed"
            ) from exc
        raise FileIOError(path, f"Cannot open '{path}': {exc.strerror}") from exc


def open_child(dir_fd: int, rel: str, flags: int) -> int:
    """Open ``rel`` (a name or a relative path) below ``dir_fd`` without following any symlink."""
    return openat2(dir_fd, rel, flags | os.O_NOFOLLOW | os.O_NOCTTY, resolve=WALK_RESOLVE)


def fs_type(fd: int) -> int:
    """The statfs ``f_type`` of the filesystem ``fd`` is on (works on ``O_PATH`` fds too)."""
    # struct statfs starts with f_type as a C long on every Linux ABI hutch runs on; 256 bytes
    # is more than the whole struct anywhere.
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF)


def is_pseudo_fs(fd: int) -> bool:
    """Whether ``fd`` is on a kernel-interface filesystem (see :data:`PSEUDO_FS`)."""
    return fs_type(fd) in PSEUDO_FS
