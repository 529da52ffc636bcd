"""Command sessions over the real server, driven by the hutch SDK: kill trees, stdin, PTY,
several clients on one command, replay from offsets, OOM exit codes and large UTF-8 output.

Host-side facts (which processes a command owns) are read from cgroupfs and /proc.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hutch import CommandHandle, Sandbox, SandboxClient, SandboxConnectionError
from tests.conftest import TIME_SCALE, wait_until

pytestmark = pytest.mark.root

PROMPT = 5 * TIME_SCALE
FREEZER = Path("/sys/fs/cgroup/freezer")


@pytest.fixture(scope="module")
def py_sb(client: SandboxClient, py_template: str) -> Iterator[Sandbox]:
    with client.sandbox(py_template) as sb:
        yield sb


# -- host-side process helpers (after tests/server/test_isolation.py) ---------------------------


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (to tell a pid from a reused one); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def _command_procs(sb: Sandbox) -> dict[int, str]:
    """Host pids (with start times) in the per-command freezer cgroups of a sandbox."""
    found: dict[int, str] = {}
    for procs in (FREEZER / "hutch" / str(sb.id)).glob("*/cgroup.procs"):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except FileNotFoundError:
            continue
        for pid in pids:
            start = _start_time(pid)
            if start is not None:
                found[pid] = start
    return found


def _alive(procs: dict[int, str]) -> list[int]:
    return [pid for pid, start in procs.items() if _start_time(pid) == start]


# -- kill ----------------------------------------------------------------------------------------


def test_kill_leaves_no_process_alive(sandbox: Sandbox) -> None:
    """kill() leaves no host process of the command, setsid and double-forked ones included."""
    handle = sandbox.run(
        "setsid sleep 901 & (sleep 902 &); sleep 903 & echo Ready; sleep 904",
        timeout=0,
        wait=False,
    )
    assert next(iter(handle)).data == "Ready\n"
    sleeps: dict[int, str] = {}

    def all_sleeps_seen() -> bool:
        for pid, start in _command_procs(sandbox).items():
            argv = _argv(pid)
            if argv[:1] == [b"sleep"] or argv[0].endswith(b"/sleep"):
                sleeps[pid] = start
        return len(sleeps) >= 4

    assert wait_until(all_sleeps_seen, PROMPT), f"only saw {sleeps}"
    assert len(_alive(sleeps)) == 4
    handle.kill()
    with pytest.raises(SandboxConnectionError, match="killed"):
        list(handle)
    assert wait_until(lambda: _alive(sleeps) == [], PROMPT), _alive(sleeps)
    assert "sleep 90" not in sandbox.run("ps -o args").stdout
    result = sandbox.reconnect(handle.command_id).result
    assert (result.stdout, result.exit_code) == ("Ready\n", 137)


# -- stdin and PTY -------------------------------------------------------------------------------


def test_stdin_drives_python_repl(py_sb: Sandbox) -> None:
    """send_input drives an interactive python3 REPL on pipes: 42 while it runs, then exit 0."""
    handle = py_sb.run("python3 -u -i -q", pty=False, timeout=30, wait=False)
    handle.send_input("print(6*7)\n")
    stdout = ""
    for chunk in handle:
        if chunk.stream == "stdout":
            stdout += chunk.data
        if "42\n" in stdout:
            break
    assert stdout == "42\n"
    handle.send_input("x = 'repl'\nprint(x.upper())\n")
    for chunk in handle:
        if chunk.stream == "stdout":
            stdout += chunk.data
        if "REPL\n" in stdout:
            break
    handle.send_input("exit()\n")
    result = handle.result
    assert (result.stdout, result.exit_code) == ("42\nREPL\n", 0)
    assert ">>> " in result.stderr  # the interactive prompt goes to stderr


def test_pty_run_has_a_terminal(sandbox: Sandbox) -> None:
    """pty=True: stdin is a terminal of 24x80, stderr is merged into stdout, lines end CRLF."""
    result = sandbox.run(
        "tty; stty size; [ -t 0 ] && [ -t 1 ] && echo both-tty; echo to-stderr >&2", pty=True
    )
    lines = result.stdout.split("\r\n")
    assert lines[0].startswith("/dev/pts/"), result
    assert lines[1:] == ["24 80", "both-tty", "to-stderr", ""], result
    assert (result.stderr, result.exit_code) == ("", 0)
    plain = sandbox.run("tty; [ -t 0 ] || echo not-a-tty")
    assert plain.stdout == "not a tty\nnot-a-tty\n"


def test_pty_handle_takes_input(sandbox: Sandbox) -> None:
    """A PTY command reads typed input (echoed back by the terminal) through send_input."""
    handle = sandbox.run("read x; echo got:$x", pty=True, timeout=30, wait=False)
    handle.send_input("typed\n")
    result = handle.result
    assert result.exit_code == 0
    assert result.stdout.endswith("got:typed\r\n"), result
    assert "typed\r\n" in result.stdout.removesuffix("got:typed\r\n")  # the terminal's echo


def test_pty_handle_resizes_its_terminal(sandbox: Sandbox) -> None:
    """handle.resize() reaches the PTY: stty size follows; bad sizes are refused locally."""
    handle = sandbox.run("stty size; read x; stty size", pty=True, timeout=30, wait=False)
    seen = ""
    for chunk in handle:  # the first size is printed before the resize is sent
        seen += chunk.data
        if "24 80\r\n" in seen:
            break
    handle.resize(50, 132)
    handle.send_input("go\n")
    assert "50 132\r\n" in handle.result.stdout
    with pytest.raises(ValueError, match="rows"):
        handle.resize(0, 80)


# -- several clients, offsets --------------------------------------------------------------------

SEQ = "".join(f"{i}\n" for i in range(1, 200_001))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_handle_can_keep_no_output(sandbox: Sandbox) -> None:
    """keep_output=False: iterating (and reconnecting) still gets every byte, and the result
    carries only the exit code, so a long-lived command's output does not pile up in the
    client."""
    expected = "".join(f"{i}\n" for i in range(1, 20001))
    handle = sandbox.run("seq 1 20000; exit 3", wait=False, keep_output=False)
    assert "".join(c.data for c in handle if c.stream == "stdout") == expected
    assert (handle.result.stdout, handle.result.stderr, handle.result.exit_code) == ("", "", 3)
    again = sandbox.reconnect(handle.command_id, keep_output=False)
    assert "".join(c.data for c in again) == expected
    assert (again.result.stdout, again.result.exit_code) == ("", 3)


def test_two_clients_get_all_output(sandbox: Sandbox) -> None:
    """Two reconnected handles in two threads each get all of `seq 1 200000` (sha256)."""
    starter = sandbox.run("echo ready; read go; seq 1 200000", timeout=60, wait=False)
    readers = [sandbox.reconnect(starter.command_id) for _ in range(2)]
    for handle in (starter, *readers):  # all three attached before the output starts
        assert next(iter(handle)).data == "ready\n"
    barrier = threading.Barrier(3)

    def drain(handle: CommandHandle) -> str:
        barrier.wait()
        return handle.result.stdout

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(drain, h) for h in readers]
        barrier.wait()
        starter.send_input("go\n")
        outputs = [f.result(timeout=60 * TIME_SCALE) for f in futures]
    outputs.append(starter.result.stdout)
    expected = _sha("ready\n" + SEQ)
    assert [_sha(o) for o in outputs] == [expected] * 3


def test_reconnect_mid_stream_never_duplicates(sandbox: Sandbox) -> None:
    """Reconnecting mid-stream at the handle's offsets gives exactly the rest, no duplicates."""
    handle = sandbox.run(
        'for i in $(seq 1 40); do echo "line $i ü€😀"; echo "err $i" >&2; sleep 0.02; done',
        timeout=60,
        wait=False,
    )
    out: list[str] = []
    err: list[str] = []
    for chunk in handle:
        (out if chunk.stream == "stdout" else err).append(chunk.data)
        if len(out) >= 5:
            break
    handle.close()
    offsets = (handle.last_stdout_offset, handle.last_stderr_offset)
    assert offsets[0] == len("".join(out).encode()) and offsets[1] == len("".join(err).encode())
    rest = sandbox.reconnect(
        handle.command_id, stdout_offset=offsets[0], stderr_offset=offsets[1]
    ).result
    expected_out = "".join(f"line {i} ü€😀\n" for i in range(1, 41))
    expected_err = "".join(f"err {i}\n" for i in range(1, 41))
    assert "".join(out) + rest.stdout == expected_out
    assert "".join(err) + rest.stderr == expected_err
    assert rest.exit_code == 0


