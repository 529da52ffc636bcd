"""The server's own lifecycle: first-key bootstrap, restart with sandboxes kept, orphans removed."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from hutch import SandboxClient
from tests.conftest import (
    API_KEY,
    HUTCH,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.root


def _env_without_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "HUTCH_API_KEY"}


def test_generated_first_key(tmp_path: Path) -> None:
    """Without HUTCH_API_KEY the first start writes a key to <data>/api-key (0600) and says so."""
    data = tmp_path / "data"
    data.mkdir()
    env = _env_without_key()
    with subprocess.Popen(
        [*HUTCH, "serve", "--port", "0", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        line = ""
        for _ in range(50):
            line = proc.stdout.readline()
            if "API key" in line or not line:
                break
        key_file = data / "api-key"
        assert str(key_file) in line
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip().startswith("hk_")
        proc.terminate()


def test_env_key_only_bootstraps_an_empty_store(tmp_path: Path, busybox_tar: Path) -> None:
    """HUTCH_API_KEY becomes the first key; on a later start with keys stored it adds nothing."""
    data = tmp_path / "data"
    data.mkdir()
    srv = start_server(data)
    try:
        with srv.client() as c:
            assert c.list_templates() == []
        assert not (data / "api-key").exists()
    finally:
        stop_server(srv)
    srv = start_server(data, env={"HUTCH_API_KEY": "another-key"})
    try:
        with srv.client(api_key="another-key") as c, pytest.raises(Exception) as info:
            c.list_templates()
        assert getattr(info.value, "status", None) == 401
        with srv.client(api_key=API_KEY) as c:
            assert c.list_templates() == []
    finally:
        stop_server(srv)


def test_restart_keeps_sandboxes_and_removes_orphans(tmp_path: Path, busybox_tar: Path) -> None:
    """After a restart a sandbox still runs commands and keeps its files; unknown containers go."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(
        [*HUTCH, "image", "import", "local/busybox", str(busybox_tar), "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    srv = start_server(data)
    try:
        with srv.client() as c:
            c.create_template("bb", "local/busybox")
            sb = c.create_sandbox("bb", name="keeper")
            sb.write("/data/note.txt", "still here")
            orphan = c.create_sandbox("bb", name="orphan")
        stop_server(srv)
        # Forget the orphan's record behind the server's back, as if its row were lost.
        import sqlite3

        with sqlite3.connect(data / "hutch.db") as db:
            db.execute("DELETE FROM sandboxes WHERE name = 'orphan'")
        srv = start_server(data)
        with srv.client() as c:
            again = c.get_sandbox("keeper")
            assert again.status == "ready"
            assert again.run("cat /data/note.txt").stdout == "still here"
            assert [s.name for s in c.list_sandboxes()] == ["keeper"]
        assert wait_until(lambda: orphan.id not in srv.runc_ids(), 10)
        assert not (data / "sandboxes" / orphan.id).exists()
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


def test_cli_image_import_list_rm(tmp_path: Path, busybox_tar: Path) -> None:
    """`hutch image import|list|rm` manage the store; a bad archive is a clear error, exit 1."""
    data = str(tmp_path / "data")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HUTCH, "image", *args, "--data-dir", data], capture_output=True, text=True
        )

    r = run("import", "local/bb:1", str(busybox_tar))
    assert r.returncode == 0 and "imported local/bb:1" in r.stdout
    assert "local/bb:1" in run("list").stdout
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all")
    r = run("import", "local/junk", str(junk))
    assert r.returncode == 1 and r.stderr.startswith("error:")
    assert run("rm", "local/bb:1").returncode == 0
    assert "local/bb:1" not in run("list").stdout
    r = run("rm", "local/bb:1")
    assert r.returncode == 1 and "not in the local store" in r.stderr


def test_sdk_reads_endpoint_and_key_from_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """SandboxClient() with HUTCH_ENDPOINT / HUTCH_API_KEY talks to that server."""
    data = tmp_path / "data"
    data.mkdir()
    srv = start_server(data)
    try:
        monkeypatch.setenv("HUTCH_ENDPOINT", srv.url)
        monkeypatch.setenv("HUTCH_API_KEY", srv.key)
        with SandboxClient() as c:
            assert c.list_sandboxes() == []
    finally:
        stop_server(srv)
