"""User namespaces: root in a sandbox is an unprivileged uid on the host.

Every sandbox runs in a user namespace that maps its uids and gids 0..65535 onto the host range
``base .. base+65535`` (``--userns-base``, default 2^20 + 2^16·k with k=0, i.e. 1048576, well clear
of ordinary users and of the /etc/subuid ranges tools hand out). A process that escaped every other
wall would still be a nobody on the host; files a sandbox creates are owned by that range on disk.

Image layers are stored once, owned as in the image (0..65535). A sandbox sees them through
*idmapped mounts* (``open_tree`` + ``mount_setattr(MOUNT_ATTR_IDMAP)``), which shift ownership by
``base`` without copying a byte; overlayfs takes such mounts as its lower layers. The writable
layer is created owned by ``base`` and needs no shifting.

The user namespace that carries the mapping for those mounts is made once per server: a helper
process (``unshare --user``) whose maps the server writes and whose namespace it keeps open.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.runc import _mountapi as _m

_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_MOUNT_ATTR_IDMAP = 0x00100000

RANGE = 65536
DEFAULT_BASE = 1 << 20


class UsernsError(Exception):
    pass


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class IdMap:
    """Container ids 0..size-1 are host ids base..base+size-1 (uids and gids alike)."""

    base: int = DEFAULT_BASE
    size: int = RANGE

    def oci(self) -> list[dict[str, int]]:
        return [{"containerID": 0, "hostID": self.base, "size": self.size}]

    def host(self, container_id: int) -> int:
        return self.base + container_id


def namespace_fd(idmap: IdMap) -> int:
    """An fd of a user namespace with ``idmap`` for uids and gids (used for idmapped mounts)."""
    helper = subprocess.Popen(
        ["unshare", "--user", "sh", "-c", "read _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        own = os.readlink("/proc/self/ns/user")
        path = f"/proc/{helper.pid}/ns/user"
        deadline = time.monotonic() + 10
        while True:  # until the helper has unshared (a busy host can take a while)
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(path) != own:
                    break
            if helper.poll() is not None:
                err = helper.stderr.read().decode() if helper.stderr else ""
                raise UsernsError(f"cannot create a user namespace: {err.strip()}")
            if time.monotonic() > deadline:
                raise UsernsError("the helper did not enter a new user namespace within 10 s")
            time.sleep(0.001)
        line = f"0 {idmap.base} {idmap.size}\n"
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{kind}", "w") as f:
                f.write(line)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsernsError(f"cannot set up the sandboxes' user namespace: {exc}") from exc
    finally:
        helper.kill()
        helper.communicate()


def idmapped(path: str, userns_fd: int) -> int:
    """A detached, idmapped clone of the directory tree at ``path`` (a mount fd)."""
    fd = _m.syscall(
        _m.SYS_OPEN_TREE, _m.AT_FDCWD, path.encode(), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _m.syscall(
            _m.SYS_MOUNT_SETATTR,
            fd,
            b"",
            _m.AT_EMPTY_PATH,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def idmapped_layers(layers: Sequence[str], userns_fd: int, where: Path) -> Iterator[list[str]]:
    """Idmapped clones of ``layers`` attached under ``where`` for the duration of the block.

    Layer ``i`` appears at ``where/<i>/<its directory name>``: overlayfs records the paths it was
    given, and the image store's garbage collector recognises a layer in use by that last name.
    Once the overlay is mounted it holds its own references, so the clones are detached again.
    """
    attached: list[Path] = []
    try:
        for i, layer in enumerate(layers):
            target = where / str(i) / Path(layer).name
            target.mkdir(parents=True)
            try:
                fd = idmapped(layer, userns_fd)
                try:
                    _m.syscall(
                        _m.SYS_MOVE_MOUNT,
                        fd,
                        b"",
                        _m.AT_FDCWD,
                        bytes(target),
                        _m.MOVE_MOUNT_F_EMPTY_PATH,
                    )
                finally:
                    os.close(fd)
            except OSError as exc:
                raise UsernsError(f"cannot idmap layer {layer}: {exc.strerror}") from exc
            attached.append(target)
        yield [str(p) for p in attached]
    finally:
        for target in attached:
            _m.libc.umount2(bytes(target), _m.MNT_DETACH)
        shutil.rmtree(where, ignore_errors=True)
