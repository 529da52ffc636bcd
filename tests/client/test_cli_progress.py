"""Progress the CLI shows on a terminal: the server's pull/unpack messages with a layer bar while
``sandbox create`` waits (a real local registry, a real PTY), and a byte bar while ``cp``
streams a large upload in bounded memory."""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from hutch import AsyncSandboxClient, Sandbox, SandboxClient
from hutch._cli_sandbox._progress import layer_progress
from tests.conftest import TIME_SCALE, Server, remove_all_sandboxes, start_server, stop_server
from tests.registry import Registry

#: Seconds one CLI call may take (the pull of a 200 MB image included).
CALL = 240 * TIME_SCALE
MiB = 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUTCH_", "LANGSMITH_"))}
    return {
        **env,
        "HUTCH_ENDPOINT": server.url,
        "HUTCH_API_KEY": server.key,
        "COLUMNS": "200",
        "TERM": "xterm",
    }


def _spawn(server: Server, *args: str, wrap: list[str] | None = None) -> pexpect.spawn:
    argv = [*(wrap or []), sys.executable, "-m", "hutch", *args]
    return pexpect.spawn(argv[0], argv[1:], env=_env(server), timeout=CALL, dimensions=(24, 200))


def test_layer_progress_parses_layer_i_of_n() -> None:
    """`layer i of n` anywhere in a status message gives (i, n); anything else, or numbers
    out of order, gives None."""
    assert layer_progress("Unpacking 127.0.0.1:5000/srv/py:1: layer 2 of 5") == (2, 5)
    assert layer_progress("Unpacking x: layer 1 of 1") == (1, 1)
    assert layer_progress("Pulling x: 12.0 MB received, 3 layers") is None
    assert layer_progress("Pulling docker.io/library/python:3.12") is None
    assert layer_progress(None) is None
    assert layer_progress("") is None
    assert layer_progress("layer 0 of 3") is None
    assert layer_progress("layer 4 of 3") is None
    assert layer_progress("multilayer 1 of 2") is None


@pytest.fixture(scope="module")
def pull_server(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, python_tar: Path
) -> Iterator[tuple[Server, str]]:
    """A server that may pull from the local registry, which holds a 200 MB one-layer image
    (large enough that unpacking it outlasts several status polls)."""
    work = tmp_path_factory.mktemp("progress-server")
    image = f"{registry.host}/srv/python-progress:1"
    registry.push(f"tarball:{python_tar}", "srv/python-progress:1")
    data = work / "data"
    data.mkdir()
    server = start_server(data, "--insecure-registry", registry.host)
    try:
        yield server, image
    finally:
        stop_server(server)
        remove_all_sandboxes(data)


@pytest.mark.root
def test_create_shows_pull_and_layer_progress(pull_server: tuple[Server, str]) -> None:
    """On a terminal, `sandbox create` shows the server's pull messages and, while the image is
    unpacked, `layer i of n` with a bar of the layers done; it ends with the sandbox ready."""
    server, image = pull_server
    with server.client() as client:
        tpl = f"t-{uuid.uuid4().hex[:8]}"
        # The template starts the pull (a prefetch); the create joins it and reports it.
        client.create_template(tpl, image, cpu="500m", memory="256Mi")
        name = f"cli-{secrets.token_hex(4)}"
        child = _spawn(server, "sandbox", "create", "-t", tpl, "-n", name)
        child.expect(r"layer (\d+) of (\d+)")
        i, n = int(child.match.group(1)), int(child.match.group(2))
        assert 1 <= i <= n
        child.expect(rf"(?<!\d){i - 1}/{n}(?!\d)")  # the bar's count: layers unpacked so far
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        last = child.before.decode(errors="replace").splitlines()[-1]
        assert _ANSI.sub("", last).strip() == name  # the display erased itself before the name
        assert client.get_sandbox(name).status == "ready"
        client.delete_sandbox(name)
        client.delete_template(tpl)


