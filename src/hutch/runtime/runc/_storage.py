"""Disk limits: every sandbox's writable layer lives in a btrfs subvolume with a quota.

A sandbox writes only to its overlay's upper directory (and to small tmpfs mounts under /dev). The
server keeps those upper directories on a filesystem of their own, a btrfs image file
(``<data-dir>/storage.img``, sparse, ``--storage-pool-size``) loop-mounted at
``<data-dir>/storage``, and gives each sandbox a subvolume there with a quota group limit. A
sandbox that fills its limit gets ``EDQUOT`` ("Disk quota exceeded"); one that fills the pool gets
``ENOSPC``; neither can reach the host's own filesystems, which is the point.

btrfs because its quota groups need nothing from the kernel's generic quota support (which this
kind of host often lacks, as ext4 and XFS project quotas do), and a subvolume costs two ioctls.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path

log = logging.getLogger("hutch.runtime")

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2

# linux/btrfs.h
_VOL_ARGS = 4096  # struct btrfs_ioctl_vol_args: __s64 fd; char name[4088]
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E  # _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
BTRFS_IOC_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
BTRFS_IOC_QGROUP_LIMIT = 0x8030942B  # _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)
BTRFS_QGROUP_LIMIT_MAX_RFER = 1
BTRFS_QGROUP_LIMIT_MAX_EXCL = 2


class StorageError(Exception):
    pass


def _vol_args(name: str) -> bytearray:
    raw = name.encode()
    if not raw or b"/" in raw or len(raw) >= _VOL_ARGS - 8:
        raise StorageError(f"bad subvolume name {name!r}")
    buf = bytearray(_VOL_ARGS)
    buf[8 : 8 + len(raw)] = raw
    return buf


def _is_mounted(target: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(target) for line in f)


class StoragePool:
    """The btrfs filesystem that holds every sandbox's writable layer."""

    def __init__(self, data_dir: Path, size_bytes: int) -> None:
        self.image = data_dir / "storage.img"
        self.root = data_dir / "storage"
        self.size_bytes = size_bytes

    def open(self) -> None:
        """Create (first time) and mount the pool; idempotent."""
        if _is_mounted(self.root):
            return
        for tool in ("mkfs.btrfs", "btrfs"):
            if shutil.which(tool) is None:
                raise StorageError(f"{tool} is missing: install the btrfs-progs package")
        self.root.mkdir(mode=0o700, exist_ok=True)
        fresh = not self.image.exists()
        if fresh:
            with open(self.image, "wb") as f:
                f.truncate(self.size_bytes)
            self.image.chmod(0o600)
            self._run("mkfs.btrfs", "-q", "-f", str(self.image))
        self._run("mount", "-o", "loop,nodev,nosuid", str(self.image), str(self.root))
        self._run("btrfs", "quota", "enable", str(self.root))

    def close(self) -> None:
        """Unmount the pool (the loop device goes with it) unless a sandbox still uses it."""
        if not _is_mounted(self.root):
            return
        with os.scandir(self.root) as entries:
            if any(e.is_dir(follow_symlinks=False) for e in entries):
                return  # sandboxes left: they survive a server restart and need their layers
        if _libc.umount2(str(self.root).encode(), MNT_DETACH) != 0:
            log.warning("could not unmount %s: %s", self.root, os.strerror(ctypes.get_errno()))

    @staticmethod
    def _run(*argv: str) -> None:
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise StorageError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.returncode}")

    def allocate(self, sandbox_id: str, limit_bytes: int) -> Path:
        """A fresh subvolume for the sandbox, limited to ``limit_bytes``; returns its path."""
        path = self.root / sandbox_id
        parent = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, _vol_args(sandbox_id))
        except OSError as exc:
            raise StorageError(f"cannot create the sandbox's storage: {exc}") from exc
        finally:
            os.close(parent)
        try:
            self.set_limit(path, limit_bytes)
        except BaseException:
            self.release(sandbox_id)
            raise
        return path

    @staticmethod
    def set_limit(path: Path, limit_bytes: int) -> None:
        sub = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            flags = BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL
            # qgroupid 0: the subvolume the descriptor is in.
            args = bytearray(struct.pack("=6Q", 0, flags, limit_bytes, limit_bytes, 0, 0))
            fcntl.ioctl(sub, BTRFS_IOC_QGROUP_LIMIT, args)
        except OSError as exc:
            raise StorageError(f"cannot limit the sandbox's storage: {exc}") from exc
        finally:
            os.close(sub)

    def release(self, sandbox_id: str) -> None:
        """Delete the sandbox's subvolume and everything in it (idempotent)."""
        path = self.root / sandbox_id
        if not path.exists():
            return
        parent = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(parent, BTRFS_IOC_SNAP_DESTROY, _vol_args(sandbox_id))
        except OSError as exc:
            log.warning("could not delete subvolume %s (%s); removing its files", path, exc)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(parent)

    def path(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id
