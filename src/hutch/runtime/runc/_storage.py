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

import contextlib
import ctypes
import logging
import os
import shutil
import struct
import subprocess
from errno import EINTR
from pathlib import Path

log = logging.getLogger("hutch.runtime")

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2

# linux/btrfs.h
_VOL_ARGS = 4096  # struct btrfs_ioctl_vol_args: __s64 fd; char name[4088]
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E  # _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
BTRFS_IOC_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
BTRFS_IOC_QGROUP_LIMIT = 0x8030942B  # _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)
BTRFS_IOC_QUOTA_CTL = 0xC0109428  # _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)
BTRFS_QGROUP_LIMIT_MAX_RFER = 1
BTRFS_QGROUP_LIMIT_MAX_EXCL = 2
# struct btrfs_ioctl_vol_args_v2: __s64 fd; __u64 transid, flags; __u64 unused[4]; char name[4040]
BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417  # _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
BTRFS_SUBVOL_RDONLY = 1 << 1
_VOL_ARGS_V2_HEAD = struct.Struct("=qQQ4Q")
#: Where captured snapshots live in the pool: a plain directory whose name no sandbox id can have.
SNAPSHOTS = ".snapshots"
#: One ready writable clone per captured snapshot, taken by the next sandbox booted from it.
SPARES = ".spares"
#: Where a non-persistent sandbox's fresh writable layer is made before it is swapped in.
RESETS = ".resets"
RENAME_EXCHANGE = 1 << 1
AT_FDCWD = -100


class StorageError(Exception):
    pass


def _ioctl(fd: int, request: int, arg: bytearray) -> None:
    """``ioctl(fd, request, arg)`` with the interpreter lock released.

    btrfs ioctls block for a transaction commit (a snapshot waits for one; a quota limit or a
    subvolume's creation may wait behind another's), often for milliseconds, under load for
    tens. ``fcntl.ioctl`` holds the interpreter lock through the call when ``arg`` is a mutable
    buffer, which stalls the server's event loop for as long; a foreign call through ctypes
    releases it.
    """
    buf = (ctypes.c_char * len(arg)).from_buffer(arg)
    while _libc.ioctl(fd, ctypes.c_ulong(request), buf) == -1:
        errno = ctypes.get_errno()
        if errno != EINTR:  # a signal handled on this thread: ask again, as fcntl.ioctl does
            raise OSError(errno, os.strerror(errno))


def _vol_args(name: str) -> bytearray:
    raw = name.encode()
    if not raw or b"/" in raw or len(raw) >= _VOL_ARGS - 8:
        raise StorageError(f"bad subvolume name {name!r}")
    buf = bytearray(_VOL_ARGS)
    buf[8 : 8 + len(raw)] = raw
    return buf


def _vol_args_v2(source_fd: int, name: str, flags: int) -> bytearray:
    raw = name.encode()
    if not raw or b"/" in raw or raw.startswith(b".") or len(raw) >= 4040:
        raise StorageError(f"bad subvolume name {name!r}")
    buf = bytearray(_VOL_ARGS)
    _VOL_ARGS_V2_HEAD.pack_into(buf, 0, source_fd, 0, flags, 0, 0, 0, 0)
    buf[_VOL_ARGS_V2_HEAD.size : _VOL_ARGS_V2_HEAD.size + len(raw)] = raw
    return buf


