"""Safe unpacking of (hostile) image layer tarballs into overlayfs-ready directories.

Layers come from images we do not trust, so extraction is written from scratch over a streaming
``tarfile`` reader instead of ``TarFile.extractall``:

* Every path is resolved lexically (``..`` may not climb above the layer root) and then walked
  component by component with directory file descriptors opened ``O_NOFOLLOW``: no symlink inside
  the layer is ever followed, so an entry can never reach outside the layer directory.
* Hard links may only point at entries already extracted from the same layer.
* Device nodes are skipped (the runtime provides ``/dev``); FIFOs are allowed.
* OCI whiteouts (``.wh.NAME``, ``.wh..wh..opq``) become overlayfs whiteouts (0/0 character
  devices, ``trusted.overlay.opaque=y``) so the layer directories can be stacked directly as
  overlayfs ``lowerdir`` entries.
* Ownership and modes are kept exactly as in the tar (no uid shifting), so user-namespaced
  sandboxes can later use id-mapped mounts or derived copies.

Contents are streamed in fixed-size chunks; memory use does not grow with member size.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast

from ._types import ImageImportError, UnsafeLayerError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "CHUNK_SIZE",
    "LayerDigests",
    "Reader",
    "UnpackResult",
    "compression_of",
    "decompressed",
    "hash_blob",
    "hash_layer",
    "unpack_layer",
]

CHUNK_SIZE = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

# xattrs we copy from PAX ``SCHILY.xattr.*`` headers. Everything else is dropped on purpose:
# ``trusted.overlay.*`` would let an image forge whiteouts/redirects in the overlay stack, and
# ``security.selinux`` labels from a foreign system are meaningless here.
_XATTR_ALLOWED_PREFIXES = ("user.",)
_XATTR_ALLOWED_NAMES = frozenset({"security.capability"})

_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
_MAGIC_LEN = 6

_SUPPORTED_ALGORITHMS = frozenset({"sha256", "sha512"})


class Reader(Protocol):
    """Anything with a file-like ``read``."""

    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class LayerDigests:
    """Digests of one layer blob.

    ``digest`` covers the bytes as given (possibly compressed), ``diff_id`` the uncompressed tar
    (the OCI ``rootfs.diff_ids`` value; always sha256). ``tar_size`` is the uncompressed length.
    """

    digest: str
    diff_id: str
    tar_size: int


@dataclass(frozen=True)
class UnpackResult(LayerDigests):
    """Digests plus ``size`` (apparent bytes of the regular files written) and ``entries``
    (number of tar entries; 0 means the layer changes nothing)."""

    size: int
    entries: int


class _HashingReader(io.RawIOBase):
    """Read-through wrapper that hashes and counts every byte pulled from ``inner``."""

    def __init__(self, inner: Reader, algorithm: str) -> None:
        super().__init__()
        self._inner = inner
        self.hasher = hashlib.new(algorithm)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._inner.read(len(view))
        if not data:
            return 0
        n = len(data)
        view[:n] = data
        self.hasher.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        """Consume the rest of the stream so the digest covers all of it."""
        while data := self._inner.read(CHUNK_SIZE):
            self.hasher.update(data)
            self.count += len(data)

    def hexdigest(self) -> str:
        return f"{self.hasher.name}:{self.hasher.hexdigest()}"


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in _SUPPORTED_ALGORITHMS:
        raise ImageImportError(f"unsupported digest algorithm {algorithm!r} (sha256 or sha512)")


def compression_of(head: bytes) -> str | None:
    """Name the compression of a stream from its first bytes (None: uncompressed)."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


def decompressed(stream: Reader, compression: str | None, what: str = "layer") -> Reader:
    """Wrap ``stream`` in a decompressor for ``compression`` (see :func:`compression_of`).

    zstd (no decoder in the standard library) is refused with an actionable message.
    """
    if compression is None:
        return stream
    if compression == "zstd":
        raise ImageImportError(
            f"{what} is zstd-compressed; zstd is not supported yet. "
            "Re-export the image with gzip or uncompressed layers "
            "(e.g. `skopeo copy --dest-compress-format gzip ...`)"
        )
    if compression == "gzip":
        return gzip.GzipFile(fileobj=cast("IO[bytes]", stream), mode="rb")
    if compression == "bzip2":
        return bz2.BZ2File(cast("IO[bytes]", stream), mode="rb")
    return lzma.LZMAFile(cast("IO[bytes]", stream), mode="rb")


