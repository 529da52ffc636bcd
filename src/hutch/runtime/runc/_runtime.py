"""The runc implementation of the runtime seam.

Layout under ``data_dir``::

    runc/                 runc's own state (``runc --root``), private to this server
    sandboxes/<id>/       OCI bundle: config.json, env.json, init.pid, exec/ (process specs of
                          runc exec), lower/ (idmapped layers, only while mounting)
    storage.img           btrfs image holding every sandbox's writable layer (see _storage)
    storage/<id>/         that sandbox's subvolume, size-limited: upper/, work/
    bin/                  hutch-init, built from its source (see _spawner)
    netns/<id>            network namespace of an egress sandbox (a bind mount; see _network)
    cni/                  CNI state of egress sandboxes: <id>.json, ipam/

And outside it, reachable from inside a sandbox's user namespace (see ``RuncRuntime._shared``)::

    /run/hutch/<data-dir hash>/<id>/   rootfs/ (the overlay), hosts, hostname, resolv.conf
    /run/hutch/<data-dir hash>/hutch-init-<hash>

Every sandbox lives in cgroup ``/hutch/<id>``; each command in a freezer sub-cgroup of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import BinaryIO

from hutch.runtime import _fs, _netns, _users
from hutch.runtime._interface import (
    ExecSpec,
    NetworkMode,
    ResourceExhausted,
    Runtime,
    RuntimeError_,
    SandboxNotFound,
    SandboxSpec,
    SpawnError,
)
from hutch.runtime.runc import (
    _cgroups,
    _keyring,
    _network,
    _spawner,
    _spec,
    _storage,
    _userns,
)
from hutch.runtime.runc._overlay import mount_overlay
from hutch.runtime.runc._process import (
    DetachedProcess,
    PtyProcess,
    RuncProcess,
    check_peer_is_root,
)

log = logging.getLogger("hutch.runtime")

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
HOME = "/home/user"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PUBLIC_ROOT = Path("/run/hutch")  # see RuncRuntime._shared
GiB = 1 << 30
DEFAULT_STORAGE_POOL = 256 * GiB  # sparse: takes host disk only as sandboxes write
DEFAULT_STORAGE_LIMIT = 10 * GiB  # per sandbox, when its template names none
#: How long a sandbox's processes may take to die once SIGKILLed (unthrottled, thawed).
KILL_TIMEOUT = 5.0


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise RuntimeError_(f"umount {target}: {os.strerror(err)}")


def _become_subreaper() -> None:
    """Make orphans of our children (detached commands, sandbox inits) our children.

    Detached commands need it: their exit status is read with ``waitid`` (see
    :class:`DetachedProcess`). Sandbox inits are reaped when their sandbox is deleted.
    """
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise RuntimeError_(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _reap_nohang(pidfd: int) -> None:
    """Reap the exited process of ``pidfd`` if it is our child (never blocks)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)


