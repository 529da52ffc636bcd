"""The local image store: imported images and their unpacked, shared layers.

Layout under ``root`` (all directories 0700: layers hold setuid binaries from untrusted images,
and host users must not be able to reach them)::

    images/<sha256 of reference>.json   one record per image (name, digest, config, layers)
    layers/sha256/<hex>/                one unpacked layer, keyed by its diff_id (sha256 of the
                                        uncompressed tar); used directly as overlayfs lowerdir
    layers/sha256/<hex>.json            layer metadata (size); written before the directory
                                        is renamed into place
    blobmap/<algorithm>/<hex>           blob digest (as stored, e.g. gzip) -> diff_id, so a known
                                        compressed layer is recognised without decompressing
    tmp/                                scratch space for imports; emptied at start-up
    .lock                               flock()ed while the store is modified

A layer directory is complete if and only if it exists under ``layers/``: layers are unpacked
in ``tmp/`` and ``rename``d into place, and removed by renaming them back to ``tmp/`` first.
A layer that is a lower layer of a mounted overlay (a running sandbox) is never removed, even if
no image uses it any more; :meth:`ImageStore.gc` frees it once it is unmounted.
Records are written to a temporary file and renamed over the old one. File ownership and modes
inside layers are exactly as in the image (no uid shifting).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._formats import LayerSource, open_image_source, synthesize_digest
from ._layers import LayerDigests, hash_blob, hash_layer, unpack_layer
from ._reference import normalize_reference
from ._types import Image, ImageConfig, ImageError, ImageImportError, ImageNotFoundError

__all__ = ["ImageStore"]

_log = logging.getLogger(__name__)

_RECORD_VERSION = 1
_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class GcResult:
    """What :meth:`ImageStore.gc` did."""

    freed_layers: int
    freed_bytes: int
    in_use: int  # unreferenced layers kept because a mounted overlay uses them


@dataclass(frozen=True)
class _StoredLayer:
    diff_id: str
    size: int
    tar_size: int
    empty: bool  # the tar had no entries: stacking it changes nothing

    @property
    def hex(self) -> str:
        return self.diff_id.split(":", 1)[1]


def _is_sha256(value: object) -> bool:
    if not isinstance(value, str) or not value.startswith("sha256:"):
        return False
    hex_ = value[len("sha256:") :]
    return len(hex_) == 64 and all(c in "0123456789abcdef" for c in hex_)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with open(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mismatch(label: str, kind: str, expected: str, actual: str) -> ImageImportError:
    return ImageImportError(f"{label}: {kind} mismatch (expected {expected}, got {actual})")


class ImageStore:
    """Imported images, stored under ``root`` (see the module docstring for the layout).

    All methods are blocking; call them from a worker thread in async code. Imports and
    removals are serialized (a thread lock plus an ``flock`` on ``root/.lock`` so that several
    processes can share a store); ``get`` and ``list`` never block on them and always see
    complete records.
    """

    def __init__(self, root: Path) -> None:
        # Absolute, because Image.layers paths are handed to runc/mount from other cwd's.
        self._root = Path(root).absolute()
        self._images = self._root / "images"
        self._layers = self._root / "layers" / "sha256"
        self._blobmap = self._root / "blobmap"
        self._tmp = self._root / "tmp"
        self._lock = threading.Lock()
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (
            self._images,
            self._layers.parent,
            self._layers,
            self._blobmap,
            self._tmp,
        ):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)  # mkdir's mode is subject to the umask
        self._clean_tmp()

    @property
    def root(self) -> Path:
        """The directory the store lives in."""
        return self._root

    # -- public API ------------------------------------------------------------------------

    def import_path(
        self, name: str, path: Path, *, progress: Callable[[int, int], None] | None = None
    ) -> Image:
        """Import the image at ``path`` as ``name`` and return it.

        ``path`` may be an OCI image layout directory, an OCI archive, a ``docker save``
        archive, a root filesystem tarball (optionally gzip/bzip2/xz compressed) or a plain
        directory holding a root filesystem; the format is detected. An existing image of the
        same name is replaced, and its layers no other image uses are freed. Layers already in
        the store (same diff_id, verified against the input) are reused without unpacking.
        Raises :class:`ImageError` for a bad name, :class:`ImageImportError` (or its subclass
        :class:`UnsafeLayerError`) if the input cannot be imported; the store is then unchanged
        apart from complete layers that other images already share. ``progress(i, n)`` is called
        before layer ``i`` (from 0) of ``n`` is processed.
        """
        reference = normalize_reference(name)
        path = Path(path)
        with self._locked():
            scratch = Path(tempfile.mkdtemp(prefix="import-", dir=self._tmp))
            created: builtins.list[str] = []
            try:
                with open_image_source(path, scratch, reference) as source:
                    stored = []
                    for i, layer in enumerate(source.layers):
                        if progress is not None:
                            progress(i, len(source.layers))
                        stored.append(self._ensure_layer(layer, scratch, created))
                digests = [LayerDigests(s.diff_id, s.diff_id, s.tar_size) for s in stored]
                record = {
                    "version": _RECORD_VERSION,
                    "name": reference,
                    "digest": source.manifest_digest or synthesize_digest(source, digests),
                    "format": source.kind,
                    "source": str(path),
                    "config": {
                        "env": source.config.env,
                        "working_dir": source.config.working_dir,
                        "user": source.config.user,
                        "entrypoint": source.config.entrypoint,
                        "cmd": source.config.cmd,
                    },
                    "layers": [
                        {"diff_id": s.diff_id, "size": s.size, "empty": s.empty} for s in stored
                    ],
                    "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                previous = self._try_read_record(reference)
                _write_atomic(
                    self._record_path(reference), json.dumps(record, indent=2).encode() + b"\n"
                )
            except BaseException:
                self._free_unreferenced(created)
                raise
            finally:
                _rmtree(scratch)
            if previous is not None:
                self._free_unreferenced(self._record_layer_ids(previous))
            return self._image_from_record(record)

    def get(self, name: str) -> Image:
        """The image called ``name`` (normalized first, so ``busybox`` finds ``busybox:latest``).

        Raises :class:`ImageNotFoundError` if there is none, :class:`ImageError` if the name is
        invalid or its record is unreadable.
        """
        reference = normalize_reference(name)
        record = self._read_record(reference)
        if record is None:
            raise ImageNotFoundError(
                f"image {reference!r} is not in the local store; import it with "
                f"`hutch image import NAME PATH` (e.g. `hutch image import {reference} "
                "./image.tar`)"
            )
        return self._image_from_record(record)

    def list(self) -> builtins.list[Image]:
        """All images, sorted by name. Unreadable records are logged and skipped."""
        images: builtins.list[Image] = []
        for path in self._record_files():
            try:
                images.append(self._image_from_record(self._load_record(path)))
            except ImageError as exc:
                _log.warning("skipping image record %s: %s", path, exc)
        return sorted(images, key=lambda image: image.name)

    def remove(self, name: str) -> None:
        """Delete the image ``name`` and free the layers no other image uses.

        Raises :class:`ImageNotFoundError` if there is no such image.
        """
        reference = normalize_reference(name)
        with self._locked():
            path = self._record_path(reference)
            previous = self._try_read_record(reference)
            try:
                os.unlink(path)
            except FileNotFoundError:
                raise ImageNotFoundError(
                    f"image {reference!r} is not in the local store; nothing to remove"
                ) from None
            if previous is not None:
                self._free_unreferenced(self._record_layer_ids(previous))

    def gc(self) -> GcResult:
        """Free every stored layer no image uses and no mounted overlay uses.

        Image removal already frees unshared layers; this also catches layers that were in use
        by a sandbox at that time, and leftovers of interrupted imports or removals.
        """
        with self._locked():
            referenced = self._referenced_layers()
            if referenced is None:
                return GcResult(0, 0, 0)
            mounted = _mounted_layer_names(self._layers, self._root.parent / "sandboxes")
            freed = in_use = size = 0
            names = {p.name.removesuffix(".json") for p in self._layers.iterdir()}
            freed_ids: set[str] = set()
            for hex_ in sorted(names):
                diff_id = f"sha256:{hex_}"
                if not _is_sha256(diff_id) or diff_id in referenced:
                    continue
                if hex_ in mounted:
                    in_use += 1
                    continue
                meta = self._layer_meta(diff_id)
                size += meta.size if meta is not None else 0
                self._delete_layer(diff_id)
                freed_ids.add(diff_id)
                freed += 1
            self._prune_blobmap(freed_ids, drop_dangling=True)
            return GcResult(freed, size, in_use)

    # -- locking and housekeeping ----------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _clean_tmp(self) -> None:
        """Remove leftovers of interrupted imports, unless another process is importing now."""
        fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its scratch directories are in use; the next start-up cleans up
            for entry in self._tmp.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    _rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
        finally:
            os.close(fd)

    # -- records ---------------------------------------------------------------------------

    def _record_path(self, reference: str) -> Path:
        # Hashing keeps arbitrary reference characters ('/', ':', '@') out of file names.
        return self._images / f"{hashlib.sha256(reference.encode()).hexdigest()}.json"

    def _record_files(self) -> builtins.list[Path]:
        return [
            p for p in self._images.iterdir() if p.suffix == ".json" and not p.name.startswith(".")
        ]

    def _load_record(self, path: Path) -> dict[str, Any]:
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ImageError(f"image record {path} is unreadable: {exc}") from exc
        if (
            not isinstance(record, dict)
            or record.get("version") != _RECORD_VERSION
            or not isinstance(record.get("name"), str)
            or not isinstance(record.get("layers"), list)
            or not all(
                isinstance(layer, dict) and _is_sha256(layer.get("diff_id"))
                for layer in record["layers"]
            )
        ):
            raise ImageError(f"image record {path} is malformed; re-import the image")
        return record

    def _read_record(self, reference: str) -> dict[str, Any] | None:
        path = self._record_path(reference)
        if not path.exists():
            return None
        return self._load_record(path)

    def _try_read_record(self, reference: str) -> dict[str, Any] | None:
        try:
            return self._read_record(reference)
        except ImageError as exc:
            _log.warning("%s", exc)
            return None

    @staticmethod
    def _record_layer_ids(record: dict[str, Any]) -> builtins.list[str]:
        return [str(layer["diff_id"]) for layer in record["layers"]]

    def _lowerdirs(self, record: dict[str, Any]) -> tuple[Path, ...]:
        """Layer directories for overlayfs, bottom first.

        Layers with no tar entries are left out: they change nothing, and images often repeat
        the same empty layer, which overlayfs refuses (the same lowerdir twice). An image made
        only of empty layers keeps one, so it always has a lowerdir.
        """
        layers = record["layers"]
        kept = [layer for layer in layers if layer.get("empty") is not True] or layers[:1]
        return tuple(self._layers / str(layer["diff_id"]).split(":", 1)[1] for layer in kept)

    def _image_from_record(self, record: dict[str, Any]) -> Image:
        try:
            config = record["config"]
            return Image(
                name=record["name"],
                digest=str(record["digest"]),
                layers=self._lowerdirs(record),
                config=ImageConfig(
                    env=[str(v) for v in config["env"]],
                    working_dir=str(config["working_dir"]),
                    user=str(config["user"]),
                    entrypoint=[str(v) for v in config["entrypoint"]],
                    cmd=[str(v) for v in config["cmd"]],
                ),
                size=sum(int(layer["size"]) for layer in record["layers"]),
                created_at=str(record["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(
                f"image record for {record.get('name')!r} is malformed ({exc!r}); re-import it"
            ) from exc

    # -- layers ----------------------------------------------------------------------------

    def _layer_meta(self, diff_id: str) -> _StoredLayer | None:
        """The stored layer ``diff_id`` if it is complete (directory and metadata), else None."""
        hex_ = diff_id.split(":", 1)[1]
        if not (self._layers / hex_).is_dir():
            return None
        try:
            meta = json.loads((self._layers / f"{hex_}.json").read_bytes())
            return _StoredLayer(
                diff_id, int(meta["size"]), int(meta["tar_size"]), meta.get("entries") == 0
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _blobmap_path(self, digest: str) -> Path:
        algorithm, hex_ = digest.split(":", 1)
        return self._blobmap / algorithm / hex_

    def _blobmap_get(self, digest: str) -> str | None:
        try:
            value = self._blobmap_path(digest).read_text().strip()
        except OSError:
            return None
        return value if _is_sha256(value) else None

    def _blobmap_put(self, digest: str, diff_id: str) -> None:
        if digest == diff_id:
            return  # uncompressed blob: the diff_id lookup already finds it
        path = self._blobmap_path(digest)
        if self._blobmap_get(digest) == diff_id:
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_atomic(path, diff_id.encode())

    def _ensure_layer(
        self, layer: LayerSource, scratch: Path, created: builtins.list[str]
    ) -> _StoredLayer:
        """Make the layer available in the store (reusing a stored copy) and describe it.

        A stored layer is only reused after checking that the input really holds it: its blob
        digest is recomputed (blob digests the store has seen map to their diff_id), or, when
        only a diff_id is claimed, the decompressed tar is hashed. Nothing is unpacked then.
        """
        algorithm = layer.digest.split(":", 1)[0] if layer.digest else "sha256"
        mapped = self._blobmap_get(layer.digest) if layer.digest else None
        candidate = mapped or layer.diff_id or (layer.digest if layer.verified else None)
        if candidate is not None and (meta := self._layer_meta(candidate)) is not None:
            if not layer.verified:
                self._verify_stored(layer, algorithm, candidate, raw_only=mapped is not None)
            return meta

        dest = Path(tempfile.mkdtemp(prefix="layer-", dir=scratch)) / "tree"
        with layer.open() as raw:
            result = unpack_layer(raw, dest, algorithm=algorithm, media_type=layer.media_type)
        try:
            if layer.digest is not None and result.digest != layer.digest:
                raise _mismatch(layer.label, "digest", layer.digest, result.digest)
            if layer.diff_id is not None and result.diff_id != layer.diff_id:
                raise _mismatch(layer.label, "diff_id", layer.diff_id, result.diff_id)
            stored = _StoredLayer(result.diff_id, result.size, result.tar_size, result.entries == 0)
            existing = self._layer_meta(result.diff_id)
            if existing is not None:
                # Same content under another compression (or an unverifiable directory input).
                stored = existing
            else:
                final = self._layers / stored.hex
                if final.exists():  # a directory without metadata: an interrupted removal
                    self._delete_layer(stored.diff_id)
                record = {
                    "diff_id": stored.diff_id,
                    "size": stored.size,
                    "tar_size": stored.tar_size,
                    "entries": result.entries,
                }
                _write_atomic(self._layers / f"{stored.hex}.json", json.dumps(record).encode())
                os.rename(dest, final)
                created.append(stored.diff_id)
        finally:
            _rmtree(dest)
        self._blobmap_put(result.digest, result.diff_id)
        return stored

    def _verify_stored(
        self, layer: LayerSource, algorithm: str, diff_id: str, *, raw_only: bool
    ) -> None:
        """Check that ``layer`` really is the stored layer ``diff_id`` before reusing it.

        ``raw_only``: the store itself mapped the blob digest to ``diff_id`` when it unpacked
        that blob, so recomputing the blob digest suffices (no decompression).
        """
        with layer.open() as raw:
            if raw_only:
                digest, actual_diff_id = hash_blob(raw, algorithm=algorithm), diff_id
            else:
                digests = hash_layer(raw, algorithm=algorithm, media_type=layer.media_type)
                digest, actual_diff_id = digests.digest, digests.diff_id
        if layer.digest is not None and digest != layer.digest:
            raise _mismatch(layer.label, "digest", layer.digest, digest)
        if actual_diff_id != diff_id:
            raise _mismatch(layer.label, "diff_id", diff_id, actual_diff_id)
        if layer.digest is not None:
            self._blobmap_put(layer.digest, diff_id)

    def _delete_layer(self, diff_id: str) -> None:
        hex_ = diff_id.split(":", 1)[1]
        final = self._layers / hex_
        # Rename first, so a crash never leaves a partly deleted layer looking complete.
        trash = Path(tempfile.mkdtemp(prefix="delete-", dir=self._tmp))
        try:
            with suppress(FileNotFoundError):
                os.rename(final, trash / "layer")
            with suppress(FileNotFoundError):
                os.unlink(self._layers / f"{hex_}.json")
        finally:
            _rmtree(trash)

    def _referenced_layers(self) -> set[str] | None:
        """diff_ids used by any image; None if some record is unreadable (then keep all)."""
        referenced: set[str] = set()
        for path in self._record_files():
            try:
                referenced.update(self._record_layer_ids(self._load_record(path)))
            except ImageError as exc:
                _log.warning("not freeing layers: %s", exc)
                return None
        return referenced

    def _free_unreferenced(self, candidates: Iterable[str]) -> None:
        referenced = self._referenced_layers()
        if referenced is None:
            return
        mounted = _mounted_layer_names(self._layers, self._root.parent / "sandboxes")
        freed = {c for c in set(candidates) - referenced if c.split(":", 1)[1] not in mounted}
        for diff_id in freed:
            self._delete_layer(diff_id)
        if freed:
            self._prune_blobmap(freed)

    def _prune_blobmap(self, freed: set[str], *, drop_dangling: bool = False) -> None:
        for algorithm_dir in self._blobmap.iterdir():
            for entry in algorithm_dir.iterdir():
                try:
                    value = entry.read_text().strip()
                    if value in freed or (
                        drop_dangling and not (self._layers / value.split(":", 1)[-1]).is_dir()
                    ):
                        entry.unlink()
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        _log.warning("could not prune %s: %s", entry, exc)


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounted_layer_names(layers: Path, bundles: Path) -> set[str]:
    """Names (hex digests) of the directories in ``layers`` that are lower layers of a mounted
    overlay.

    Read from ``/proc/self/mountinfo`` (overlays mounted in this mount namespace) and from the
    mount table of each sandbox's init (``init.pid`` in its bundle under ``bundles``): a running
    sandbox's root overlay lives only in its own mount namespace. Overlays list their layers as
    ``lowerdir=a:b`` or, with the new mount API, as one ``lowerdir+=a`` per layer.
    """
    names: set[str] = set()
    lines: list[str] = []
    tables = [_MOUNTINFO]
    with contextlib.suppress(OSError):
        for pid_file in bundles.glob("*/init.pid"):
            with contextlib.suppress(OSError, ValueError):
                tables.append(Path(f"/proc/{int(pid_file.read_text())}/mountinfo"))
    for table in tables:
        with contextlib.suppress(OSError):  # a sandbox that just went: nothing of it in use
            lines += table.read_text().splitlines()
    for line in lines:
        _, sep, rest = line.partition(" - ")
        fields = rest.split(" ")
        if not sep or len(fields) < 3 or fields[0] != "overlay":
            continue
        for option in fields[2].split(","):
            key, _, value = option.partition("=")
            if key not in ("lowerdir", "lowerdir+"):
                continue
            for path in value.split(":"):
                parent, _, name = _unescape_mountinfo(path).rstrip("/").rpartition("/")
                # A sandbox in a user namespace mounts idmapped clones of the layers, attached
                # at <data-dir>/sandboxes/<id>/lower/<i>/<name> (see runtime.runc._userns).
                clone = parent.startswith(f"{bundles}/") and parent.rpartition("/")[0].endswith(
                    "/lower"
                )
                if parent == str(layers) or clone:
                    names.add(name)
    return names