def _decompressor(buffered: io.BufferedReader[_HashingReader], media_type: str) -> Reader:
    """Return a reader of the uncompressed tar, choosing the codec from the magic bytes.

    Magic bytes win over the declared media type: mislabelled layers (docker's ``.tar`` files
    that are really gzip, for instance) are common and harmless to accept.
    """
    if "zstd" in media_type:
        return decompressed(buffered, "zstd", f"layer ({media_type})")
    return decompressed(buffered, compression_of(buffered.peek(_MAGIC_LEN)[:_MAGIC_LEN]))


@contextmanager
def _layer_stream(
    raw: IO[bytes], algorithm: str, media_type: str
) -> Iterator[tuple[_HashingReader, _HashingReader]]:
    """Yield ``(raw_hasher, tar_hasher)``; read the tar from ``tar_hasher``.

    Decompression and I/O failures surface as :class:`ImageImportError`.
    """
    _check_algorithm(algorithm)
    raw_hasher = _HashingReader(raw, algorithm)
    buffered = io.BufferedReader(raw_hasher, CHUNK_SIZE)
    try:
        tar_hasher = _HashingReader(_decompressor(buffered, media_type), "sha256")
        yield raw_hasher, tar_hasher
    except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise ImageImportError(f"layer is corrupt or truncated: {exc}") from exc
    except tarfile.TarError as exc:
        raise ImageImportError(f"layer is not a valid tar archive: {exc}") from exc


def _finish(raw_hasher: _HashingReader, tar_hasher: _HashingReader) -> LayerDigests:
    # tarfile stops at the end-of-archive marker; digests must cover the padding after it too.
    tar_hasher.drain()
    raw_hasher.drain()
    return LayerDigests(raw_hasher.hexdigest(), tar_hasher.hexdigest(), tar_hasher.count)


def hash_blob(raw: IO[bytes], *, algorithm: str = "sha256") -> str:
    """Digest (``algorithm:hex``) of the bytes read from ``raw``, read in chunks."""
    _check_algorithm(algorithm)
    hasher = _HashingReader(raw, algorithm)
    hasher.drain()
    return hasher.hexdigest()


def hash_layer(raw: IO[bytes], *, algorithm: str = "sha256", media_type: str = "") -> LayerDigests:
    """Compute the digests of a layer blob without unpacking it.

    Used to prove that an already-stored layer really is the one an image claims before reusing
    it. Raises :class:`ImageImportError` for unsupported compression or corrupt data.
    """
    with _layer_stream(raw, algorithm, media_type) as (raw_hasher, tar_hasher):
        return _finish(raw_hasher, tar_hasher)


def unpack_layer(
    raw: IO[bytes], dest: Path, *, algorithm: str = "sha256", media_type: str = ""
) -> UnpackResult:
    """Unpack the layer blob read from ``raw`` into the new directory ``dest``.

    ``dest`` must not exist; its parent must. On any error ``dest`` is removed again and the
    error is raised: :class:`UnsafeLayerError` (naming the entry) for entries that would escape
    the layer or are not allowed, :class:`ImageImportError` for corrupt or unsupported data.
    Digests are computed while streaming; the caller compares them with what the image claims.
    """
    os.mkdir(dest)
    # The default for layers without a "./" entry; a container's "/" must be traversable.
    os.chmod(dest, 0o755)
    extractor: _Extractor | None = None
    try:
        root_fd = os.open(dest, _DIR_FLAGS)
        try:
            with _layer_stream(raw, algorithm, media_type) as (raw_hasher, tar_hasher):
                extractor = _Extractor(root_fd)
                # Decompression happens above so that the uncompressed bytes can be hashed
                # (diff_id); tarfile therefore reads a plain tar stream ("r|").
                with tarfile.open(fileobj=tar_hasher, mode="r|") as tar:
                    extractor.extract_all(tar)
                extractor.finish()
                digests = _finish(raw_hasher, tar_hasher)
                size, entries = extractor.size, extractor.entries
        finally:
            os.close(root_fd)
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, OSError):
            where = f" entry {extractor.current!r}" if extractor and extractor.current else ""
            raise ImageImportError(f"could not unpack layer{where}: {exc}") from exc
        raise
    return UnpackResult(digests.digest, digests.diff_id, digests.tar_size, size, entries)


def _split(name: str, entry: str, what: str = "") -> tuple[str, ...]:
    """Lexically normalise a tar path to components below the layer root.

    Leading ``/`` is treated as relative (as docker does); ``..`` that would climb above the root
    is rejected. Resolution never consults the filesystem, so symlinks cannot influence it.
    """
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                detail = f": {what} {name!r}" if what else ""
                raise UnsafeLayerError(f"layer entry {entry!r}{detail} points outside the layer")
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    try:
        ns = int(member.mtime * 1_000_000_000)
    except (OverflowError, ValueError):
        return 0
    # Clamp to what the kernel's 64-bit timespec can hold.
    return max(min(ns, 2**62), -(2**62))