def _is_mounted(target: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class RuncRuntime(Runtime):
    def __init__(
        self,
        data_dir: Path,
        runc: str = "runc",
        *,
        storage_pool_bytes: int = DEFAULT_STORAGE_POOL,
        storage_limit_bytes: int = DEFAULT_STORAGE_LIMIT,
        idmap: _userns.IdMap | None = _userns.IdMap(),
        network: _network.EgressConfig | None = None,
    ) -> None:
        self.state_root = data_dir / "runc"
        self.bundles = data_dir / "sandboxes"
        self.state_root.mkdir(parents=True, exist_ok=True)
        self.bundles.mkdir(parents=True, exist_ok=True)
        self._runc_bin = shutil.which(runc) or runc
        _become_subreaper()
        self._keyring_ok = True
        self._private_keyring()
        self._init_pids: dict[str, int] = {}
        self._env: dict[str, dict[str, str]] = {}
        self._init_bin = _spawner.build_init(data_dir / "bin")
        self._public: Path | None = None
        if idmap is not None:
            digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:16]
            self._public = PUBLIC_ROOT / digest
            self._public.mkdir(mode=0o711, parents=True, exist_ok=True)
            for d in (PUBLIC_ROOT, self._public):
                d.chmod(0o711)
            if self._init_bin is not None:  # bind-mounted by runc from inside the namespace
                public_init = self._public / self._init_bin.name
                if not public_init.exists():
                    shutil.copy2(self._init_bin, public_init)
                self._init_bin = public_init
        # Control sockets of the inits this server started (adopted sandboxes have none and
        # start commands with runc exec).
        self._spawners: dict[str, _spawner.Spawner] = {}
        self.network = _network.EgressNetwork(data_dir, network)
        # Sandbox ids 0..65535 are host ids idmap.base..; None: no user namespace.
        self.idmap = idmap
        self._userns_fd: int | None = None
        if idmap is not None:
            try:
                self._userns_fd = _userns.namespace_fd(idmap)
            except _userns.UsernsError as exc:
                raise RuntimeError_(str(exc)) from exc
        #: Spare clones being made, by snapshot id (tasks owned here, awaited on close).
        self._refills: dict[str, asyncio.Task[None]] = {}
        self.storage = _storage.StoragePool(data_dir, storage_pool_bytes)
        self.storage_limit_bytes = storage_limit_bytes
        try:
            self.storage.open()
            self.storage.sweep()
        except _storage.StorageError as exc:
            raise RuntimeError_(f"cannot set up sandbox storage: {exc}") from exc

    async def aclose(self) -> None:
        for refill in list(self._refills.values()):
            with contextlib.suppress(Exception):
                await refill
        self.storage.close()
        if self._userns_fd is not None:
            os.close(self._userns_fd)
            self._userns_fd = None
        if self._public is not None and self._public.is_dir():
            with os.scandir(self._public) as entries:
                in_use = any(e.is_dir(follow_symlinks=False) for e in entries)
            if not in_use:  # only the init's copy is left: nothing of a sandbox
                await asyncio.to_thread(shutil.rmtree, self._public, True)
        # The host's egress bridge and firewall go once no sandbox uses them; running sandboxes
        # (kept across a restart) keep theirs.
        await self.network.aclose()

    # -- helpers -------------------------------------------------------------------------------

    def _private_keyring(self) -> None:
        """Before starting runc: the session keyring its containers inherit is a private one.

        Containers run with ``--no-new-keyring`` (see _keyring). Should the kernel refuse
        keyrings, they inherit the server's own, still out of their reach: seccomp denies them
        every keyring call.
        """
        if not self._keyring_ok:
            return
        try:
            _keyring.join_private_session()
        except _keyring.KeyringError as exc:
            self._keyring_ok = False
            log.warning("no private session keyring for sandboxes (%s); they inherit ours", exc)

    async def _runc(
        self, *args: str, log: Path | None = None, stdin: int | None = None
    ) -> tuple[int, str]:
        """Run a runc subcommand; returns (exit code, output).

        With ``log``, runc's stdio goes to /dev/null (``runc run -d`` hands its stdio to the
        container's init, so a pipe would never see EOF) and its messages are read from the log.
        ``stdin`` (default /dev/null) is what ``runc run -d`` hands the init as its stdin.
        """
        log_args = ["--log", str(log), "--log-format", "text"] if log else []
        pipe = asyncio.subprocess.DEVNULL if log else asyncio.subprocess.PIPE
        self._private_keyring()
        proc = await asyncio.create_subprocess_exec(
            self._runc_bin,
            "--root",
            str(self.state_root),
            *log_args,
            *args,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
            stdout=pipe,
            stderr=asyncio.subprocess.STDOUT if not log else asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        text = (out or b"").decode(errors="replace").strip()
        if log and proc.returncode:
            with contextlib.suppress(FileNotFoundError):
                text = log.read_text(errors="replace").strip()
        return proc.returncode or 0, text

    def _bundle(self, sandbox_id: str) -> Path:
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise SandboxNotFound(f"invalid sandbox id {sandbox_id!r}")
        return self.bundles / sandbox_id

    def init_pid(self, sandbox_id: str) -> int:
        pid = self._init_pids.get(sandbox_id)
        if pid is None:
            try:
                pid = int((self._bundle(sandbox_id) / "init.pid").read_text())
            except (FileNotFoundError, ValueError) as exc:
                raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc
            self._init_pids[sandbox_id] = pid
        return pid

    # -- lifecycle -----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> None:
        bundle = self._bundle(spec.id)
        if bundle.exists() or (self.state_root / spec.id).exists() or self.network.has(spec.id):
            await self.delete(spec.id)
        try:
            await asyncio.to_thread(self._prepare_bundle, spec, bundle)
            await self._run_container(spec.id, bundle, spec.network)
            pid = self.init_pid(spec.id)
            root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                uid, gid = self.file_owner(spec.id)
                _fs.makedirs(root, HOME, uid=uid, gid=gid)
            finally:
                os.close(root)
            if spec.snapshot is not None:  # after the create: its commit would slow it down
                self._refill(spec.snapshot)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.delete(spec.id))
            raise

    async def _run_container(self, sandbox_id: str, bundle: Path, network: NetworkMode) -> None:
        """``runc run -d``; the init gets one end of a fresh control socket as its stdin.

        Egress: ``runc create``, plug the sandbox's own network namespace in, ``runc start``
        (see _network: the namespace must be the one runc makes, owned by the sandbox's user
        namespace). The caller removes what a failure leaves.
        """
        egress = network == "egress"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                rc, out = await self._runc(
                    *(["create"] if egress else ["run", "-d"]),
                    # No keyring per container: one uid's key quota would cap sandboxes per host.
                    "--no-new-keyring",
                    "--pid-file",
                    str(bundle / "init.pid"),
                    "--bundle",
                    str(bundle),
                    sandbox_id,
                    log=bundle / "runc.log",
                    stdin=theirs.fileno(),
                )
            finally:
                theirs.close()
            if rc != 0:
                raise RuntimeError_(f"runc could not start the sandbox: {out}")
            if egress:
                await self.network.attach(sandbox_id, self.init_pid(sandbox_id))
                rc, out = await self._runc("start", sandbox_id)
                if rc != 0:
                    raise RuntimeError_(f"runc could not start the sandbox: {out}")
        except BaseException:
            ours.close()
            raise
        if self._init_bin is None:
            ours.close()
            return
        old = self._spawners.pop(sandbox_id, None)
        if old is not None:
            old.close()
        self._spawners[sandbox_id] = _spawner.Spawner(ours)

    def _shared(self, sandbox_id: str) -> Path:
        """Where the sandbox's root filesystem is mounted and the files bind-mounted into it live.

        runc prepares the root filesystem from inside the sandbox's user namespace, as a host
        nobody: these paths must be reachable for it, so with a user namespace they are under
        ``/run/hutch`` (directories 0711) rather than in the data dir (0700). Without one they are
        the bundle.
        """
        if self._public is None:
            return self._bundle(sandbox_id)
        self._bundle(sandbox_id)  # validates the id
        return self._public / sandbox_id

    def _prepare_bundle(self, spec: SandboxSpec, bundle: Path) -> None:
        bundle.mkdir(mode=0o700)
        for d in ("exec", "empty"):
            (bundle / d).mkdir()
        shared = self._shared(spec.id)
        if shared != bundle:
            shared.mkdir(mode=0o711)
            shared.chmod(0o711)
        (shared / "rootfs").mkdir()
        limit = spec.storage_bytes or self.storage_limit_bytes
        try:
            if spec.snapshot is not None:  # its files: a copy-on-write clone, nothing copied
                self.storage.clone(spec.snapshot, spec.id, limit)
            else:  # the sandbox's root owns its writable layer's top
                self.storage.allocate(spec.id, limit, self.file_owner(spec.id))
        except _storage.StorageError as exc:
            raise RuntimeError_(str(exc)) from exc
        (shared / "hostname").write_text(spec.hostname + "\n")
        (shared / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{spec.hostname}\n"
        )
        # Loopback only: an empty resolver config, so lookups fail fast.
        (shared / "resolv.conf").write_text(
            self.network.resolv_conf()
            if spec.network == "egress"
            else "# no network: this sandbox has loopback only\n"
        )
        uid, gid = self.file_owner(spec.id)
        for name in ("hostname", "hosts", "resolv.conf"):  # the sandbox's root may edit them
            (shared / name).chmod(0o644)
            os.chown(shared / name, uid, gid)
        self._mount_rootfs(spec, bundle)

    def _mount_rootfs(self, spec: SandboxSpec, bundle: Path) -> None:
        """Overlay the image's layers under the sandbox's writable layer; write env and config."""
        shared = self._shared(spec.id)
        layer = self.storage.path(spec.id)
        rootfs = str(shared / "rootfs")
        layers = [str(p) for p in reversed(spec.image.layers)] or [str(bundle / "empty")]
        upper, work = str(layer / "upper"), str(layer / "work")
        if self._userns_fd is None:
            mount_overlay(rootfs, layers, upper, work)
        else:
            try:
                with _userns.idmapped_layers(layers, self._userns_fd, bundle / "lower") as shifted:
                    mount_overlay(rootfs, shifted, upper, work)
            except _userns.UsernsError as exc:
                raise RuntimeError_(str(exc)) from exc
        env = self.sandbox_env(spec)
        self._env[spec.id] = env
        (bundle / "env.json").write_text(json.dumps(env))
        (bundle / "env.json").chmod(0o600)
        init = str(self._init_bin) if self._init_bin else None
        cfg = _spec.config(spec, rootfs, str(shared), env, init, self.idmap)
        (bundle / "config.json").write_text(json.dumps(cfg))
        (bundle / "config.json").chmod(0o600)

    @staticmethod
    def sandbox_env(spec: SandboxSpec) -> dict[str, str]:
        env: dict[str, str] = {"PATH": DEFAULT_PATH}
        for item in spec.image.config.env:
            k, _, v = item.partition("=")
            if k:
                env[k] = v
        env.update({"HOME": HOME, "HOSTNAME": spec.hostname})
        env.update(spec.env)
        return env

    def env_of(self, sandbox_id: str) -> dict[str, str]:
        env = self._env.get(sandbox_id)
        if env is None:
            try:
                env = json.loads((self._bundle(sandbox_id) / "env.json").read_text())
            except FileNotFoundError as exc:
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist") from exc
            self._env[sandbox_id] = env
        return dict(env)

    async def _runc_ids(self) -> set[str]:
        rc, out = await self._runc("list", "-q")
        return set(out.split()) if rc == 0 else set()

    async def _wait_pid_gone(self, pid: int, timeout: float) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def _ready() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(pidfd, _ready)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            log.warning("sandbox init %d still alive after %.1fs", pid, timeout)
        else:
            # Re-parented to us (subreaper) once ``runc run -d`` exited: reap it. After a server
            # restart it is someone else's child, and that one reaps it.
            _reap_nohang(pidfd)
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    async def delete(self, sandbox_id: str) -> None:
        bundle = self._bundle(sandbox_id)
        await self._stop_container(sandbox_id, bundle)
        shared = self._shared(sandbox_id)
        if shared != bundle:
            await asyncio.to_thread(shutil.rmtree, shared, True)
        await asyncio.to_thread(self.storage.release, sandbox_id)
        await asyncio.to_thread(shutil.rmtree, bundle, True)

    async def _stop_container(self, sandbox_id: str, bundle: Path) -> None:
        """Kill every process, remove the container and its cgroups, unmount the root."""
        spawner = self._spawners.pop(sandbox_id, None)
        if spawner is not None:
            spawner.close()
        pid = self._init_pids.pop(sandbox_id, None)
        self._env.pop(sandbox_id, None)
        if pid is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int((bundle / "init.pid").read_text())
        # The kill runs unthrottled and thawed (see _cgroups): a fork bomb beside a CPU hog
        # under the sandbox's CPU limit otherwise starves its own dying processes for seconds.
        parent = _spec.cgroup_parent(sandbox_id)
        cgroups = _cgroups.sandbox_cgroups(parent)
        _cgroups.lift_cpu_limit(cgroups)
        _cgroups.thaw(cgroups)
        if not cgroups:  # no cgroup to find its processes by: runc knows its init
            await self._runc("kill", sandbox_id, "KILL")
        elif not await _cgroups.kill_sandbox(cgroups, KILL_TIMEOUT):
            raise RuntimeError_(
                f"sandbox {sandbox_id}: processes survived SIGKILL for {KILL_TIMEOUT:.0f} s "
                f"(pids {sorted(_cgroups.members(cgroups))[:10]}); try again"
            )
        if pid:
            await self._wait_pid_gone(pid, KILL_TIMEOUT)
        rc, out = await self._runc("delete", sandbox_id)
        if rc != 0 and "does not exist" not in out:
            await self._runc("delete", "--force", sandbox_id)
        left = await _cgroups.remove_sandbox(_cgroups.sandbox_cgroups(parent))
        if left:
            raise RuntimeError_(
                f"sandbox {sandbox_id}: cgroup {left[0]} is still busy after its processes were "
                "killed; try again"
            )
        # A stopped sandbox holds no address; starting it plugs it in again.
        await self.network.detach(sandbox_id)
        rootfs = str(self._shared(sandbox_id) / "rootfs")
        if _is_mounted(rootfs):
            _umount(rootfs)

    async def stop(self, sandbox_id: str) -> None:
        bundle = self._bundle(sandbox_id)
        if not (self.storage.path(sandbox_id) / "upper").is_dir():
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        await self._stop_container(sandbox_id, bundle)
        # Only the filesystem (the writable layer) and the bundle's fixed files stay.
        (bundle / "init.pid").unlink(missing_ok=True)
        for leftover in (bundle / "exec").glob("*"):
            leftover.unlink(missing_ok=True)

    async def start(self, spec: SandboxSpec) -> None:
        bundle = self._bundle(spec.id)
        if not (self.storage.path(spec.id) / "upper").is_dir():
            raise SandboxNotFound(f"sandbox {spec.id} does not exist")
        if await self.is_running(spec.id):
            return
        await self.stop(spec.id)  # whatever a stop interrupted by a crash left
        try:
            await asyncio.to_thread(self._mount_rootfs, spec, bundle)
            await self._run_container(spec.id, bundle, spec.network)
            self.init_pid(spec.id)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.stop(spec.id))
            raise

    async def discard_writes(
        self, sandbox_id: str, *, snapshot: str | None, storage_bytes: int | None
    ) -> None:
        if await self.is_running(sandbox_id):
            raise RuntimeError_(f"sandbox {sandbox_id} is running: stop it first")
        limit = storage_bytes or self.storage_limit_bytes
        try:
            await asyncio.to_thread(
                self.storage.reset, sandbox_id, snapshot, limit, self.file_owner(sandbox_id)
            )
        except _storage.StorageError as exc:
            if not (self.storage.path(sandbox_id) / "upper").is_dir():
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist") from exc
            raise RuntimeError_(str(exc)) from exc
        if snapshot is not None and (self.storage.snapshots / snapshot).is_dir():
            self._refill(snapshot)  # the reset may have taken its spare

    async def snapshot_ids(self) -> set[str]:
        return await asyncio.to_thread(self.storage.snapshot_ids)

    async def capture(self, sandbox_id: str, snapshot_id: str) -> None:
        self._bundle(sandbox_id)  # validates the id
        if not (self.storage.path(sandbox_id) / "upper").is_dir():
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        try:
            await asyncio.to_thread(self.storage.capture, sandbox_id, snapshot_id)
        except _storage.StorageError as exc:
            raise RuntimeError_(str(exc)) from exc
        self._refill(snapshot_id)

    def _refill(self, snapshot_id: str) -> None:
        """Make the snapshot's spare clone in the background (see ``StoragePool.spare``), so the
        next sandbox from it starts without waiting for a btrfs snapshot's commit."""
        if snapshot_id in self._refills:
            return

        async def refill() -> None:
            try:
                await asyncio.to_thread(self.storage.prepare_spare, snapshot_id)
            except _storage.StorageError as exc:
                log.warning("no spare clone of snapshot %s: %s", snapshot_id, exc)
            finally:
                self._refills.pop(snapshot_id, None)

        self._refills[snapshot_id] = asyncio.create_task(refill(), name=f"spare-{snapshot_id}")

    async def snapshot_usage(self, snapshot_id: str) -> int:
        return await asyncio.to_thread(
            _storage.disk_usage, self.storage.snapshots / snapshot_id / "upper"
        )

    async def delete_snapshot(self, snapshot_id: str) -> None:
        refill = self._refills.get(snapshot_id)
        if refill is not None:  # let it finish: its spare is dropped with the snapshot
            with contextlib.suppress(Exception):
                await asyncio.shield(refill)
        try:
            await asyncio.to_thread(self.storage.drop_snapshot, snapshot_id)
        except _storage.StorageError as exc:
            raise RuntimeError_(str(exc)) from exc

    async def list_ids(self) -> set[str]:
        ids = await self._runc_ids()
        ids.update(self.network.ids())
        ids.update(p.name for p in self.bundles.iterdir() if p.is_dir())
        # Captured snapshots live in the pool's ".snapshots": no sandbox id starts with a dot.
        ids.update(p.name for p in self.storage.root.iterdir() if p.is_dir() and p.name[0] != ".")
        return ids

    async def is_running(self, sandbox_id: str) -> bool:
        rc, out = await self._runc("state", sandbox_id)
        if rc != 0:
            return False
        return bool(json.loads(out).get("status") == "running")

    def file_owner(self, sandbox_id: str) -> tuple[int, int]:
        if self.idmap is None:
            return 0, 0
        return self.idmap.base, self.idmap.base

    def root_fd(self, sandbox_id: str) -> int:
        pid = self.init_pid(sandbox_id)
        try:
            return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            self._init_pids.pop(sandbox_id, None)
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        # The socket is made in the network namespace of the sandbox's init, from a throwaway
        # thread (see _netns); 10 s bounds a connect to a listener whose backlog is full.
        pid = self.init_pid(sandbox_id)
        try:
            return await _netns.aconnect_in_netns(pid, "127.0.0.1", port, timeout=10.0)
        except (FileNotFoundError, ProcessLookupError, _netns.SharedNamespaceError) as exc:
            self._init_pids.pop(sandbox_id, None)
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc

    # -- processes -----------------------------------------------------------------------------

    async def _credentials(self, sandbox_id: str, user: str | None) -> _users.Credentials | None:
        """Resolve ``user`` against the sandbox's /etc/passwd and /etc/group (see _users).

        None stays None: the command runs as the init does (root, no supplementary groups).
        """
        if user is None:
            return None
        root = self.root_fd(sandbox_id)
        try:
            return await asyncio.to_thread(_users.resolve_in, root, user)
        except _users.UserError as exc:
            raise SpawnError(str(exc)) from exc
        finally:
            os.close(root)

    def _check_pids(self, sandbox_id: str, errno_: int = 0) -> None:
        """Raise :class:`ResourceExhausted` if the sandbox is at its process limit (or ``errno_``
        is the EAGAIN of a fork its limit refused).

        Checked before a command is asked of the init: at the limit its fork fails anyway, and a
        sandbox at its limit is often one whose processes also eat its CPU quota, where the
        init's answer would be slow in coming.
        """
        pids = _cgroups.ROOT / "pids" / _spec.cgroup_parent(sandbox_id).lstrip("/")
        if not (pids / "pids.max").exists():
            pids = _cgroups.ROOT / _spec.cgroup_parent(sandbox_id).lstrip("/")  # cgroup v2
        try:
            limit = (pids / "pids.max").read_text().strip()
            current = int((pids / "pids.current").read_text())
        except (OSError, ValueError):
            return
        if errno_ == errno.EAGAIN or (limit != "max" and current >= int(limit)):
            raise ResourceExhausted(
                f"the sandbox is at its limit of {limit} processes; end some of its processes "
                "(or kill the command that forks them) and try again"
            )

    async def exec(self, sandbox_id: str, spec: ExecSpec) -> RuncProcess:
        bundle = self._bundle(sandbox_id)
        self._check_pids(sandbox_id)
        user = await self._credentials(sandbox_id, spec.user)
        cmd_id = uuid.uuid4().hex
        cgroup = _cgroups.command_cgroup(_spec.cgroup_parent(sandbox_id), cmd_id)
        try:
            _cgroups.create(cgroup)
        except FileNotFoundError as exc:
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc
        env = self.env_of(sandbox_id)
        if spec.pty:
            env.setdefault("TERM", "xterm-256color")
        env.update(spec.env)
        spawner = self._spawners.get(sandbox_id)
        if spawner is not None and not spawner.closed:
            return await self._spawn(sandbox_id, spawner, cgroup, spec, env, user)
        spec_file = bundle / "exec" / f"{cmd_id}.json"
        pid_file = bundle / "exec" / f"{cmd_id}.pid"
        spec_file.write_text(
            json.dumps(
                _spec.process(
                    list(spec.argv),
                    env,
                    spec.cwd,
                    terminal=spec.pty,
                    size=(spec.rows, spec.cols),
                    user=user,
                )
            )
        )
        args = [
            "--root",
            str(self.state_root),
            "exec",
            "--process",
            str(spec_file),
            "--cgroup",
            f"freezer:{cmd_id}",
            "--pid-file",
            str(pid_file),
        ]
        if spec.pty:
            return await self._exec_pty(args, sandbox_id, cgroup, spec_file, pid_file)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        # Our ends, as file objects: closing one twice (here and by its transport) is harmless.
        ours = [os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0), os.fdopen(in_w, "wb", 0)]
        try:
            try:
                self._private_keyring()
                runc = await asyncio.create_subprocess_exec(
                    self._runc_bin,
                    *args,
                    "--detach",
                    sandbox_id,
                    stdin=in_r,
                    stdout=out_w,
                    stderr=err_w,
                )
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            proc = DetachedProcess(cgroup, spec_file, pid_file)
            await proc._connect(*ours)
        except OSError as exc:
            for f in ours:
                f.close()
            _cgroups.remove_if_empty(cgroup)
            raise SpawnError(f"could not start runc: {exc}") from exc
        try:
            code = await asyncio.shield(runc.wait())
        except BaseException:
            # Cancelled while runc starts the command: follow it anyway, then kill and reap it.
            async def _abandon() -> None:
                proc._adopt(await runc.wait())
                await proc.close()

            await asyncio.shield(_abandon())
            raise
        proc._adopt(code)
        return proc

    async def _spawn(
        self,
        sandbox_id: str,
        spawner: _spawner.Spawner,
        cgroup: Path,
        spec: ExecSpec,
        env: dict[str, str],
        user: _users.Credentials | None = None,
    ) -> RuncProcess:
        """Start a command through the sandbox's init (see :mod:`_spawner`)."""
        ours: list[BinaryIO] = []
        theirs: tuple[int, int, int] | None = None
        if not spec.pty:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            ours = [os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0), os.fdopen(in_w, "wb", 0)]
            theirs = (in_r, out_w, err_w)
        try:
            try:
                spawned = await spawner.spawn(
                    spec.argv, env, spec.cwd, theirs, rows=spec.rows, cols=spec.cols, user=user
                )
            finally:
                for fd in theirs or ():
                    os.close(fd)
        except BaseException as exc:
            for f in ours:
                f.close()
            _cgroups.remove_if_empty(cgroup)
            if isinstance(exc, _spawner.SpawnerError):
                self._check_pids(sandbox_id, exc.errno)
                raise SpawnError(
                    f"could not start {spec.argv[0]!r} in {spec.cwd!r}: {exc}"
                ) from exc
            raise
        proc = (PtyProcess if spec.pty else DetachedProcess)(cgroup, None, None)
        try:
            if spawned.pid:
                with contextlib.suppress(ProcessLookupError):  # already gone: EXITED follows
                    (cgroup / "cgroup.procs").write_text(str(spawned.pid))
            proc.pid = spawned.pid
            if isinstance(proc, PtyProcess):
                assert spawned.master is not None
                master, spawned.master = spawned.master, None
                await proc._connect_pty(master)
            else:
                await proc._connect(*ours)
        except BaseException:
            spawner.release(spawned.id, proc._exited, run=False)
            if spawned.master is not None:
                os.close(spawned.master)
            for f in ours:
                f.close()
            await asyncio.shield(proc.close())
            raise
        spawner.release(spawned.id, proc._exited)
        return proc

    async def _exec_pty(
        self, args: list[str], sandbox_id: str, cgroup: Path, spec_file: Path, pid_file: Path
    ) -> RuncProcess:
        """``runc exec --detach --tty``: runc passes the PTY master over a console socket.

        The socket is abstract (no path-length limit, nothing left on disk) and only a root peer
        is trusted to hand us a terminal.
        """
        loop = asyncio.get_running_loop()
        name = f"hutch-console-{uuid.uuid4().hex}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        master = -1
        try:
            listener.bind("\0" + name)
            listener.listen(1)
            listener.setblocking(False)
            try:
                self._private_keyring()
                runc = await asyncio.create_subprocess_exec(
                    self._runc_bin,
                    *args,
                    "--detach",
                    "--tty",
                    "--console-socket",
                    "@" + name,
                    sandbox_id,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                raise SpawnError(f"could not start runc: {exc}") from exc
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            exited = asyncio.ensure_future(runc.communicate())
            try:
                await asyncio.wait(
                    [accept, exited], return_when=asyncio.FIRST_COMPLETED, timeout=30
                )
            finally:
                if not accept.done():
                    accept.cancel()
            if accept.done() and not accept.cancelled() and accept.exception() is None:
                conn, _ = accept.result()
                with conn:
                    check_peer_is_root(conn)
                    conn.setblocking(True)
                    conn.settimeout(10)
                    _msg, fds, _flags, _addr = await asyncio.to_thread(
                        socket.recv_fds, conn, 1024, 1
                    )
                if not fds:
                    raise SpawnError("runc sent no terminal over the console socket")
                master = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
            _out, err = await exited
            if runc.returncode != 0 or master < 0:
                raise SpawnError(
                    (err or b"").decode(errors="replace").strip()
                    or f"runc exec failed ({runc.returncode})"
                )
            proc = PtyProcess(cgroup, spec_file, pid_file)
            await proc._connect_pty(master)
            master = -1
            proc._adopt(0)
            return proc
        except BaseException:
            if master >= 0:
                os.close(master)
            _cgroups.remove_if_empty(cgroup)
            raise
        finally:
            listener.close()
