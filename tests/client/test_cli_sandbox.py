"""``hutch sandbox|template|snapshot``: the CLI as a real subprocess against a real server,
configured only by HUTCH_ENDPOINT/HUTCH_API_KEY; ``shell`` through a real PTY (pexpect)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from hutch import Sandbox, SandboxClient
from tests.conftest import HUTCH, TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root

#: Seconds one CLI call may take (each makes a few HTTP calls, or waits on a sandbox).
CALL = 120 * TIME_SCALE


def _env(server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUTCH_", "LANGSMITH_"))}
    return {**env, "HUTCH_ENDPOINT": server.url, "HUTCH_API_KEY": server.key, "COLUMNS": "200"}


def cli(
    server: Server, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*HUTCH, *args],
        env=_env(server),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=CALL,
        check=False,
    )


def ok(server: Server, *args: str, stdin: bytes | None = None) -> str:
    proc = cli(server, *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _name() -> str:
    return f"cli-{secrets.token_hex(4)}"


@pytest.fixture
def sb(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    with client.sandbox(bb_template) as box:
        yield box


def test_create_ls_stop_start_rm_plain(server: Server, client: SandboxClient, bb_template: str):
    """create prints the name; ls shows it in a table; stop/start change its status; rm
    deletes it."""
    name = _name()
    out = ok(server, "sandbox", "create", "-t", bb_template, "--name", name, "--label", "a=b")
    assert out.strip() == name
    assert client.get_sandbox(name).labels == {"a": "b"}
    table = ok(server, "sandbox", "ls")
    assert "NAME" in table and "STATUS" in table
    line = next(row for row in table.splitlines() if name in row)
    assert bb_template in line and "ready" in line
    assert ok(server, "sandbox", "stop", name).strip() == name
    assert client.get_sandbox(name).status == "stopped"
    stopped = cli(server, "sandbox", "exec", name, "--", "true")
    assert stopped.returncode == 1
    assert f"start it with: hutch sandbox start {name}".encode() in stopped.stderr
    assert ok(server, "sandbox", "start", name).strip() == name
    assert client.get_sandbox(name).status == "ready"
    assert ok(server, "sandbox", "rm", name).strip() == name
    assert name not in {s.name for s in client.list_sandboxes()}


def test_create_ls_rm_json(server: Server, client: SandboxClient, bb_template: str):
    """--json gives the sandbox objects with stable keys, and per-name results for stop, start
    and rm; create takes limits and TTLs."""
    name = _name()
    created = json.loads(
        ok(
            server,
            *("sandbox", "create", "--template", bb_template, "--name", name),
            *("--vcpus", "1", "--memory", "128Mi", "--idle-ttl", "10m", "--json"),
        )
    )
    assert created["name"] == name and created["status"] == "ready"
    assert created["template"] == bb_template and created["idle_ttl_seconds"] == 600
    listed = json.loads(ok(server, "sandbox", "ls", "--json"))
    mine = next(s for s in listed if s["name"] == name)
    assert set(mine) == {
        *("name", "id", "template", "snapshot_id", "status", "status_message", "created_at"),
        *("expires_at", "ttl_seconds", "idle_ttl_seconds", "labels", "persistent"),
    }
    assert mine["id"] == created["id"]
    with server.http() as http:
        box = http.get(f"/v2/sandboxes/boxes/{name}").json()
    assert (box["vcpus"], box["mem_bytes"]) == (1, 128 * 1024 * 1024)
    done = [{"name": name, "ok": True, "error": None}]
    assert json.loads(ok(server, "sandbox", "stop", name, "--json")) == done
    assert json.loads(ok(server, "sandbox", "start", name, "--json")) == done
    proc = cli(server, "sandbox", "rm", name, "nope-y", "--json")
    assert proc.returncode == 1  # one of them failed; the other is deleted all the same
    results = json.loads(proc.stdout)
    assert results[0] == {"name": name, "ok": True, "error": None}
    assert (
        results[1]["name"] == "nope-y" and not results[1]["ok"] and "nope-y" in results[1]["error"]
    )
    assert name not in {s["name"] for s in json.loads(ok(server, "sandbox", "ls", "--json"))}


def test_unknown_sandbox_is_one_line_and_exit_1(server: Server):
    """An unknown sandbox: the server's message on one stderr line, exit code 1, no traceback."""
    for args in (("exec", "nope-x", "--", "true"), ("rm", "nope-x"), ("logs", "nope-x", "c1")):
        proc = cli(server, "sandbox", *args)
        assert proc.returncode == 1, args
        err = proc.stderr.decode()
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "nope-x" in err and "Traceback" not in err


