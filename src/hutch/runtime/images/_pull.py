"""Pulling images from OCI registries with ``skopeo`` into the local store.

A pull is ``skopeo copy docker://<qualified reference> oci:<scratch dir>:pulled`` followed by the
store's own OCI-layout import, so layers pass through the same hostile-tar extractor as any
import and are shared (keyed by diff_id) with every other image.

* **Names** resolve like Docker's (:func:`qualify_reference`): the local store first (the name as
  given, then its qualified form), then a pull of the qualified form. Names under ``local/`` are
  never pulled. A client-supplied name is validated by the reference grammar before it gets
  here, and only ever reaches skopeo as ``docker://<host>/<path>[:tag|@digest]`` after ``--``:
  it cannot become an option, a transport or a local path.
* **Platforms**: skopeo picks the host's architecture (``linux/<arch>``) from an index.
* **Credentials**: the server's auth file (``--authfile`` format, i.e. containers-auth.json or
  docker's config.json), or per pull a username and password, written to a private temporary
  auth file (never put on a command line, where host users could read them).
* **Mirrors and registry options** come from a registries.conf (``--registries-conf``).
* **One pull per image**: concurrent requests for the same reference (and credentials) share
  one skopeo run; each can follow its progress.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._layouts import host_arch
from ._reference import (
    DOCKER_HUB,
    is_local_only,
    normalize_reference,
    normalize_registry,
    qualify_reference,
)
from ._store import ImageStore
from ._types import Image, ImageError, ImageNotFoundError

__all__ = ["Credentials", "ImagePullError", "ImagePuller", "RegistryConfig"]

_log = logging.getLogger(__name__)

_POLICY = Path("/etc/containers/policy.json")
_PROGRESS_INTERVAL = 0.5
_MB = 1024 * 1024


@dataclass(frozen=True)
class RegistryConfig:
    """How the server reaches registries (``hutch serve`` flags)."""

    #: Registry for names without one (``python:3.12-slim``); Docker Hub adds ``library/``.
    default_registry: str = DOCKER_HUB
    #: A registries.conf(5) file: mirrors, blocked and insecure registries.
    registries_conf: Path | None = None
    #: Registry credentials in containers-auth.json(5) / docker config.json form.
    auth_file: Path | None = None
    #: Registries reached without TLS verification (plain http or self-signed certificates).
    insecure_registries: tuple[str, ...] = ()
    #: False: only images already in the local store are used.
    enabled: bool = True
    #: Seconds one skopeo copy may take.
    timeout: float = 1800.0
    #: Pulls (skopeo copies and imports) running at once; more wait their turn.
    max_concurrent: int = 4
    skopeo: str = "skopeo"


@dataclass(frozen=True)
class Credentials:
    """A username and password (or token) for one pull."""

    username: str
    password: str

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"Credentials(username={self.username!r}, password=***)"


class ImagePullError(ImageError):
    """The image is neither in the store nor pullable; ``reason`` says why in one word:
    ``not_found``, ``unauthorized``, ``unreachable``, ``platform``, ``disabled``, ``failed``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


Progress = Callable[[str], None]


