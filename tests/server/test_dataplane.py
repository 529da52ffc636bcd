"""The data plane (spec §3) through the hutch SDK against a real server.

Commands, files, the container's identity, bad input on the wire, and path safety: sandboxed code
is hostile, so no path, symlink, ``..`` or magic link it sets up may make the server touch a host
file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import (
    CommandTimeoutError,
    ResourceNotFoundError,
    Sandbox,
    SandboxClient,
    SandboxClientError,
    SandboxOperationError,
)
from tests.conftest import (
    HUTCH,
    TIME_SCALE,
    Server,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.root

MiB = 1024 * 1024
#: What "promptly" means for answers that must not wait on a command or a hostile file.
PROMPT = 5 * TIME_SCALE


def _rand() -> str:
    return secrets.token_hex(6)


@pytest.fixture(scope="module")
def neighbour(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """A second sandbox that must keep working whatever the tests do to the others."""
    with client.sandbox(bb_template) as sb:
        yield sb


def _still_serving(server: Server, *sandboxes: Sandbox) -> None:
    assert server.alive()
    for sb in sandboxes:
        result = sb.run("echo ok")
        assert (result.stdout, result.exit_code) == ("ok\n", 0)


def _envelope(resp: httpx.Response, status: int, error: str) -> str:
    """Assert the spec's error envelope; returns its message."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"detail"}, body
    assert body["detail"]["error"] == error, body
    message = body["detail"]["message"]
    assert isinstance(message, str) and message
    return message


def _dp(sb: Sandbox) -> str:
    """The data-plane path of ``sb`` on the server (``dataplane_url`` without the origin)."""
    assert sb.dataplane_url is not None and sb.id is not None
    assert sb.dataplane_url.endswith(f"/dp/{sb.id}")
    return f"/dp/{sb.id}"


def _raw_http(server: Server, head: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    """Send a hand-made HTTP/1.1 request (httpx refuses lying headers); returns status and JSON."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10 * TIME_SCALE) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"connection closed before a response: {data!r}"
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        lines = header.decode().split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk
            rest += chunk
    return status, json.loads(rest[:length])


def _read_or_refused(sb: Sandbox, path: str) -> bytes | None:
    """The file's bytes, or None when the server refused (any error, answered promptly)."""
    start = time.monotonic()
    try:
        return sb.read(path, timeout=int(10 * TIME_SCALE))
    except (SandboxOperationError, ResourceNotFoundError):
        return None
    finally:
        assert time.monotonic() - start < PROMPT, f"reading {path} took too long"


def _write_or_refused(sb: Sandbox, path: str, content: str) -> bool:
    """True if the write succeeded, False if the server refused it (promptly)."""
    start = time.monotonic()
    try:
        sb.write(path, content, timeout=int(10 * TIME_SCALE))
    except SandboxOperationError:
        return False
    finally:
        assert time.monotonic() - start < PROMPT, f"writing {path} took too long"
    return True


# -- run ---------------------------------------------------------------------------------------


def test_run_stdout(sandbox: Sandbox) -> None:
    """A command's stdout comes back exactly, with exit code 0 and success."""
    result = sandbox.run("echo 'Hello, World!'")
    assert result.stdout == "Hello, World!\n"
    assert result.stderr == ""
    assert result.exit_code == 0
    assert result.success


def test_run_stderr(sandbox: Sandbox) -> None:
    """stderr is kept apart from stdout."""
    result = sandbox.run("echo out; echo oops >&2")
    assert result.stdout == "out\n"
    assert result.stderr == "oops\n"
    assert result.exit_code == 0


def test_run_nonzero_exit(sandbox: Sandbox) -> None:
    """A failing command is a result, not an error: exit code as given, success False."""
    result = sandbox.run("exit 1")
    assert (result.exit_code, result.success) == (1, False)
    assert sandbox.run("exit 42").exit_code == 42
    assert sandbox.run("kill -9 $$").exit_code == 137  # killed by signal N: 128+N


def test_run_falls_back_to_sh(sandbox: Sandbox) -> None:
    """The image has no /bin/bash: the default shell falls back to /bin/sh."""
    assert sandbox.run("echo $0").stdout == "/bin/sh\n"


def test_run_env(sandbox: Sandbox) -> None:
    """env is merged over the sandbox environment, for that command only."""
    result = sandbox.run('echo "$A|$HOME|$B"', env={"A": "1", "B": "x y=z"})
    assert result.stdout == "1|/home/user|x y=z\n"
    assert sandbox.run('echo "[$A]"').stdout == "[]\n"
    assert sandbox.run('echo "$HOME"', env={"HOME": "/tmp"}).stdout == "/tmp\n"


def test_run_cwd(sandbox: Sandbox) -> None:
    """cwd sets the working directory; a relative cwd starts at /home/user."""
    assert sandbox.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    sandbox.run("mkdir -p /home/user/sub")
    assert sandbox.run("pwd", cwd="sub").stdout == "/home/user/sub\n"


def test_run_default_cwd_is_home(sandbox: Sandbox) -> None:
    """Without cwd, commands run in /home/user."""
    assert sandbox.run("pwd").stdout == "/home/user\n"


def test_run_timeout_kills_and_keeps_partial_output(server: Server, sandbox: Sandbox) -> None:
    """Blocking /execute: timeout stops the command promptly with exit code 124 and the output
    so far; nothing of it is left running."""
    start = time.monotonic()
    with server.http() as http:
        r = http.post(
            f"/dp/{sandbox.id}/execute", json={"command": "echo start; sleep 30", "timeout": 1}
        )
    assert time.monotonic() - start < PROMPT
    assert r.status_code == 200
    assert r.json() == {"stdout": "start\n", "stderr": "", "exit_code": 124}
    assert "sleep 30" not in sandbox.run("ps -o args").stdout


def test_run_timeout_over_websocket_raises(sandbox: Sandbox) -> None:
    """Streaming run: a timeout raises CommandTimeoutError promptly and kills the command."""
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError, match="timed out after 1 seconds"):
        sandbox.run("echo start; sleep 30", timeout=1)
    assert time.monotonic() - start < PROMPT
    assert "sleep 30" not in sandbox.run("ps -o args").stdout


