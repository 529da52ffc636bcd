"""The runc implementation of the runtime seam: :class:`RuncRuntime` and its lifecycle.

Create, start, stop and delete of sandboxes, their snapshots (capture, spare clones) and the
runc calls behind them live here; the bundle preparation is in :mod:`._bundle`, commands and
connections in :mod:`._exec`, files in :mod:`._files`, and the class composes them.

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
import concurrent.futures
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hutch.runtime._egress_policy import EgressPolicy
from hutch.runtime._interface import (
    NetworkMode,
    Runtime,
    RuntimeError_,
    SandboxNotFound,
    SandboxSpec,
)
from hutch.runtime.runc import (
    _cgroups,
    _fs,
    _keyring,
    _network,
    _spawner,
    _spec,
    _storage,
    _userns,
)
from hutch.runtime.runc._bundle import CONTROL_FD, HOME, PUBLIC_ROOT, BundleMixin
from hutch.runtime.runc._egress_tls import EgressCA
from hutch.runtime.runc._egress_trust import TrustError, install_ca
from hutch.runtime.runc._exec import ExecMixin
from hutch.runtime.runc._files import FdFiles
from hutch.runtime.runc._process import RuncProcess

# RuncProcess is what exec returns; callers may keep importing it from here.
__all__ = ["RuncProcess", "RuncRuntime"]

log = logging.getLogger("hutch.runtime")

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
GiB = 1 << 30
DEFAULT_STORAGE_POOL = 256 * GiB  # sparse: takes host disk only as sandboxes write
DEFAULT_STORAGE_LIMIT = 10 * GiB  # per sandbox, when its template names none
#: How long a sandbox's processes may take to die once SIGKILLed (unthrottled, thawed).
KILL_TIMEOUT = 5.0
#: Seconds a spare clone's refill waits after the create that took the spare. Its btrfs commit
#: (writes and a flush of the pool) competes with the new sandbox's first commands, which
#: clients send at once; a moment later it costs nobody a wait.
SPARE_REFILL_DELAY = 0.1


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise RuntimeError_(f"umount {target}: {os.strerror(err)}")


def _lowest_priority() -> None:
    # On Linux, PRIO_PROCESS with who=0 is the calling thread alone.
    os.setpriority(os.PRIO_PROCESS, 0, 19)


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


class RuncRuntime(ExecMixin, BundleMixin, FdFiles, Runtime):
    """Lifecycle of runc sandboxes: create, start, stop, delete, snapshots; composes the bundle
    preparation (:mod:`_bundle`), the commands (:mod:`_exec`) and the files (:mod:`_files`)."""

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
        # Control sockets of the inits this server started or took back from their init after
        # a restart (see _exec; sandboxes whose init holds none start commands with runc exec).
        self._spawners: dict[str, _spawner.Spawner] = {}
        self._reattaching: dict[str, asyncio.Future[_spawner.Spawner | None]] = {}
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
        #: Their thread: at the lowest CPU priority, so a refill (a btrfs snapshot and its
        #: commit) yields to the creates and commands it runs beside.
        self._background = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hutch-spares", initializer=_lowest_priority
        )
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
        for attempt in list(self._reattaching.values()):  # a HELLO still unanswered
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await attempt
        self._background.shutdown()
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

    # -- lifecycle -----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> None:
        bundle = self._bundle(spec.id)
        if bundle.exists() or (self.state_root / spec.id).exists() or self.network.has(spec.id):
            policy = self.network.load_policy(spec.id)  # set for this create: not a leftover
            await self.delete(spec.id)
            await self.network.set_policy(spec.id, policy)
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
            await self._trust_egress_ca(spec.id)
            if spec.snapshot is not None:  # after the create: its commit would slow it down
                self._refill(spec.snapshot, SPARE_REFILL_DELAY)
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
        # The container's mount namespace has its own copy of the root filesystem's mount; the
        # host's goes, so that the host's mount table does not grow with the sandboxes: every
        # new mount namespace (each runc run) copies that whole table.
        _umount(str(self._shared(sandbox_id) / "rootfs"))
        if self._init_bin is None:
            ours.close()
            return
        old = self._spawners.pop(sandbox_id, None)
        if old is not None:
            old.close()
        self._spawners[sandbox_id] = spawner = _spawner.Spawner(ours)
        # The init keeps a copy of our end, so a restarted server takes it back (see _exec)
        # instead of starting every later command with runc exec.
        try:
            fd = await spawner.park()
        except _spawner.SpawnerError as exc:
            log.warning("sandbox %s: its init cannot hold the control socket: %s", sandbox_id, exc)
        else:
            (bundle / CONTROL_FD).write_text(f"{fd}\n")

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
        self.network.forget_policy(sandbox_id)

    async def set_egress_policy(
        self, sandbox_id: str, access_control: Mapping[str, Any] | None
    ) -> None:
        try:
            policy = EgressPolicy.parse(dict(access_control)) if access_control else None
        except ValueError as exc:
            raise RuntimeError_(str(exc)) from exc
        await self.network.set_policy(sandbox_id, policy)
        if await self.is_running(sandbox_id):  # else its create or start adds it
            await self._trust_egress_ca(sandbox_id)

    async def _trust_egress_ca(self, sandbox_id: str) -> None:
        """A sandbox with header rules gets the egress proxy's interception CA in its trust
        stores (see _egress_trust); one without gets nothing."""
        policy = self.network.load_policy(sandbox_id)
        if policy is None or not policy.headers:
            return
        ca = await asyncio.to_thread(EgressCA, self.network.ca_dir)
        uid, gid = self.file_owner(sandbox_id)
        root = self.root_fd(sandbox_id)
        try:
            await asyncio.to_thread(install_ca, root, ca.pem, uid, gid)
        except TrustError as exc:
            raise RuntimeError_(str(exc)) from None
        finally:
            os.close(root)

    def egress_denied(self, sandbox_id: str) -> int:
        return self.network.denied(sandbox_id)

    async def _stop_container(self, sandbox_id: str, bundle: Path) -> None:
        """Kill every process, remove the container and its cgroups, unmount the root."""
        spawner = self._spawners.pop(sandbox_id, None)
        if spawner is not None:
            spawner.close()
        self._reattaching.pop(sandbox_id, None)
        with contextlib.suppress(FileNotFoundError):
            (bundle / CONTROL_FD).unlink()  # its init goes, and the socket with it
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
            await self._trust_egress_ca(spec.id)  # a reset may have dropped it
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
            self._refill(snapshot, SPARE_REFILL_DELAY)  # the reset may have taken its spare

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

    def _refill(self, snapshot_id: str, delay: float = 0.0) -> None:
        """Make the snapshot's spare clone in the background (see ``StoragePool.spare``), so the
        next sandbox from it starts without waiting for a btrfs snapshot's commit; after
        ``delay`` seconds (see ``SPARE_REFILL_DELAY``)."""
        if snapshot_id in self._refills:
            return

        async def refill() -> None:
            await asyncio.sleep(delay)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._background, self.storage.prepare_spare, snapshot_id
                )
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
        # Called when the server starts (reconciling): sandboxes kept running across a restart
        # get their egress access control back.
        try:
            await self.network.resume()
        except RuntimeError_ as exc:  # their redirected connections are refused meanwhile
            log.warning("restoring egress access control failed: %s", exc)
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