class _Pull:
    """One running pull: its task and the progress listeners of everyone waiting on it."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self.message = f"Pulling {reference}"
        self.listeners: list[Progress] = []
        self.task: asyncio.Task[Image] | None = None
        self.waited = False  # someone awaited the result (and reports its failure)

    def report(self, message: str) -> None:
        if message == self.message:
            return
        self.message = message
        for listener in list(self.listeners):
            try:
                listener(message)
            except Exception:  # a listener's bug must not break the pull
                _log.exception("image pull progress listener failed")


def _explain(output: str, source: str, credentials: str | None) -> ImagePullError:
    """Turn skopeo's error output into a message saying why and what to do.

    ``credentials`` says which credentials were offered (None: none).
    """
    text = output.strip()
    # skopeo ends with `level=fatal msg="..."`; that message is the useful part.
    detail = text.rsplit('msg="', 1)[-1].rstrip('"') if 'msg="' in text else text
    detail = detail.splitlines()[-1] if detail else "skopeo failed without a message"
    detail = detail.replace('\\"', '"')
    lower = text.lower()
    where = f"Image {source!r} could not be pulled"
    denied = ("unauthorized", "authentication required", "denied", " 401", " 403")
    if any(s in lower for s in denied):
        if credentials:
            return ImagePullError(
                f"{where}: the registry refused the credentials ({credentials}: {detail}); "
                "check the username and password",
                "unauthorized",
            )
        return ImagePullError(
            f"{where}: the registry requires credentials or refused access ({detail}); give "
            "the template registry_username/registry_password, or configure the server's "
            "--registry-auth file",
            "unauthorized",
        )
    if any(s in lower for s in ("manifest unknown", "name unknown", "not found", "404")):
        return ImagePullError(
            f"{where}: the registry has no such image or tag ({detail}); check the name",
            "not_found",
        )
    if "no image found in manifest list" in lower or "choosing image instance" in lower:
        return ImagePullError(
            f"{where}: it has no linux/{host_arch()} variant ({detail})", "platform"
        )
    if any(
        s in lower
        for s in (
            "pinging container registry",
            "dial tcp",
            "no such host",
            "connection refused",
            "i/o timeout",
            "tls",
            "x509",
            "server gave http response",
            "network is unreachable",
            "timeout",
        )
    ):
        return ImagePullError(
            f"{where}: the registry is unreachable ({detail}); check the host name, the "
            "network, and for plain-http registries the server's --insecure-registry",
            "unreachable",
        )
    return ImagePullError(f"{where}: {detail}", "failed")


def _auth_file(path: Path, registry: str, credentials: Credentials, base: Path | None) -> Path:
    """Write a containers-auth.json holding ``credentials`` for ``registry`` (mode 0600).

    Entries of the server's own auth file ``base`` are kept for other registries (mirrors).
    """
    auths: dict[str, object] = {}
    if base is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            auths.update(json.loads(base.read_bytes()).get("auths", {}))
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    auths[registry] = {"auth": token}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as out:
        json.dump({"auths": auths}, out)
    return path


def _bytes_below(root: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(root / "blobs" / "sha256"):
            with contextlib.suppress(OSError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class ImagePuller:
    """Finds images in the store and pulls the missing ones (see the module docstring).

    Pull tasks belong to the puller: :meth:`aclose` cancels them (killing skopeo).
    """

    def __init__(self, store: ImageStore, config: RegistryConfig | None = None) -> None:
        self.store = store
        self.config = config or RegistryConfig()
        self._default_registry = normalize_registry(self.config.default_registry)
        self._insecure = {normalize_registry(h) for h in self.config.insecure_registries}
        self._pulls: dict[tuple[str, Credentials | None], _Pull] = {}
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        # Scratch space for skopeo; each pull holds an flock on its directory, so a start-up
        # (of this or another process) only removes the leftovers of interrupted pulls.
        self._scratch = store.root / "pulls"
        #: Told each pull's outcome (True: pulled), for the server's metrics.
        self.on_outcome: Callable[[bool], None] | None = None
        self._scratch.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self._scratch, 0o700)
        self._clean_scratch()

    # -- resolving -------------------------------------------------------------------------

    def qualify(self, name: str) -> str:
        """The fully qualified reference ``name`` is pulled as."""
        return qualify_reference(name, self._default_registry)

    def find_local(self, name: str) -> Image | None:
        """The stored image ``name`` stands for (as given, then qualified), or None. Blocking."""
        for candidate in dict.fromkeys((normalize_reference(name), self.qualify(name))):
            with contextlib.suppress(ImageNotFoundError):
                return self.store.get(candidate)
        return None

    async def resolve(
        self,
        name: str,
        *,
        credentials: Credentials | None = None,
        progress: Progress | None = None,
    ) -> Image:
        """The image ``name`` names: from the store, else pulled (waiting for the pull).

        Raises :class:`ImageError` for an invalid name and :class:`ImagePullError` (with a
        message saying why) when the image is neither stored nor pullable.
        """
        image = await asyncio.to_thread(self.find_local, name)
        if image is not None:
            return image
        if is_local_only(name):
            raise ImagePullError(
                f"Image {normalize_reference(name)!r} is not in the local store, and names "
                "under local/ are never pulled; import it with `hutch image import NAME PATH`",
                "not_found",
            )
        if not self.config.enabled:
            raise ImagePullError(
                f"Image {normalize_reference(name)!r} is not in the local store and this "
                "server does not pull images; import it with `hutch image import NAME PATH`",
                "disabled",
            )
        return await self.pull(name, credentials=credentials, progress=progress)

    async def pull(
        self,
        name: str,
        *,
        credentials: Credentials | None = None,
        progress: Progress | None = None,
    ) -> Image:
        """Pull ``name`` (qualified) from its registry into the store, replacing a stored copy.

        Joins a pull of the same reference already running instead of starting another.
        """
        pull = self._start(self.qualify(name), credentials)
        pull.waited = True
        if progress is not None:
            pull.listeners.append(progress)
            progress(pull.message)
        try:
            assert pull.task is not None
            return await asyncio.shield(pull.task)
        finally:
            if progress is not None:
                with contextlib.suppress(ValueError):
                    pull.listeners.remove(progress)

    def prefetch(self, name: str, *, credentials: Credentials | None = None) -> None:
        """Start pulling ``name`` in the background unless it is stored (template creation).

        Failures are logged only; they surface again when a sandbox needs the image.
        """
        if not self.config.enabled or is_local_only(name):
            return
        pull = self._start(self.qualify(name), credentials, only_if_missing=name)
        assert pull.task is not None

    async def aclose(self) -> None:
        tasks = [p.task for p in self._pulls.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- pulling ---------------------------------------------------------------------------

    def _start(
        self, reference: str, credentials: Credentials | None, only_if_missing: str | None = None
    ) -> _Pull:
        key = (reference, credentials)
        pull = self._pulls.get(key)
        if pull is not None:
            return pull
        pull = _Pull(reference)
        self._pulls[key] = pull
        pull.task = asyncio.create_task(
            self._run(pull, credentials, only_if_missing), name=f"pull {reference}"
        )

        def _forget(task: asyncio.Task[Image]) -> None:
            if self._pulls.get(key) is pull:
                del self._pulls[key]
            if not task.cancelled() and task.exception() is not None and not pull.waited:
                _log.warning("%s", task.exception())  # nobody else will report it

        pull.task.add_done_callback(_forget)
        return pull

    async def _run(
        self, pull: _Pull, credentials: Credentials | None, only_if_missing: str | None
    ) -> Image:
        if only_if_missing is not None:
            image = await asyncio.to_thread(self.find_local, only_if_missing)
            if image is not None:
                return image
        try:
            image = await self._pull(pull, credentials)
        except Exception:
            if self.on_outcome is not None:
                self.on_outcome(False)
            raise
        if self.on_outcome is not None:
            self.on_outcome(True)
        return image

    async def _pull(self, pull: _Pull, credentials: Credentials | None) -> Image:
        async with self._slots, self._scratch_dir_async() as scratch:
            await self._copy(pull, scratch, credentials)
            loop = asyncio.get_running_loop()

            def unpacking(done: int, total: int) -> None:
                message = f"Unpacking {pull.reference}: layer {done + 1} of {total}"
                loop.call_soon_threadsafe(pull.report, message)

            image = await asyncio.to_thread(
                self.store.import_path, pull.reference, scratch / "layout", progress=unpacking
            )
        _log.info("pulled %s (%s, %d layers)", image.name, image.digest, len(image.layers))
        return image

    def _command(self, reference: str, scratch: Path, auth: Path | None) -> list[str]:
        registry = reference.split("/", 1)[0]
        # skopeo refuses a tag together with a digest; the digest is what counts.
        source = reference
        if "@" in source:
            repository, digest = source.split("@", 1)
            last = repository.rsplit("/", 1)
            if ":" in last[-1]:
                repository = repository.rsplit(":", 1)[0]
            source = f"{repository}@{digest}"
        argv = [self.config.skopeo]
        if not _POLICY.exists():
            argv.append("--insecure-policy")  # no system trust policy: accept, as docker does
        if self.config.registries_conf is not None:
            argv += ["--registries-conf", str(self.config.registries_conf)]
        argv += ["--override-os", "linux", "--override-arch", host_arch(), "copy"]
        if auth is not None:
            argv += ["--src-authfile", str(auth)]
        if registry in self._insecure:
            argv.append("--src-tls-verify=false")
        argv += ["--", f"docker://{source}", f"oci:{scratch / 'layout'}:pulled"]
        return argv

    async def _copy(self, pull: _Pull, scratch: Path, credentials: Credentials | None) -> None:
        reference = pull.reference
        registry = reference.split("/", 1)[0]
        auth = self.config.auth_file
        if credentials is not None:
            auth = _auth_file(scratch / "auth.json", registry, credentials, auth)
        argv = self._command(reference, scratch, auth)
        _log.info("pulling %s", reference)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(scratch)},
            )
        except FileNotFoundError:
            raise ImagePullError(
                f"Image {reference!r} could not be pulled: {self.config.skopeo!r} is not "
                "installed (Debian package skopeo)",
                "failed",
            ) from None
        assert proc.stdout is not None
        output: list[str] = []
        blobs = 0

        async def read_output() -> None:
            nonlocal blobs
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if len(output) < 200:
                    output.append(line)
                if line.startswith("Copying blob"):
                    blobs += 1

        async def report() -> None:
            while True:
                await asyncio.sleep(_PROGRESS_INTERVAL)
                received = await asyncio.to_thread(_bytes_below, scratch / "layout")
                layers = f", {blobs} layer{'s' if blobs != 1 else ''}" if blobs else ""
                pull.report(f"Pulling {reference}: {received / _MB:.1f} MB received{layers}")

        reporter = asyncio.create_task(report())
        try:
            async with asyncio.timeout(self.config.timeout):
                await read_output()
                code = await proc.wait()
        except TimeoutError:
            raise ImagePullError(
                f"Image {reference!r} could not be pulled: no result after "
                f"{self.config.timeout:.0f}s; the registry is too slow or unreachable",
                "unreachable",
            ) from None
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if code != 0:
            offered = "the template's registry credentials" if credentials is not None else None
            if offered is None and self._auth_file_has(registry):
                offered = "the server's --registry-auth file"
            raise _explain("\n".join(output), reference, offered)

    def _auth_file_has(self, registry: str) -> bool:
        if self.config.auth_file is None:
            return False
        try:
            auths = json.loads(self.config.auth_file.read_bytes()).get("auths", {})
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(auths, dict) and registry in auths

    # -- scratch directories ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _scratch_dir_async(self) -> AsyncIterator[Path]:
        scratch = self._scratch_dir()
        path = await asyncio.to_thread(scratch.__enter__)
        try:
            yield path
        finally:
            await asyncio.to_thread(scratch.__exit__, None, None, None)

    @contextlib.contextmanager
    def _scratch_dir(self) -> Iterator[Path]:
        while True:
            path = Path(tempfile.mkdtemp(prefix="pull-", dir=self._scratch))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.isdir(path):  # not removed by a start-up cleaning before we locked it
                break
            os.close(fd)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def _clean_scratch(self) -> None:
        for entry in self._scratch.iterdir():
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                entry.unlink(missing_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(entry, ignore_errors=True)
            except BlockingIOError:
                pass  # a pull in progress (possibly in another process)
            finally:
                os.close(fd)