def test_run_unknown_shell(sandbox: Sandbox) -> None:
    """A shell the image lacks is a CommandError, not a fallback."""
    with pytest.raises(SandboxOperationError) as info:
        sandbox.run("echo hi", shell="/bin/zsh")
    assert info.value.error_type == "CommandError"
    assert info.value.operation == "command"
    assert "/bin/zsh" in str(info.value)


def test_run_missing_cwd(sandbox: Sandbox) -> None:
    """A cwd that does not exist is a clear CommandError naming the directory."""
    with pytest.raises(SandboxOperationError) as info:
        sandbox.run("pwd", cwd="/no/such/dir")
    assert info.value.error_type == "CommandError"
    assert "/no/such/dir" in str(info.value)
    assert "does not exist" in str(info.value)


def test_run_background_process_returns_promptly(sandbox: Sandbox) -> None:
    """A command that leaves a background process answers at once; the process lives on."""
    start = time.monotonic()
    result = sandbox.run("sleep 300 & echo started")
    assert time.monotonic() - start < PROMPT
    assert (result.stdout, result.exit_code) == ("started\n", 0)
    assert "sleep 300" in sandbox.run("ps -o args").stdout

    start = time.monotonic()
    result = sandbox.run("(while :; do echo tick; sleep 0.05; done) & echo main")
    assert time.monotonic() - start < PROMPT
    assert result.exit_code == 0
    # The background loop may print before or after "main"; what matters is that the answer
    # came while the loop still runs, with "main" in it and the loop's output not awaited.
    lines = result.stdout.splitlines()
    assert "main" in lines
    assert set(lines) <= {"main", "tick"}


