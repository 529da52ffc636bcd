"""Request bodies against a real server: authenticated before a byte is read, bounded in size,
and uploads never spooled on the host."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    TIME_SCALE,
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.root

MiB = 1024 * 1024
PROMPT = 2 * TIME_SCALE
BOXES = "/api/v2/sandboxes/boxes"


@pytest.fixture(scope="module")
def tmpdir_server(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path
) -> Iterator[tuple[Server, Path]]:
    """A server whose TMPDIR is an empty directory of its own, and its TMPDIR."""
    root = tmp_path_factory.mktemp("limits")
    tmp = root / "tmp"
    tmp.mkdir()
    data = data_dir_with_busybox(root, busybox_tar)
    srv = start_server(data, env={"TMPDIR": str(tmp)})
    try:
        yield srv, tmp
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


@pytest.fixture(scope="module")
def limited(tmpdir_server: tuple[Server, Path]) -> Server:
    return tmpdir_server[0]


def _rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(
        int(v) for k, _, v in (x.partition(": ") for x in lines) if k.lower() == "content-length"
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response"
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def _envelope(resp: httpx.Response, status: int, error: str) -> str:
    assert resp.status_code == status, resp.text[:300]
    detail = resp.json()["detail"]
    assert detail["error"] == error, detail
    return str(detail["message"])


def test_huge_unauthenticated_body_is_refused_before_it_is_read(limited: Server) -> None:
    """A 300 MB body without an API key gets 401 at once; the server's memory does not grow
    by it (< 10 MB) and another client is answered promptly meanwhile."""
    size = 300 * 1000 * 1000
    head = (
        f"POST {BOXES} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    pid = limited.proc.pid
    before = _rss(pid)
    peak = before
    sent = 0
    with socket.create_connection(_address(limited), timeout=30 * TIME_SCALE) as sock:
        sock.sendall(head)
        status, body = _read_response(sock)  # answered on the headers alone
        assert status == 401 and b'"Unauthorized"' in body

        def flood() -> None:
            nonlocal sent
            piece = b" " * MiB
            try:
                while sent < size:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass

        sender = threading.Thread(target=flood)
        sender.start()
        try:
            with limited.http() as http:
                while sender.is_alive():
                    start = time.monotonic()
                    assert http.get(f"{BOXES}").status_code == 200
                    assert time.monotonic() - start < PROMPT
                    peak = max(peak, _rss(pid))
        finally:
            sender.join()
    peak = max(peak, _rss(pid))
    assert sent >= 100 * MiB  # the body really was on its way
    assert peak - before < 10 * MiB, (before, peak)


def test_authenticated_json_over_the_limit_is_413(limited: Server) -> None:
    """A 2 MiB JSON body with a valid key is a 413 envelope naming the limit and the flag."""
    big = b'{"name": "' + b"x" * (2 * MiB) + b'"}'
    with limited.http() as http:
        resp = http.post(BOXES, content=big, headers={"content-type": "application/json"})
    message = _envelope(resp, 413, "PayloadTooLarge")
    assert str(MiB) in message and "--max-body-bytes" in message


def test_chunked_body_over_the_limit_is_413(limited: Server) -> None:
    """A body sent chunked (no Content-Length) is counted as it arrives: past the limit, 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(2 * 16):
            yield b"x" * (64 * 1024)
        yield b'"}'

    with limited.http() as http:
        resp = http.post(BOXES, content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in resp.request.headers
        _envelope(resp, 413, "PayloadTooLarge")
        # The connection, and the server, go on serving.
        assert http.get(BOXES).status_code == 200


def test_other_credentials_are_checked_before_the_body(limited: Server) -> None:
    """A wrong key, a stale UI cookie and a cookie without Origin are refused before the body;
    signing in and a cookie request from the UI's origin still work."""
    body = b"{" + b" " * (4 * MiB) + b"}"  # over the limit: only auth can answer first
    json = {"content-type": "application/json"}
    with httpx.Client(base_url=limited.url, timeout=30) as http:
        resp = http.post(BOXES, content=body, headers={**json, "X-Api-Key": "wrong"})
        _envelope(resp, 401, "Unauthorized")
        resp = http.post(BOXES, content=body, headers={**json, "Cookie": "hutch_session=stale"})
        _envelope(resp, 401, "Unauthorized")
        origin = {"Origin": limited.url}
        signed_in = http.post("/ui/api/session", json={"api_key": limited.key}, headers=origin)
        assert signed_in.status_code == 204, signed_in.text
        resp = http.post(BOXES, content=body, headers=json)  # the cookie, but no Origin
        _envelope(resp, 403, "Forbidden")
        resp = http.post(f"{BOXES}/nobody/stop", json={}, headers=origin)
        _envelope(resp, 404, "NotFound")  # authenticated by the cookie, on to the route


def _fds_under(pid: int, directory: Path) -> list[str]:
    """Files the process has open under ``directory`` (unnamed temporary files included)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_uploads_are_not_spooled_on_the_host(tmpdir_server: tuple[Server, Path]) -> None:
    """A 64 MiB upload goes into the sandbox as it arrives: the server opens nothing in its
    TMPDIR while receiving it, and the file arrives whole."""
    server, tmp = tmpdir_server
    size = 64 * MiB
    seen: list[list[str]] = []
    with server.client() as c:
        c.create_template("limits-bb", "local/busybox")
        with c.sandbox("limits-bb") as sb:
            boundary = "b0undary"
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            tail = f"\r\n--{boundary}--\r\n".encode()

            def body() -> Iterator[bytes]:
                yield head
                for i in range(size // MiB):
                    if i in (16, 48):  # the server holds part of the body by now
                        seen.append(_fds_under(server.proc.pid, tmp))
                    yield bytes([i]) * MiB
                yield tail

            with server.http() as http:
                resp = http.post(
                    f"/dp/{sb.id}/upload",
                    params={"path": "/tmp/big"},
                    content=body(),
                    headers={
                        "content-type": f"multipart/form-data; boundary={boundary}",
                        "content-length": str(len(head) + size + len(tail)),
                    },
                )
            assert resp.status_code == 200, resp.text
            assert resp.json()["size"] == size
            assert sb.run("wc -c < /tmp/big").stdout.strip() == str(size)
            assert sb.run("tail -c 1 /tmp/big | od -An -tu1").stdout.split() == ["63"]
    assert seen == [[], []]
    assert list(tmp.iterdir()) == []