def test_options_override_environment(server: Server, sb: Sandbox):
    """--endpoint/--api-key work without the variables; a wrong key is a one-line error."""
    env = {k: v for k, v in _env(server).items() if k not in ("HUTCH_ENDPOINT", "HUTCH_API_KEY")}
    args = ["sandbox", "--endpoint", server.url, "--api-key", server.key, "ls", "--json"]
    proc = subprocess.run([*HUTCH, *args], env=env, capture_output=True, timeout=CALL)
    assert proc.returncode == 0, proc.stderr
    assert sb.name in {s["name"] for s in json.loads(proc.stdout)}
    args[4] = "wrong-key"
    proc = subprocess.run([*HUTCH, *args], env=env, capture_output=True, timeout=CALL)
    assert proc.returncode == 1
    assert proc.stderr.startswith(b"error: ") and proc.stderr.count(b"\n") == 1, proc.stderr


#: Runs ``hutch`` with the server's packages (and hutch's server code) made unimportable, as in
#: an install with only the ``cli`` extra.
WITHOUT_SERVER = (
    "import sys\n"
    "for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'starlette', 'alembic', 'asyncpg',\n"
    "          'hutch.server', 'hutch.runtime', 'hutch.store'):\n"
    "    sys.modules[m] = None\n"
    "sys.argv[0] = 'hutch'\n"
    "from hutch._cli_main import main\n"
    "main()\n"
)


def test_client_commands_need_no_server_packages(server: Server, sb: Sandbox):
    """hutch sandbox works where the server's packages are missing; serve says what to
    install."""
    run = [sys.executable, "-c", WITHOUT_SERVER]
    proc = subprocess.run(
        [*run, "sandbox", "ls", "--json"], env=_env(server), capture_output=True, timeout=CALL
    )
    assert proc.returncode == 0, proc.stderr
    assert sb.name in {s["name"] for s in json.loads(proc.stdout)}
    proc = subprocess.run([*run, "serve"], env=_env(server), capture_output=True, timeout=CALL)
    assert proc.returncode == 1 and b"pip install 'hutch[server]'" in proc.stderr


def test_exec_streams_and_exit_code(server: Server, sb: Sandbox):
    """exec keeps stdout and stderr apart, passes env and cwd, and exits as the command."""
    proc = cli(
        server,
        *("sandbox", "exec", sb.name, "--env", "X=1 2", "--cwd", "/tmp", "--"),
        *("sh", "-c", 'echo "out $X $(pwd)"; echo err >&2; exit 3'),
    )
    assert proc.returncode == 3
    assert proc.stdout == b"out 1 2 /tmp\n"
    assert proc.stderr == b"err\n"
    assert cli(server, "sandbox", "exec", sb.name, "--", "true").returncode == 0
    # Arguments are quoted: one argument with a space stays one.
    assert ok(server, "sandbox", "exec", sb.name, "--", "echo", "a  b", "$HOME") == "a  b $HOME\n"