def test_run_utf8_round_trip(server: Server, sandbox: Sandbox) -> None:
    """UTF-8 in the command, env and output round-trips; each invalid byte becomes one "?"
    (so byte offsets stay exact), on the streaming and the blocking path alike."""
    text = "héllo ✓ 日本 🎉"
    assert sandbox.run(f"echo '{text}'").stdout == text + "\n"
    assert sandbox.run('echo "$T"', env={"T": text}).stdout == text + "\n"
    assert sandbox.run("printf 'a\\377b'").stdout == "a?b"
    with server.http() as http:
        r = http.post(f"/dp/{sandbox.id}/execute", json={"command": "printf 'a\\377b'"})
    assert r.json()["stdout"] == "a?b"


def test_run_large_output_arrives_whole(sandbox: Sandbox) -> None:
    """About 5 MB of stdout and of stderr arrive complete and in order."""
    expected = "".join(f"{i}\n" for i in range(1, 750_001))
    assert len(expected) > 5_000_000
    result = sandbox.run("seq 1 750000; seq 1 750000 >&2")
    assert result.exit_code == 0
    assert result.stdout == expected
    assert result.stderr == expected


# -- write / read ------------------------------------------------------------------------------


def test_write_read_text(sandbox: Sandbox) -> None:
    """A str is written UTF-8 encoded; commands and read() both see it."""
    sandbox.write("/tmp/hello.txt", "héllo\nwörld")
    assert sandbox.read("/tmp/hello.txt") == "héllo\nwörld".encode()
    assert sandbox.run("cat /tmp/hello.txt").stdout == "héllo\nwörld"


def test_write_read_binary(sandbox: Sandbox) -> None:
    """All 256 byte values survive the round trip, as the sandbox sees them too."""
    data = bytes(range(256)) * 4
    sandbox.write("/tmp/bin", data)
    assert sandbox.read("/tmp/bin") == data
    hexdump = sandbox.run("od -An -tx1 -v /tmp/bin | tr -d ' \\n'").stdout
    assert hexdump == data.hex()


def test_write_read_empty(sandbox: Sandbox) -> None:
    """An empty file can be written and read."""
    sandbox.write("/tmp/empty", b"")
    assert sandbox.read("/tmp/empty") == b""
    assert sandbox.run("wc -c < /tmp/empty").stdout.strip() == "0"


def test_relative_paths_resolve_from_home(sandbox: Sandbox) -> None:
    """Relative paths start at /home/user for write and read."""
    sandbox.write("notes/rel.txt", "rel")
    assert sandbox.run("cat /home/user/notes/rel.txt").stdout == "rel"
    assert sandbox.read("notes/rel.txt") == b"rel"
    assert sandbox.read("/home/user/notes/rel.txt") == b"rel"


def test_write_creates_missing_parents(sandbox: Sandbox) -> None:
    """Missing parent directories are created."""
    sandbox.write("/app/deep/dir/x", "v")
    assert sandbox.run("test -d /app/deep/dir && cat /app/deep/dir/x").stdout == "v"


def test_overwrite_truncates(sandbox: Sandbox) -> None:
    """Writing over a longer file leaves only the new content."""
    sandbox.write("/tmp/over", "a" * 1000)
    sandbox.write("/tmp/over", "b")
    assert sandbox.read("/tmp/over") == b"b"


def test_read_file_made_by_command(sandbox: Sandbox) -> None:
    """Files written by commands are readable through the API."""
    sandbox.run("printf abc > /tmp/made")
    assert sandbox.read("/tmp/made") == b"abc"


def test_read_missing_file(sandbox: Sandbox) -> None:
    """A missing file is ResourceNotFoundError with resource_type 'file'."""
    for path in ("/tmp/does-not-exist", "/no/such/dir/file", "missing-relative"):
        with pytest.raises(ResourceNotFoundError) as info:
            sandbox.read(path)
        assert info.value.resource_type == "file"
        assert info.value.status == 404


def test_read_directory_is_an_error(sandbox: Sandbox) -> None:
    """Reading a directory is a read error; writing onto one is a write error."""
    with pytest.raises(SandboxOperationError) as info:
        sandbox.read("/tmp")
    assert info.value.operation == "read"
    with pytest.raises(SandboxOperationError) as winfo:
        sandbox.write("/tmp", "x")
    assert winfo.value.operation == "write"