@pytest.mark.root
def test_failed_provisioning_prints_message_and_deletes(pull_server: tuple[Server, str]) -> None:
    """A sandbox whose image cannot be pulled: the server's message on one line, exit 1, and no
    sandbox left behind (as when the server waits for the create)."""
    server, image = pull_server
    with server.client() as client:
        tpl = f"t-{uuid.uuid4().hex[:8]}"
        client.create_template(tpl, image.replace("python-progress", "nothing-here"))
        name = f"cli-{secrets.token_hex(4)}"
        child = _spawn(server, "sandbox", "create", "-t", tpl, "-n", name)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1
        out = child.before.decode(errors="replace")
        assert re.search(r"error: .*nothing-here", out), out
        assert name not in {sb.name for sb in client.list_sandboxes()}
        client.delete_template(tpl)


@pytest.mark.root
def test_cp_upload_streams_with_a_bar(server: Server, sb: Sandbox, tmp_path: Path) -> None:
    """A 64 MiB upload on a terminal shows a byte bar that ends full, arrives byte-exact, and
    the CLI's peak memory stays far below the file's size (the file is streamed)."""
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    child = _spawn(
        server, "sandbox", "cp", str(src), f"{sb.name}:big.bin", wrap=["/usr/bin/time", "-v"]
    )
    child.expect(r"67\.1/67\.1 MB")
    child.expect(pexpect.EOF)
    child.close()
    out = child.before.decode(errors="replace")
    assert child.exitstatus == 0, out
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out).group(1))  # type: ignore[union-attr]
    # Holding the whole file would put the peak above the file's size on top of the
    # interpreter's own (about 45 MiB); the old whole-file write peaked near 230 MiB.
    assert peak_kib * 1024 < 64 * MiB, peak_kib
    digest = sb.run("sha256sum big.bin").stdout.split()[0]
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.root
def test_timeout_leaves_it_provisioning(
    pull_server: tuple[Server, str], registry: Registry, python_tar: Path, tmp_path: Path
) -> None:
    """Not ready within --timeout (a 200 MB image is still being pulled): exit 1 with a message
    saying it keeps provisioning and how to delete it; the sandbox is kept."""
    server, _ = pull_server
    # A layer of its own (the server stores layers by digest, so the other test's pull of the
    # same tarball would make this one instant): the python tree plus one file.
    variant = tmp_path / "python-variant.tar"
    shutil.copyfile(python_tar, variant)
    with tarfile.open(variant, "a") as tar:
        marker = secrets.token_bytes(16)
        info = tarfile.TarInfo("marker")
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker))
    registry.push(f"tarball:{variant}", "srv/python-slow:1")
    with server.client() as client:
        tpl = f"t-{uuid.uuid4().hex[:8]}"
        client.create_template(tpl, f"{registry.host}/srv/python-slow:1")
        name = f"cli-{secrets.token_hex(4)}"
        child = _spawn(server, "sandbox", "create", "-t", tpl, "-n", name, "--timeout", "1")
        child.expect(pexpect.EOF)
        child.close()
        out = _ANSI.sub("", child.before.decode(errors="replace"))
        assert child.exitstatus == 1, out
        assert f"Sandbox '{name}' not ready after 1s" in out
        assert "it keeps provisioning" in out
        assert f"or delete it with hutch sandbox rm {name}" in " ".join(out.split())
        assert client.get_sandbox_status(name).status in ("provisioning", "ready")
        client.delete_sandbox(name)
        client.delete_template(tpl)


@pytest.mark.root
async def test_sdk_write_from_a_file_reports_progress(server: Server, sb: Sandbox) -> None:
    """The SDK's write takes a binary file (sent from its start, whatever its position) and
    calls progress with the growing count of bytes sent, ending at the file's size; sync and
    async alike."""
    data = os.urandom(300 * 1024 + 7)
    seen: list[int] = []
    source = io.BytesIO(data)
    source.seek(1000)
    sb.write("sync.bin", source, progress=seen.append)
    assert sb.read("sync.bin") == data
    assert seen == sorted(seen) and seen[-1] == len(data) and len(seen) > 2
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as aclient:
        asb = await aclient.get_sandbox(sb.name)
        aseen: list[int] = []
        await asb.write("async.bin", io.BytesIO(data), progress=aseen.append)
        assert await asb.read("async.bin") == data
        assert aseen[-1] == len(data)


@pytest.fixture
def sb(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    with client.sandbox(bb_template) as box:
        yield box