def _snapshot(source: Path, parent: Path, name: str, *, readonly: bool) -> None:
    """A copy-on-write snapshot of subvolume ``source`` as ``parent/name`` (no data is copied)."""
    src = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        dst = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            flags = BTRFS_SUBVOL_RDONLY if readonly else 0
            _ioctl(dst, BTRFS_IOC_SNAP_CREATE_V2, _vol_args_v2(src, name, flags))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (``renameat2`` with ``RENAME_EXCHANGE``): a crash leaves one or
    the other in place, never neither."""
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(a))


def _destroy(parent: Path, name: str) -> None:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        _ioctl(fd, BTRFS_IOC_SNAP_DESTROY, _vol_args(name))
    finally:
        os.close(fd)


def disk_usage(path: Path) -> int:
    """Bytes of disk the files under ``path`` take (st_blocks; hard links counted once; symlinks
    never followed)."""
    total, seen = 0, set()
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return total


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
        self._enable_quota(fresh)

    def close(self) -> None:
        """Unmount the pool (the loop device goes with it) unless a sandbox still uses it."""
        if not _is_mounted(self.root):
            return
        with os.scandir(self.root) as entries:
            if any(e.is_dir(follow_symlinks=False) and e.name[0] != "." for e in entries):
                return  # sandboxes left: they survive a server restart and need their layers
        if _libc.umount2(str(self.root).encode(), MNT_DETACH) != 0:
            log.warning("could not unmount %s: %s", self.root, os.strerror(ctypes.get_errno()))

    def _enable_quota(self, fresh: bool) -> None:
        """Simple quotas (Linux 6.7+) on a new pool: extents are charged to the subvolume that
        wrote them, so clones of a snapshot share its files without the backref walks full
        quota groups do on every commit (they grow with the number of snapshots sharing data).
        Older kernels, and pools made before, keep full quota groups."""
        if fresh:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _ioctl(fd, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("=QQ", 4, 0)))
                return
            except OSError:
                pass
            finally:
                os.close(fd)
        self._run("btrfs", "quota", "enable", str(self.root))

    @staticmethod
    def _run(*argv: str) -> None:
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise StorageError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.returncode}")

    def allocate(self, sandbox_id: str, limit_bytes: int, owner: tuple[int, int]) -> Path:
        """A fresh, empty writable layer for the sandbox (``upper`` owned by ``owner``, the
        sandbox's root, and overlayfs' ``work``), limited to ``limit_bytes``; returns its path."""
        path = self.root / sandbox_id
        try:
            self._new_layer(self.root, sandbox_id, owner)
            self.set_limit(path, limit_bytes)
        except BaseException:
            self.release(sandbox_id)
            raise
        return path

    @staticmethod
    def _new_layer(parent: Path, name: str, owner: tuple[int, int]) -> None:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, _vol_args(name))
        except OSError as exc:
            raise StorageError(f"cannot create the sandbox's storage: {exc}") from exc
        finally:
            os.close(fd)
        (parent / name / "upper").mkdir()
        os.chown(parent / name / "upper", *owner)
        (parent / name / "work").mkdir()

    def reset(
        self, sandbox_id: str, snapshot_id: str | None, limit_bytes: int, owner: tuple[int, int]
    ) -> None:
        """Give a stopped sandbox a fresh writable layer: its captured snapshot's files (when
        ``snapshot_id`` names one this pool holds), else empty; what it wrote is gone.

        The new layer is made aside and swapped in with one atomic rename, so a crash leaves
        the old layer or the new one in place (and at worst a leftover that :meth:`sweep`
        removes), never no layer.
        """
        path = self.path(sandbox_id)
        if not (path / "upper").is_dir():
            raise StorageError(f"sandbox {sandbox_id} has no writable layer")
        staging = self.root / RESETS
        staging.mkdir(mode=0o700, exist_ok=True)
        if (staging / sandbox_id).exists():  # a reset a crash interrupted
            _destroy(staging, sandbox_id)
        if snapshot_id is not None and (self.snapshots / snapshot_id / "upper").is_dir():
            self._take_clone(snapshot_id, staging, sandbox_id)
        else:
            self._new_layer(staging, sandbox_id, owner)
        try:
            self.set_limit(staging / sandbox_id, limit_bytes)
            _exchange(staging / sandbox_id, path)
        except OSError as exc:
            raise StorageError(f"cannot reset the sandbox's files: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                _destroy(staging, sandbox_id)  # after the swap, the old layer

    @staticmethod
    def set_limit(path: Path, limit_bytes: int) -> None:
        sub = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            flags = BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL
            # qgroupid 0: the subvolume the descriptor is in.
            args = bytearray(struct.pack("=6Q", 0, flags, limit_bytes, limit_bytes, 0, 0))
            _ioctl(sub, BTRFS_IOC_QGROUP_LIMIT, args)
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
            _ioctl(parent, BTRFS_IOC_SNAP_DESTROY, _vol_args(sandbox_id))
        except OSError as exc:
            log.warning("could not delete subvolume %s (%s); removing its files", path, exc)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(parent)

    def path(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    # -- captured snapshots ----------------------------------------------------------------------

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS

    def capture(self, sandbox_id: str, snapshot_id: str) -> Path:
        """Freeze the sandbox's writable layer as a read-only snapshot (copy-on-write: it takes
        milliseconds whatever the size, and later writes of the sandbox do not show in it)."""
        source = self.path(sandbox_id)
        if not (source / "upper").is_dir():
            raise StorageError(f"sandbox {sandbox_id} has no writable layer")
        self.snapshots.mkdir(mode=0o700, exist_ok=True)
        try:
            _snapshot(source, self.snapshots, snapshot_id, readonly=True)
        except OSError as exc:
            raise StorageError(f"cannot capture the sandbox's files: {exc}") from exc
        return self.snapshots / snapshot_id

    def clone(self, snapshot_id: str, sandbox_id: str, limit_bytes: int) -> Path:
        """A writable copy-on-write clone of a captured snapshot as the sandbox's subvolume,
        limited to ``limit_bytes`` (the snapshot's own files count toward it).

        Taking the snapshot's spare clone is a rename; without one, a btrfs snapshot is made
        here, which waits for a transaction commit (a few milliseconds to tens under load).
        """
        path = self.path(sandbox_id)
        self._take_clone(snapshot_id, self.root, sandbox_id)
        try:
            self.set_limit(path, limit_bytes)
        except BaseException:
            self.release(sandbox_id)
            raise
        return path

    def _take_clone(self, snapshot_id: str, parent: Path, name: str) -> None:
        """A writable clone of the snapshot as ``parent/name``: its spare, else a new one."""
        try:
            os.rename(self.root / SPARES / snapshot_id, parent / name)
        except FileNotFoundError:
            self._clone_into(snapshot_id, parent, name)
        except OSError as exc:
            raise StorageError(f"cannot create the sandbox's storage: {exc}") from exc

    def _clone_into(self, snapshot_id: str, parent: Path, name: str) -> None:
        source = self.snapshots / snapshot_id
        if not (source / "upper").is_dir():
            raise StorageError(f"snapshot {snapshot_id} has no files on this server")
        try:
            _snapshot(source, parent, name, readonly=False)
        except OSError as exc:
            raise StorageError(f"cannot create the sandbox's storage: {exc}") from exc
        # overlayfs' work directory must be empty and is never part of what was captured.
        shutil.rmtree(parent / name / "work", ignore_errors=True)
        (parent / name / "work").mkdir()

    def prepare_spare(self, snapshot_id: str) -> None:
        """Make the snapshot's spare clone unless it has one (or is gone)."""
        spares = self.root / SPARES
        if (spares / snapshot_id).exists() or not (self.snapshots / snapshot_id).is_dir():
            return
        spares.mkdir(mode=0o700, exist_ok=True)
        self._clone_into(snapshot_id, spares, snapshot_id)

    def snapshot_ids(self) -> set[str]:
        """Ids of the captured snapshots (and spares) this pool holds."""
        ids: set[str] = set()
        for d in (self.snapshots, self.root / SPARES):
            with contextlib.suppress(FileNotFoundError):
                ids.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        return ids

    def sweep(self) -> None:
        """Remove what an interrupted :meth:`reset` left aside."""
        staging = self.root / RESETS
        with contextlib.suppress(FileNotFoundError):
            for e in list(os.scandir(staging)):
                with contextlib.suppress(OSError):
                    _destroy(staging, e.name)

    def drop_snapshot(self, snapshot_id: str) -> None:
        """Delete a captured snapshot and its spare (idempotent); sandboxes cloned from it keep
        their files."""
        try:
            if (self.root / SPARES / snapshot_id).exists():
                _destroy(self.root / SPARES, snapshot_id)
            if (self.snapshots / snapshot_id).exists():
                _destroy(self.snapshots, snapshot_id)
        except OSError as exc:
            raise StorageError(f"cannot delete snapshot {snapshot_id}: {exc}") from exc