def test_large_file_round_trip(sandbox: Sandbox) -> None:
    """A 20 MiB random file round-trips byte for byte, and the sandbox sees the same bytes."""
    data = os.urandom(20 * MiB)
    sandbox.write("/tmp/big.bin", data)
    assert (
        sandbox.run("sha256sum /tmp/big.bin").stdout.split()[0] == hashlib.sha256(data).hexdigest()
    )
    assert sandbox.read("/tmp/big.bin") == data


# -- identity ----------------------------------------------------------------------------------


def test_hostname_is_sandbox_name(sandbox: Sandbox) -> None:
    """The container's hostname (and /etc/hostname) is the sandbox name."""
    assert sandbox.run("hostname").stdout == f"{sandbox.name}\n"
    assert sandbox.read("/etc/hostname") == f"{sandbox.name}\n".encode()


def test_pid_1_is_the_sandbox_init(sandbox: Sandbox) -> None:
    """PID 1, seen by commands and by the file API, is the sandbox's init, not the host's."""
    own = sandbox.read("/proc/1/cmdline")
    assert own.split(b"\0")[0] == b"/dev/.hutch-init"
    assert own != Path("/proc/1/cmdline").read_bytes()
    assert sandbox.run("cat /proc/1/cmdline").stdout.split("\0")[0] == "/dev/.hutch-init"


def test_own_pid_namespace(sandbox: Sandbox) -> None:
    """Commands see only the sandbox's processes, none of the host's."""
    out = sandbox.run("ps -o pid,args").stdout
    assert "/dev/.hutch-init" in out
    assert "serve" not in out and "pytest" not in out
    assert len(out.splitlines()) <= 4  # header, init, the shell, ps


# -- bad input ---------------------------------------------------------------------------------


def test_execute_rejects_bad_bodies(server: Server, sandbox: Sandbox, neighbour: Sandbox) -> None:
    """Unknown fields, wrong types, NUL bytes and non-JSON are 422 ValidationErrors."""
    url = f"{_dp(sandbox)}/execute"
    with server.http() as http:
        msg = _envelope(
            http.post(url, json={"command": "echo", "bogus": 1}), 422, "ValidationError"
        )
        assert "bogus" in msg
        msg = _envelope(
            http.post(url, json={"command": "echo", "timeout": "x"}), 422, "ValidationError"
        )
        assert "timeout" in msg
        for body in (
            {"command": "echo a\x00b"},
            {"command": "echo", "cwd": "/tmp\x00"},
            {"command": "echo", "env": {"A\x00": "1"}},
            {"command": "echo", "env": {"A=B": "1"}},
            {"command": "echo", "timeout": -1},
            {"command": 1},
            {},
            [1, 2],
        ):
            _envelope(http.post(url, json=body), 422, "ValidationError")
        resp = http.post(url, content=b"{not json", headers={"content-type": "application/json"})
        _envelope(resp, 422, "ValidationError")
    _still_serving(server, sandbox, neighbour)


def test_nul_and_empty_paths_rejected(server: Server, sandbox: Sandbox, neighbour: Sandbox) -> None:
    """A path with a NUL byte, or an empty path, is a WriteError/ReadError on upload/download."""
    base = _dp(sandbox)
    files = {"file": ("file", b"x", "application/octet-stream")}
    with server.http() as http:
        for path in ("\x00", "/tmp/a\x00b", ""):
            _envelope(
                http.post(f"{base}/upload", params={"path": path}, files=files), 400, "WriteError"
            )
            _envelope(http.get(f"{base}/download", params={"path": path}), 400, "ReadError")
        _envelope(http.get(f"{base}/download"), 422, "ValidationError")
    # Nothing was written, not even at the path cut short at the NUL byte.
    assert sandbox.run("ls -A /tmp").stdout == ""
    _still_serving(server, sandbox, neighbour)