def _allowed_xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    result: list[tuple[str, bytes]] = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr.") :]
        if name in _XATTR_ALLOWED_NAMES or name.startswith(_XATTR_ALLOWED_PREFIXES):
            # tarfile decodes PAX values with surrogateescape; this recovers the raw bytes.
            result.append((name, value.encode("utf-8", "surrogateescape")))
    return result


class _Extractor:
    """Applies tar members to the directory ``root_fd`` one at a time (see module docstring)."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._is_root = os.geteuid() == 0
        # Directory attributes are applied at the end, deepest first, so that a read-only or
        # old-mtime directory is not disturbed by entries created inside it afterwards.
        self._dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        # Non-directory paths created from this layer: the only allowed hard-link targets.
        self._extracted: set[tuple[str, ...]] = set()
        # Device nodes we skipped; hard links to them are skipped too.
        self._skipped: set[tuple[str, ...]] = set()
        self.size = 0
        self.entries = 0
        self.current = ""  # name of the entry being applied, for error messages

    # -- walking ---------------------------------------------------------------------------

    def _open_dir(self, parts: tuple[str, ...], entry: str, *, create: bool) -> int:
        """Open the directory ``parts`` below the root without following any symlink.

        Missing components are created (mode 0755, owned by the extracting user) when
        ``create``; a component that is a symlink or not a directory is rejected.
        """
        fd = os.dup(self._root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    new_fd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    new_fd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(new_fd, 0o755)  # independent of the process umask
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    where = "/".join(parts[: i + 1])
                    what = "a symlink" if self._is_symlink(fd, comp) else "not a directory"
                    raise UnsafeLayerError(
                        f"layer entry {entry!r}: parent {where!r} is {what}"
                    ) from None
                os.close(fd)
                fd = new_fd
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _is_symlink(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _clear(self, parent_fd: int, parts: tuple[str, ...], *, keep_dir: bool) -> bool:
        """Remove whatever exists at ``parts`` (a later entry replaces an earlier one).

        Returns True if a directory exists there and was kept (``keep_dir``). Nothing is
        followed: a symlink is unlinked, a directory is removed with fd-based ``rmtree``.
        """
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(name, dir_fd=parent_fd)
            self._forget_below(parts)
        else:
            os.unlink(name, dir_fd=parent_fd)
        self._extracted.discard(parts)
        return False

    def _forget_below(self, parts: tuple[str, ...]) -> None:
        n = len(parts)
        self._dirs = {p: m for p, m in self._dirs.items() if p[:n] != parts}
        self._extracted = {p for p in self._extracted if p[:n] != parts}

    # -- attributes ------------------------------------------------------------------------

    def _chown_fd(self, fd: int, member: tarfile.TarInfo) -> None:
        if self._is_root:  # unprivileged extraction keeps the caller's ids, like tar(1) does
            try:
                os.fchown(fd, member.uid, member.gid)
            except OverflowError:
                raise self._bad_owner(member) from None

    def _chown_at(self, name: str, dir_fd: int, member: tarfile.TarInfo) -> None:
        if self._is_root:
            try:
                os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
            except OverflowError:
                raise self._bad_owner(member) from None

    @staticmethod
    def _bad_owner(member: tarfile.TarInfo) -> UnsafeLayerError:
        return UnsafeLayerError(
            f"layer entry {member.name!r} has an out-of-range owner {member.uid}:{member.gid}"
        )

    def _apply_fd(self, fd: int, member: tarfile.TarInfo) -> None:
        """Owner, then mode (chown clears setuid bits), then xattrs, then mtime."""
        self._chown_fd(fd, member)
        os.fchmod(fd, member.mode & 0o7777)
        for name, value in _allowed_xattrs(member):
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EINVAL):
                    raise
        mtime = _mtime_ns(member)
        os.utime(fd, ns=(mtime, mtime))

    # -- entries ---------------------------------------------------------------------------

    def extract_all(self, tar: tarfile.TarFile) -> None:
        while (member := tar.next()) is not None:
            # Stream mode remembers every member it has seen; drop them to bound memory.
            tar.members = []  # type: ignore[attr-defined]  # (undeclared in typeshed)
            self.current = member.name
            self.entries += 1
            self._extract(tar, member)
        self.current = ""

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if "\0" in member.name or "\0" in member.linkname:
            raise UnsafeLayerError(f"layer entry {member.name!r} contains a NUL byte")
        parts = _split(member.name, member.name)
        # Like docker, a .wh. name is a whiteout marker whatever its entry type.
        if parts and parts[-1].startswith(_WHITEOUT_PREFIX):
            self._whiteout(parts, member)
            return
        if member.isdir():
            self._directory(parts, member)
            return
        if not parts:
            raise UnsafeLayerError(
                f"layer entry {member.name!r} is not a directory but names the root"
            )
        base = parts[-1]
        if member.ischr() or member.isblk():
            self._skipped.add(parts)  # the runtime provides /dev
            return
        if member.islnk() and _split(member.linkname, member.name, "hard-link target") in (
            self._skipped
        ):
            self._skipped.add(parts)  # a second name for a skipped device node
            return
        if not (member.isreg() or member.issym() or member.islnk() or member.isfifo()):
            raise UnsafeLayerError(
                f"layer entry {member.name!r} has unsupported tar type {member.type!r}"
            )
        parent_fd = self._open_dir(parts[:-1], member.name, create=True)
        try:
            if member.islnk():
                self._hardlink(parent_fd, parts, member)
                return
            self._clear(parent_fd, parts, keep_dir=False)
            if member.isreg():
                self._regular(tar, parent_fd, base, member)
            elif member.issym():
                os.symlink(member.linkname, base, dir_fd=parent_fd)
                self._chown_at(base, parent_fd, member)
                mtime = _mtime_ns(member)
                os.utime(base, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)
            else:
                os.mkfifo(base, 0o600, dir_fd=parent_fd)
                # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
                fd = os.open(base, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=parent_fd)
                try:
                    self._apply_fd(fd, member)
                finally:
                    os.close(fd)
            self._extracted.add(parts)
            self._skipped.discard(parts)
        finally:
            os.close(parent_fd)

    def _regular(
        self, tar: tarfile.TarFile, parent_fd: int, base: str, member: tarfile.TarInfo
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent_fd)
        with open(fd, "wb", buffering=CHUNK_SIZE) as out:
            src = tar.extractfile(member)
            if src is not None:
                shutil.copyfileobj(src, out, CHUNK_SIZE)
            out.flush()  # before setting the mtime, or the pending write would bump it
            self._apply_fd(out.fileno(), member)
        self.size += member.size

    def _hardlink(self, parent_fd: int, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        target = _split(member.linkname, member.name, "hard-link target")
        if target not in self._extracted:
            raise UnsafeLayerError(
                f"layer entry {member.name!r} hard-links to {member.linkname!r}, "
                "which is not an earlier entry of this layer"
            )
        if target == parts:
            return  # a link to itself is a no-op; clearing it first would lose the file
        src_fd = -1
        try:
            src_fd = self._open_dir(target[:-1], member.name, create=False)
            self._clear(parent_fd, parts, keep_dir=False)
            # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW links a symlink itself.
            os.link(
                target[-1],
                parts[-1],
                src_dir_fd=src_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
        except FileNotFoundError:
            raise UnsafeLayerError(
                f"layer entry {member.name!r} hard-links to {member.linkname!r}, "
                "which no longer exists in this layer"
            ) from None
        finally:
            if src_fd >= 0:
                os.close(src_fd)
        # Hard links share the target's inode, so the entry's own attributes are not applied.
        self._extracted.add(parts)

    def _directory(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        if parts:
            parent_fd = self._open_dir(parts[:-1], member.name, create=True)
            try:
                if not self._clear(parent_fd, parts, keep_dir=True):
                    os.mkdir(parts[-1], 0o700, dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
        self._dirs[parts] = member

    def _whiteout(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        base = parts[-1]
        if base == _OPAQUE_MARKER:
            dir_fd = self._open_dir(parts[:-1], member.name, create=True)
            try:
                os.setxattr(dir_fd, _OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(dir_fd)
            return
        if base.startswith(_WHITEOUT_PREFIX + _WHITEOUT_PREFIX):
            return  # other aufs metadata (.wh..wh.plnk, ...) has no overlayfs meaning
        hidden = base[len(_WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise UnsafeLayerError(f"layer entry {member.name!r} is not a valid whiteout")
        target = (*parts[:-1], hidden)
        parent_fd = self._open_dir(parts[:-1], member.name, create=True)
        try:
            self._clear(parent_fd, target, keep_dir=False)
            try:
                os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
            except PermissionError:
                raise ImageImportError(
                    "layers with whiteouts can only be unpacked as root (needs CAP_MKNOD)"
                ) from None
        finally:
            os.close(parent_fd)
        self._skipped.discard(target)

    def finish(self) -> None:
        """Apply the deferred directory attributes, deepest first."""
        for parts in sorted(self._dirs, key=len, reverse=True):
            member = self._dirs[parts]
            self.current = member.name
            try:
                fd = self._open_dir(parts, member.name, create=False)
            except (FileNotFoundError, UnsafeLayerError):
                continue  # replaced by a later non-directory entry
            try:
                self._apply_fd(fd, member)
            finally:
                os.close(fd)
