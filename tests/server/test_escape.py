"""Escape attempts from inside a sandbox: each is refused, and host, server and neighbours carry on.

A probe (Python, run in a sandbox of the Debian image) makes the raw system calls and file
accesses an escape would start with and reports, for each, the errno it got or ``ALLOWED``. Memory
and fork-bomb exhaustion are in ``test_isolation.py``.
"""

from __future__ import annotations

import json
import platform
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import SandboxClient
from tests.conftest import Server

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe uses x86_64 numbers"),
]

PROBE = r"""
import ctypes, errno, json, os, socket, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}

def sys_(name, nr, *args):
    res = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    out[name] = "ALLOWED" if res >= 0 else errno.errorcode[ctypes.get_errno()]

def fs(name, fn):
    try:
        fn()
        out[name] = "ALLOWED"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x10000000, 0x40000000, 0x20000000
out["mount"] = "ALLOWED" if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) == 0 \
    else errno.errorcode[ctypes.get_errno()]
sys_("unshare(user)", 272, CLONE_NEWUSER)
sys_("unshare(mount)", 272, CLONE_NEWNS)
sys_("unshare(net)", 272, CLONE_NEWNET)
sys_("clone(newuser)", 56, CLONE_NEWUSER | 17, 0, 0, 0, 0)
sys_("clone(newpid)", 56, CLONE_NEWPID | 17, 0, 0, 0, 0)
sys_("clone3", 435, 0, 0)
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
sys_("setns", 308, fd, 0)
sys_("init_module", 175, 0, 0, 0)
sys_("finit_module", 313, fd, 0, 0)
sys_("delete_module", 176, 0, 0)
sys_("kexec_load", 246, 0, 0, 0, 0)
sys_("reboot", 169, 0xfee1dead, 672274793, 0x1234567, 0)
sys_("swapon", 167, 0, 0)
sys_("settimeofday", 164, 0, 0)
sys_("bpf", 321, 5, 0, 0)
sys_("perf_event_open", 298, 0, 0, -1, -1, 0)
sys_("userfaultfd", 323, 0)
sys_("io_uring_setup", 425, 1, 0)
sys_("keyctl", 250, 0, 0, 0, 0, 0)
sys_("add_key", 248, 0, 0, 0, 0, 0)
sys_("open_by_handle_at", 304, fd, 0, 0)
sys_("ptrace(attach init)", 101, 16, 1, 0, 0)
sys_("iopl", 172, 3)
os.close(fd)

def write(path):
    with open(path, "w") as f:
        f.write("1")
fs("write /proc/sys", lambda: write("/proc/sys/kernel/hostname"))
fs("write /proc/sysrq-trigger", lambda: write("/proc/sysrq-trigger"))
fs("write /sys", lambda: write("/sys/kernel/uevent_helper"))
fs("write cgroup", lambda: write("/sys/fs/cgroup/pids/pids.max"))
fs("read /proc/1/environ", lambda: open("/proc/1/environ").read())
fs("readlink init's fds", lambda: [os.readlink(f"/proc/1/fd/{n}") for n in range(5)])
fs("open init's control socket", lambda: os.close(os.open("/proc/1/fd/3", os.O_RDWR)))
fs("read /proc/kcore", lambda: open("/proc/kcore", "rb").read(1))

def raw_disk():
    try:
        os.mknod("/tmp/disk", 0o600 | 0o060000, os.makedev(8, 0))
    except FileExistsError:
        pass
    os.close(os.open("/tmp/disk", os.O_RDONLY))
fs("open block device", raw_disk)
fs("open /dev/mem", lambda: os.close(os.open("/dev/mem", os.O_RDONLY)))

canary = sys.argv[1]
found = []
for base in ("/", "/proc/1/root", "/proc/self/root", "/proc/self/cwd"):
    for root, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        if canary in files:
            found.append(root)
out["host canary visible"] = found or "no"
out["processes"] = sorted(
    open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
    for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/cmdline")
)

def connect(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
    finally:
        s.close()
fs("host loopback service", lambda: connect(int(sys.argv[2])))
fs("neighbour's service", lambda: connect(int(sys.argv[3])))
print(json.dumps(out))
"""

REFUSED = {"EPERM", "EACCES", "EROFS", "ENOENT", "ENOSYS", "ECONNREFUSED", "ENETUNREACH"}


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_escape_attempts_are_refused(
    server: Server, client: SandboxClient, py_template: str, host_listener: int, tmp_path: Path
) -> None:
    canary = f"hutch-canary-{uuid.uuid4().hex}"
    host_file = Path("/tmp") / canary
    host_file.write_text("host secret")
    try:
        with client.sandbox(py_template) as sb, client.sandbox(py_template) as neighbour:
            service = neighbour.run("python3 -m http.server 8765", wait=False)
            sb.write("/tmp/probe.py", PROBE)
            res = sb.run(f"python3 /tmp/probe.py {canary} {host_listener} 8765", timeout=120)
            assert res.exit_code == 0, res.stderr
            got = json.loads(res.stdout)
            assert got.pop("host canary visible") == "no"
            processes = got.pop("processes")
            assert processes[0] == "/dev/.hutch-init" and "hutch" not in " ".join(processes[1:])
            allowed = {k: v for k, v in got.items() if v not in REFUSED}
            assert not allowed, f"not refused: {allowed}"
            assert got["clone3"] == "ENOSYS"
            # Neither the host, nor the server, nor the neighbour noticed.
            assert host_file.read_text() == "host secret"
            assert server.alive()
            assert neighbour.run("echo ok").stdout == "ok\n"
            assert sb.run("echo ok").stdout == "ok\n"
            service.kill()
    finally:
        host_file.unlink()


def test_seccomp_is_on_for_sandbox_processes(client: SandboxClient, bb_template: str) -> None:
    """Every process of a sandbox runs under a seccomp filter with no_new_privs."""
    with client.sandbox(bb_template) as sb:
        status = sb.run("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status").stdout
        assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status


def test_ordinary_work_still_runs_under_the_profile(
    client: SandboxClient, py_template: str
) -> None:
    """Threads, subprocesses, sockets, mmap and a debugger-style ptrace of a child still work."""
    script = (
        "import subprocess, threading, socket, mmap, os, ctypes\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "assert subprocess.run(['sh', '-c', 'echo sub'], capture_output=True).stdout == b'sub\\n'\n"
        "a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'\n"
        "m = mmap.mmap(-1, 4096); m[:1] = b'y'\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ctypes.CDLL(None).ptrace(0, 0, 0, 0)\n"
        "    os.kill(os.getpid(), 19); os._exit(0)\n"
        "os.waitpid(pid, os.WUNTRACED); os.kill(pid, 9); os.waitpid(pid, 0)\n"
        "print('fine')\n"
    )
    with client.sandbox(py_template) as sb:
        sb.write("/tmp/work.py", script)
        res = sb.run("python3 /tmp/work.py")
        assert (res.stdout, res.exit_code) == ("fine\n", 0), res.stderr