def test_upload_needs_one_file_part(server: Server, sandbox: Sandbox, neighbour: Sandbox) -> None:
    """An upload body that is not multipart with a 'file' part is a 422."""
    url = f"{_dp(sandbox)}/upload"
    with server.http() as http:
        _envelope(http.post(url, params={"path": "/tmp/x"}, content=b"raw"), 422, "ValidationError")
        other = {"other": ("file", b"x", "application/octet-stream")}
        _envelope(http.post(url, params={"path": "/tmp/x"}, files=other), 422, "ValidationError")
    with pytest.raises(ResourceNotFoundError):
        sandbox.read("/tmp/x")
    _still_serving(server, sandbox, neighbour)


def test_upload_part_header_is_bounded(
    server: Server, sandbox: Sandbox, neighbour: Sandbox
) -> None:
    """A multipart part whose header runs for a megabyte is a 422, not held in memory."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\nX-Pad: '
        + b"a" * MiB
        + b"\r\n\r\ndata\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    with server.http() as http:
        r = http.post(
            f"{_dp(sandbox)}/upload", params={"path": "/tmp/h"}, content=body, headers=headers
        )
    assert "header" in _envelope(r, 422, "ValidationError")
    _still_serving(server, sandbox, neighbour)


def test_huge_content_length_refused_before_body(
    server: Server, sandbox: Sandbox, neighbour: Sandbox
) -> None:
    """A Content-Length above the 512 MiB limit gets 413 at once, without the body being sent."""
    head = (
        f"POST {_dp(sandbox)}/upload?path=/tmp/huge HTTP/1.1\r\n"
        f"Host: test\r\nX-Api-Key: {server.key}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {600 * MiB}\r\n\r\n"
    )
    start = time.monotonic()
    status, body = _raw_http(server, head)
    assert time.monotonic() - start < PROMPT
    assert status == 413
    assert body["detail"]["error"] == "PayloadTooLarge"  # type: ignore[index]
    _still_serving(server, sandbox, neighbour)


def test_upload_without_content_length_refused(
    server: Server, sandbox: Sandbox, neighbour: Sandbox
) -> None:
    """A chunked upload with no Content-Length is refused (411) and writes nothing."""
    part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="file"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nx\r\n--b--\r\n"
    )
    head = (
        f"POST {_dp(sandbox)}/upload?path=/tmp/chunked HTTP/1.1\r\n"
        f"Host: test\r\nX-Api-Key: {server.key}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = f"{len(part):x}\r\n".encode() + part + b"\r\n0\r\n\r\n"
    status, answer = _raw_http(server, head, body)
    assert status == 411
    assert answer["detail"]["error"] == "ValidationError"  # type: ignore[index]
    with pytest.raises(ResourceNotFoundError):
        sandbox.read("/tmp/chunked")
    _still_serving(server, sandbox, neighbour)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    """A second server whose upload limit is 1 MiB (``--max-upload-bytes``)."""
    data = tmp_path_factory.mktemp("small") / "data"
    data.mkdir()
    subprocess.run(
        [*HUTCH, "image", "import", "local/busybox", str(busybox_tar), "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    srv = start_server(data, "--max-upload-bytes", str(MiB))
    try:
        yield srv
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


def test_upload_limit(small_server: Server) -> None:
    """Uploads up to the limit work; one byte more is 413 and leaves the old file untouched."""
    with small_server.client() as c:
        c.create_template("small-bb", "local/busybox")
        with c.sandbox("small-bb") as sb:
            sb.write("/tmp/f", b"a" * MiB)
            assert sb.read("/tmp/f") == b"a" * MiB
            for size in (MiB + 1, 3 * MiB):
                with pytest.raises(SandboxClientError) as info:
                    sb.write("/tmp/f", b"b" * size)
                assert info.value.status == 413
                assert "limit" in str(info.value)
            assert sb.read("/tmp/f") == b"a" * MiB
            assert sb.run("echo ok").stdout == "ok\n"
    assert small_server.alive()


@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["missing", "wrong"])
def test_dataplane_needs_api_key(
    server: Server, sandbox: Sandbox, neighbour: Sandbox, key: str | None
) -> None:
    """Each data-plane endpoint answers 401 (envelope) without a valid key, and does nothing."""
    marker = f"/tmp/unauth-{_rand()}"
    headers = {} if key is None else {"X-Api-Key": key}
    files = {"file": ("file", b"x", "application/octet-stream")}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for sandbox_path in (_dp(sandbox), "/dp/no-such-sandbox"):
            _envelope(
                http.post(f"{sandbox_path}/execute", json={"command": f"touch {marker}"}),
                401,
                "Unauthorized",
            )
            # Even with a bad body, authentication comes first.
            _envelope(http.post(f"{sandbox_path}/execute", json={"x": 1}), 401, "Unauthorized")
            _envelope(
                http.post(f"{sandbox_path}/upload", params={"path": marker}, files=files),
                401,
                "Unauthorized",
            )
            _envelope(
                http.get(f"{sandbox_path}/download", params={"path": "/etc/hostname"}),
                401,
                "Unauthorized",
            )
    assert sandbox.run(f"test -e {marker} && echo exists || echo absent").stdout == "absent\n"
    _still_serving(server, sandbox, neighbour)


def test_unknown_sandbox_is_404(server: Server, neighbour: Sandbox) -> None:
    """A data-plane call for a sandbox that does not exist is a 404 NotFound."""
    with server.http() as http:
        _envelope(
            http.post("/dp/no-such-sandbox/execute", json={"command": "echo"}), 404, "NotFound"
        )
        _envelope(http.get("/dp/no-such-sandbox/download", params={"path": "/x"}), 404, "NotFound")
    _still_serving(server, neighbour)


# -- path safety -------------------------------------------------------------------------------


def test_symlink_to_root_reads_the_sandbox_file(sandbox: Sandbox) -> None:
    """Through `ln -s / /tmp/h`, /tmp/h/etc/hostname is the sandbox's hostname file."""
    sandbox.run("ln -s / /tmp/h")
    got = sandbox.read("/tmp/h/etc/hostname")
    assert got == f"{sandbox.name}\n".encode()
    assert got != Path("/etc/hostname").read_bytes()