def test_exec_forwards_piped_stdin(server: Server, sb: Sandbox):
    """A piped stdin reaches the command, which sees its end (cat exits)."""
    data = "".join(f"line {i}\n" for i in range(5000)).encode()
    proc = cli(server, "sandbox", "exec", sb.name, "--", "cat", stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    assert ok(server, "sandbox", "exec", sb.name, "--", "wc", "-c", stdin=b"").strip() == "0"


def test_exec_timeout_exits_124(server: Server, sb: Sandbox):
    """--timeout kills the command and exits 124 with a one-line message."""
    proc = cli(server, "sandbox", "exec", sb.name, "--timeout", "1", "--", "sleep", "30")
    assert proc.returncode == 124
    assert proc.stderr.decode().startswith("error: ")


def test_exec_ctrl_c_kills_remote_command(server: Server, sb: Sandbox):
    """SIGINT (Ctrl-C) kills the remote command and exits 130."""
    proc = subprocess.Popen(
        [*HUTCH, "sandbox", "exec", sb.name, "--", "sh", "-c", "echo started; exec sleep 300"],
        env=_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=CALL) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert wait_until(lambda: "sleep 300" not in sb.run("ps", shell="/bin/sh").stdout)


def test_logs_of_finished_command(server: Server, sb: Sandbox):
    """exec --detach prints a command id; logs replays its output, --json with the exit code."""
    command_id = ok(
        server,
        *("sandbox", "exec", sb.name, "--detach", "--"),
        *("sh", "-c", "echo one; echo two >&2; exit 5"),
    ).strip()
    assert command_id
    follow = cli(server, "sandbox", "logs", sb.name, command_id, "--follow")
    assert (follow.returncode, follow.stdout, follow.stderr) == (5, b"one\n", b"two\n")
    plain = cli(server, "sandbox", "logs", sb.name, command_id)
    assert (plain.returncode, plain.stdout) == (0, b"one\n")
    data = json.loads(ok(server, "sandbox", "logs", sb.name, command_id, "--json"))
    assert data == {"command_id": command_id, "stdout": "one\n", "stderr": "two\n", "exit_code": 5}


def test_cp_both_ways_byte_exact(server: Server, sb: Sandbox, tmp_path: Path):
    """cp uploads and downloads files (large ones in ranges) and directories byte for byte."""
    blob = os.urandom(20 * 1024 * 1024 + 123)  # more than two download ranges
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    quiet = cli(server, "sandbox", "cp", str(src), f"{sb.name}:/tmp/up/")
    assert (quiet.returncode, quiet.stderr) == (0, b"")  # no progress bar off a terminal
    assert sb.read("/tmp/up/blob.bin") == blob
    back = tmp_path / "back.bin"
    ok(server, "sandbox", "cp", f"{sb.name}:/tmp/up/blob.bin", str(back))
    assert back.read_bytes() == blob
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\x00\xff")
    (tree / "sub" / "b.txt").write_bytes(b"beta")
    ok(server, "sandbox", "cp", str(tree), f"{sb.name}:/tmp/tree")
    assert sb.read("/tmp/tree/sub/b.txt") == b"beta"
    out = tmp_path / "out"
    out.mkdir()
    ok(server, "sandbox", "cp", f"{sb.name}:/tmp/tree", str(out))
    assert (out / "tree" / "a.txt").read_bytes() == b"alpha\x00\xff"
    assert (out / "tree" / "sub" / "b.txt").read_bytes() == b"beta"
    missing = cli(server, "sandbox", "cp", f"{sb.name}:/tmp/none", str(tmp_path / "x"))
    assert missing.returncode == 1 and missing.stderr.count(b"\n") == 1


def test_snapshot_and_boot_from_it(server: Server, client: SandboxClient, sb: Sandbox):
    """sandbox snapshot captures the files; snapshot ls lists it; a sandbox created from it has
    them; snapshot rm deletes it."""
    sb.write("/home/user/mark.txt", b"kept")
    snap_name = _name()
    snap_id = ok(server, "sandbox", "snapshot", sb.name, snap_name).strip()
    listed = json.loads(ok(server, "snapshot", "ls", "--json"))
    assert any(s["id"] == snap_id and s["name"] == snap_name for s in listed)
    assert snap_name in ok(server, "snapshot", "ls")
    name = ok(server, "sandbox", "create", "--snapshot", snap_name).strip()
    try:
        assert ok(server, "sandbox", "exec", name, "--", "cat", "/home/user/mark.txt") == "kept"
    finally:
        ok(server, "sandbox", "rm", name)
    ok(server, "snapshot", "rm", snap_id)
    assert snap_id not in {s["id"] for s in json.loads(ok(server, "snapshot", "ls", "--json"))}


def test_template_ls_create_rm(server: Server):
    """template create/ls/rm, plain and --json."""
    name = _name()
    assert (
        ok(server, "template", "create", name, "local/busybox", "--memory", "64Mi").strip() == name
    )
    listed = json.loads(ok(server, "template", "ls", "--json"))
    mine = next(t for t in listed if t["name"] == name)
    assert mine["image"].startswith("local/busybox") and mine["memory"] == "64Mi"
    assert name in ok(server, "template", "ls")
    assert ok(server, "template", "rm", name).strip() == name
    assert name not in {t["name"] for t in json.loads(ok(server, "template", "ls", "--json"))}


def test_cp_progress_bar_on_a_terminal(server: Server, sb: Sandbox, tmp_path: Path):
    """On a terminal a large download shows a progress bar with the bytes moved; `sb:` alone
    is the sandbox's home."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    ok(server, "sandbox", "cp", str(src), f"{sb.name}:")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "hutch", "sandbox", "cp", f"{sb.name}:big.bin", str(tmp_path / "back.bin")],
        env=_env(server),
        timeout=CALL,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert b"3.1/3.1 MB" in child.before
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def _spawn(server: Server, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "hutch", "sandbox", "shell", *args],
        env=_env(server),
        dimensions=(24, 80),
        timeout=30 * TIME_SCALE,
    )
    return child


def test_shell_pty_resize_detach_attach(server: Server, sb: Sandbox):
    """shell runs in a PTY: typed commands run, a resize reaches `stty size`, Ctrl-] detaches
    with the id, --attach returns to the same shell, and its exit code is the CLI's."""
    child = _spawn(server, sb.name)
    try:
        child.expect("# ")  # the prompt: the session is up
        child.sendline("echo $((6 * 7))")
        child.expect("42")
        child.sendline("stty size")
        child.expect("24 80")
        child.setwinsize(33, 111)
        child.sendline("stty size")
        child.expect("33 111")
        child.sendline("MARK=kept-$((40 + 2))")
        child.send("\x1d")
        child.expect(r"detached from (\S+); re-attach with: ")
        command_id = child.match.group(1).decode()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    child = _spawn(server, sb.name, "--attach", command_id)
    try:
        child.sendline("echo v=$MARK")
        child.expect("v=kept-42")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7
    assert re.fullmatch(r"[A-Za-z0-9._:-]+", command_id)


def test_shell_without_terminal_is_refused(server: Server, sb: Sandbox):
    """shell with no terminal says to use exec and exits 2."""
    proc = cli(server, "sandbox", "shell", sb.name)
    assert proc.returncode == 2 and b"exec" in proc.stderr
