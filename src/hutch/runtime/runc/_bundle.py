"""Bundle preparation of the runc runtime: everything written for a sandbox before runc runs it.

The bundle directory (``sandboxes/<id>/``: config.json, env.json, init.pid), the shared
directory reachable from inside the sandbox's user namespace (``/run/hutch/...``: the overlay
root filesystem, hostname, hosts, resolv.conf), the writable layer taken from the storage pool
and the environment commands start with. See :mod:`hutch.runtime.runc._runtime` for the layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hutch.runtime._interface import RuntimeError_, SandboxNotFound, SandboxSpec
from hutch.runtime.runc import _network, _spec, _storage, _userns
from hutch.runtime.runc._overlay import mount_overlay

#: In a sandbox's bundle: the fd number at which its init holds our end of the control socket.
CONTROL_FD = "init.ctl"
HOME = "/home/user"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PUBLIC_ROOT = Path("/run/hutch")  # see RuncRuntime._shared


class BundleMixin:
    """The bundle part of :class:`~hutch.runtime.runc.RuncRuntime` (it sets these)."""

    bundles: Path
    storage: _storage.StoragePool
    storage_limit_bytes: int
    network: _network.EgressNetwork
    idmap: _userns.IdMap | None
    _userns_fd: int | None
    _init_bin: Path | None
    _public: Path | None
    _init_pids: dict[str, int]
    _env: dict[str, dict[str, str]]

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

    def file_owner(self, sandbox_id: str) -> tuple[int, int]:
        if self.idmap is None:
            return 0, 0
        return self.idmap.base, self.idmap.base