@pytest.fixture
def canary() -> Iterator[tuple[Path, bytes]]:
    """A host file with secret content that no sandbox may read or change."""
    secret = f"host-secret-{_rand()}".encode()
    path = Path(f"/tmp/hutch-canary-{_rand()}")
    path.write_bytes(secret)
    try:
        yield path, secret
    finally:
        path.unlink()


def test_host_file_unreachable(sandbox: Sandbox, canary: tuple[Path, bytes]) -> None:
    """A host file is unreachable by its path, by `..`, or by a symlink naming it."""
    path, secret = canary
    sandbox.run(f"ln -s {path} /tmp/link; ln -s ../../../../../..{path} /tmp/rel-link")
    for name in (str(path), f"../../../../../../..{path}", "/tmp/link", "/tmp/rel-link"):
        assert _read_or_refused(sandbox, name) is None, name
    assert _write_or_refused(sandbox, "/tmp/link", "pwned")
    assert path.read_bytes() == secret
    assert sandbox.run(f"cat {path}").stdout == "pwned"  # the write landed inside the sandbox


def test_writes_through_symlinks_stay_inside(sandbox: Sandbox) -> None:
    """Writes through symlinks to /, /etc or a dangling absolute target land in the sandbox."""
    r = _rand()
    sandbox.run(
        f"ln -s / /tmp/root; ln -s /etc /home/user/etc2; ln -s /hutch-escape-{r} /tmp/dangling"
    )
    cases = {
        f"/tmp/root/etc/pwned-{r}": f"/etc/pwned-{r}",
        f"etc2/pwned2-{r}": f"/etc/pwned2-{r}",
        "/tmp/dangling": f"/hutch-escape-{r}",
        f"/tmp/root/newdir-{r}/f": f"/newdir-{r}/f",
    }
    try:
        for written, inside in cases.items():
            sandbox.write(written, f"content of {written}")
            assert not Path(inside).exists(), f"{written} reached the host at {inside}"
            assert sandbox.run(f"cat {inside}").stdout == f"content of {written}"
    finally:
        for inside in cases.values():  # only if the test failed: never leave litter on the host
            if Path(inside).is_file():
                Path(inside).unlink()


