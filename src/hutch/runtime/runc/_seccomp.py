"""hutch's seccomp profile (the ``linux.seccomp`` object of ``config.json``).

What runs in a sandbox is hostile, and the kernel's system call surface is where container escapes
come from. The profile allows ordinary programs everything they use (compilers, interpreters,
databases, debuggers inside the sandbox) and refuses, with ``EPERM``, the calls a sandbox has no
business making, grouped by why:

* **Only the native ABI.** Just the host architecture is listed; 32-bit (``int 0x80``) and x32
  system calls are refused outright, so no rule below can be sidestepped through another ABI's
  numbers.
* **New namespaces.** ``unshare``/``clone`` with any ``CLONE_NEW*`` flag, and ``setns``: user
  namespaces hand back a full capability set over fresh namespaces, the way into most kernel bugs
  reachable by unprivileged users. ``clone3`` (whose flags live in memory a filter cannot read)
  answers ``ENOSYS``, so C libraries fall back to ``clone``.
* **Mounts**: ``mount``, ``umount2``, ``pivot_root`` and the new mount API (``fsopen``,
  ``fsconfig``, ``fsmount``, ``fspick``, ``move_mount``, ``open_tree``, ``mount_setattr``).
* **The kernel itself**: module loading (``init_module``, ``finit_module``, ``delete_module``),
  ``kexec_*``, ``reboot``, ``swapon``/``swapoff``, ``acct``, ``quotactl``, ``syslog``, ``iopl``/
  ``ioperm``, obsolete calls (``uselib``, ``ustat``, ``sysfs``, ``_sysctl``, ``nfsservctl``,
  ``lookup_dcookie``, ``vhangup``), and the clock (``settimeofday``, ``clock_settime``,
  ``clock_adjtime``, ``adjtimex``): none is namespaced.
* **Large attack surfaces with no sandbox use**: ``bpf``, ``perf_event_open``, ``userfaultfd``
  (the classic helper for winning kernel races), ``io_uring_*``, the kernel keyring (``keyctl``,
  ``add_key``, ``request_key``: not namespaced), and file handles (``open_by_handle_at``,
  ``name_to_handle_at``: the "shocker" escape).

Most of these also need a capability the sandbox does not have; the profile is the second wall.
``ptrace`` stays allowed: the PID namespace keeps it inside the sandbox, and debuggers need it.
"""

from __future__ import annotations

import platform
from typing import Any

EPERM = 1
ENOSYS = 38

_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}

CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
CLONE_NEWTIME = 0x00000080  # unshare only: for clone it is part of the exit signal

DENIED = [
    # mounts
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # namespaces (unshare and clone are filtered by flag below)
    "setns",
    # the kernel itself
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "iopl",
    "ioperm",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "lookup_dcookie",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    # large attack surfaces
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
]


def _flag_rule(name: str, flag: int) -> dict[str, Any]:
    return {
        "names": [name],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
        "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
    }


def profile() -> dict[str, Any]:
    """The ``linux.seccomp`` object for this host's architecture."""
    arch = _ARCH.get(platform.machine())
    if arch is None:
        raise RuntimeError(f"no seccomp profile for architecture {platform.machine()}")
    rules: list[dict[str, Any]] = [
        {"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for flag in CLONE_NEW.values():
        rules.append(_flag_rule("clone", flag))
        rules.append(_flag_rule("unshare", flag))
    rules.append(_flag_rule("unshare", CLONE_NEWTIME))
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch], "syscalls": rules}