def test_reconnect_at_any_offset_replays_exactly_the_rest(sandbox: Sandbox) -> None:
    """A finished command replayed from any byte offset yields exactly the bytes from there on."""
    handle = sandbox.run("seq 1 20000; seq 5 9 >&2", wait=False)
    full = handle.result
    out, err = full.stdout.encode(), full.stderr.encode()
    assert out == "".join(f"{i}\n" for i in range(1, 20001)).encode()
    for so, se in ((0, 0), (1, 2), (4097, 5), (65537, 9), (len(out), len(err)), (10**9, 10**9)):
        rest = sandbox.reconnect(handle.command_id, stdout_offset=so, stderr_offset=se).result
        assert (rest.stdout.encode(), rest.stderr.encode()) == (out[so:], err[se:])
        assert rest.exit_code == 0


# -- limits and volume ---------------------------------------------------------------------------


@pytest.fixture
def mem_sandbox(client: SandboxClient) -> Iterator[Sandbox]:
    """A sandbox of a fresh template limited to 64Mi."""
    name = f"mem-exec-{secrets.token_hex(4)}"
    client.create_template(name, "local/busybox", memory="64Mi")
    try:
        with client.sandbox(name) as sb:
            yield sb
    finally:
        client.delete_template(name)


def test_oom_killed_command_reports_137(mem_sandbox: Sandbox) -> None:
    """A command killed by the 64Mi memory limit reports exit code 137 through run()."""
    result = mem_sandbox.run("echo before; dd if=/dev/zero of=/dev/null bs=200M count=1")
    assert (result.stdout, result.exit_code, result.success) == ("before\n", 137, False)
    handle = mem_sandbox.run("dd if=/dev/zero of=/dev/null bs=200M count=1", wait=False)
    assert handle.result.exit_code == 137
    assert mem_sandbox.run("echo ok").stdout == "ok\n"


# Varied line lengths so that characters of 1-4 bytes fall across every chunk boundary.
BIG = (
    'awk \'BEGIN { n = split("a ß ñ€ 𝄞 xy 日本語 é", s, " "); for (i = 0; i < 1000000; i++) '
    'printf "%d héllo ✓ 日本 🎉 %s\\n", i, s[i % n + 1] }\''
)


def test_large_multibyte_output_is_byte_identical(sandbox: Sandbox) -> None:
    """~34 MB of mixed UTF-8 arrives byte-identical (sha256 vs sha256sum in the sandbox)."""
    made = sandbox.run(f"{BIG} > /tmp/big; sha256sum /tmp/big; wc -c < /tmp/big", timeout=120)
    inside = made.stdout.split()
    start = time.monotonic()
    result = sandbox.run("cat /tmp/big", timeout=120)
    elapsed = time.monotonic() - start
    data = result.stdout.encode()
    assert len(data) == int(inside[2]) > 30_000_000
    assert hashlib.sha256(data).hexdigest() == inside[0]
    assert (result.stderr, result.exit_code) == ("", 0)
    assert "\ufffd" not in result.stdout
    assert elapsed < 60 * TIME_SCALE
