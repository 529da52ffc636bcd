"""OCI runtime ``config.json`` for a hutch sandbox (pure: spec in, dict out)."""

from __future__ import annotations

from typing import Any

from hutch.runtime._interface import SandboxSpec
from hutch.runtime.runc import _seccomp
from hutch.runtime.runc._userns import IdMap
from hutch.runtime.runc._users import Credentials

# The sandbox's pid 1, bind-mounted read-only into /dev's tmpfs: hutch-init (see _spawner), or
# catatonit where hutch-init could not be built.
INIT_PATH = "/dev/.hutch-init"
CATATONIT = "/usr/bin/catatonit"

# The container-default capability set (what Docker and containerd grant by default).
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

CPU_PERIOD_US = 100_000


def cgroup_parent(sandbox_id: str) -> str:
    return f"/hutch/{sandbox_id}"


def process(
    args: list[str],
    env: dict[str, str],
    cwd: str,
    *,
    terminal: bool = False,
    no_new_privileges: bool = True,
    size: tuple[int, int] | None = None,
    user: Credentials | None = None,
) -> dict[str, Any]:
    """The ``process`` object, for the init and for each ``runc exec``.

    ``user`` (ids as the sandbox sees them) defaults to root without supplementary groups.
    """
    caps = list(DEFAULT_CAPS)
    # A non-root user holds no capability (the kernel recomputes them at execve, and with no
    # ambient set a non-root program gets none); listing none says so rather than relying on it.
    held = caps if user is None or user.uid == 0 else []
    extra: dict[str, Any] = {}
    if terminal and size:
        extra["consoleSize"] = {"height": size[0], "width": size[1]}
    ids: dict[str, Any] = {"uid": 0, "gid": 0}
    if user is not None:
        ids = {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.groups)}
    return {
        **extra,
        "terminal": terminal,
        "user": ids,
        "args": args,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": held, "permitted": held},
        "noNewPrivileges": no_new_privileges,
    }


def config(
    spec: SandboxSpec,
    rootfs: str,
    bundle: str,
    env: dict[str, str],
    init: str | None = None,
    idmap: IdMap | None = None,
) -> dict[str, Any]:
    """Build ``config.json``: own PID/mount/IPC/UTS/network namespaces, limits, hardening.

    ``init`` is the hutch-init binary to run as pid 1; without it, catatonit. With ``idmap`` the
    sandbox also gets a user namespace mapping its ids onto that host range.
    """
    resources: dict[str, Any] = {
        "devices": [{"allow": False, "access": "rwm"}],
        "pids": {"limit": spec.pids_limit},
    }
    if spec.memory_bytes is not None:
        # swap == limit: the memsw limit equals the memory limit, so a sandbox cannot swap.
        resources["memory"] = {"limit": spec.memory_bytes, "swap": spec.memory_bytes}
    if spec.cpu_millis is not None:
        resources["cpu"] = {
            "quota": spec.cpu_millis * CPU_PERIOD_US // 1000,
            "period": CPU_PERIOD_US,
        }
    namespaces = ["pid", "network", "ipc", "uts", "mount"]
    ids: dict[str, Any] = {}
    if idmap is not None:
        namespaces.append("user")
        ids = {"uidMappings": idmap.oci(), "gidMappings": idmap.oci()}
    init_process = process([INIT_PATH] if init else [INIT_PATH, "-P"], env, "/")
    return {
        "ociVersion": "1.0.2",
        "process": init_process,
        "root": {"path": rootfs, "readonly": False},
        "hostname": spec.hostname,
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": init or CATATONIT,
                "options": ["bind", "ro", "nosuid", "nodev"],
            },
            {
                "destination": "/etc/hosts",
                "type": "bind",
                "source": f"{bundle}/hosts",
                "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"],
            },
            {
                "destination": "/etc/hostname",
                "type": "bind",
                "source": f"{bundle}/hostname",
                "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"],
            },
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": f"{bundle}/resolv.conf",
                "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in namespaces],
            **ids,
            "cgroupsPath": cgroup_parent(spec.id),
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": _seccomp.profile(),
        },
    }