def test_dotdot_paths_stay_inside(sandbox: Sandbox) -> None:
    """`..` past the root clamps at the sandbox root, for relative and absolute paths."""
    r = _rand()
    cases = {
        f"../../../../../../tmp/escape-{r}": f"/tmp/escape-{r}",
        f"/../../tmp/../tmp/escape2-{r}": f"/tmp/escape2-{r}",
        f"/home/user/../../../../../tmp/escape3-{r}": f"/tmp/escape3-{r}",
    }
    sandbox.run("ln -s ../../../../../../../.. /tmp/up")
    cases[f"/tmp/up/tmp/escape4-{r}"] = f"/tmp/escape4-{r}"
    try:
        for written, inside in cases.items():
            sandbox.write(written, "e")
            assert not Path(inside).exists(), f"{written} reached the host at {inside}"
            assert sandbox.run(f"cat {inside}").stdout == "e"
            assert sandbox.read(written) == b"e"
    finally:
        for inside in cases.values():  # only if the test failed: never leave litter on the host
            if Path(inside).is_file():
                Path(inside).unlink()


def test_proc_root_symlink_cannot_escape(sandbox: Sandbox) -> None:
    """A symlink to /proc/1/root neither writes nor reads outside the sandbox."""
    r = _rand()
    sandbox.run("ln -s /proc/1/root /tmp/p1")
    target = f"/tmp/p1/etc/pwned3-{r}"
    wrote = _write_or_refused(sandbox, target, "z")
    escaped = Path(f"/etc/pwned3-{r}").exists()
    if escaped:
        Path(f"/etc/pwned3-{r}").unlink()
    assert not escaped
    if wrote:
        assert sandbox.run(f"cat /etc/pwned3-{r}").stdout == "z"
    got = _read_or_refused(sandbox, "/tmp/p1/etc/hostname")
    assert got in (None, f"{sandbox.name}\n".encode())


@pytest.mark.parametrize(
    "path",
    [
        "/proc/self/root/etc/hostname",
        "/proc/1/root/etc/hostname",
        "/proc/1/root/etc/shadow",
        "/proc/1/cwd/etc/hostname",
        "/proc/self/cwd/etc/passwd",
        "/proc/thread-self/root/etc/passwd",
    ],
)
def test_magic_links_never_return_host_files(sandbox: Sandbox, path: str) -> None:
    """/proc magic links give an error or the sandbox's own file, never the host's."""
    got = _read_or_refused(sandbox, path)
    if got is not None:
        inside = sandbox.run(f"cat {path}")
        assert inside.exit_code == 0 and got == inside.stdout.encode()
    host = Path(path.replace("/proc/self/", "/proc/1/").replace("/proc/thread-self/", "/proc/1/"))
    if got is not None and host.is_file():
        assert got != host.read_bytes()


def test_special_files_do_not_hang(server: Server, sandbox: Sandbox, neighbour: Sandbox) -> None:
    """FIFOs, /dev/zero and symlink loops are refused promptly, for reads and writes."""
    sandbox.run(
        "mkfifo /tmp/fifo; ln -s /tmp/fifo /tmp/fifo-link; ln -s /dev/zero /tmp/zero-link;"
        " ln -s /tmp/loop /tmp/loop"
    )
    for path in (
        "/tmp/fifo",
        "/tmp/fifo-link",
        "/tmp/zero-link",
        "/dev/zero",
        "/dev/urandom",
        "/tmp/loop",
        "/dev/stdin",
    ):
        assert _read_or_refused(sandbox, path) is None, path
    for path in ("/tmp/fifo", "/tmp/fifo-link", "/dev/null", "/tmp/loop"):
        assert not _write_or_refused(sandbox, path, "x"), path
    _still_serving(server, sandbox, neighbour)
