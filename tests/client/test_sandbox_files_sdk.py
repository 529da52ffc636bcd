"""hutch's own SDK against a real server: service URLs (a GET through busybox httpd in a sandbox,
renewal of an expired token), download links fetched with no API key, ``stat``, ranged reads,
``ls``, ``glob``, ``grep`` with their limits, and the typed errors of bad input; sync and async.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from hutch import (
    AsyncSandboxClient,
    AsyncServiceURL,
    DownloadURL,
    FileChunk,
    FileInfo,
    FileStat,
    GlobResult,
    GrepMatch,
    GrepResult,
    ResourceNotFoundError,
    Sandbox,
    SandboxClient,
    SandboxOperationError,
    ServiceURL,
    ValidationError,
)
from tests.conftest import Server

pytestmark = pytest.mark.root

HTTPD = 8000
D = "/data"
A_TXT = b"0123456789abcdef\n"
B_PY = "import os\nprint('needle one')\n"
C_PY = "# needle two\n# needle three\n"


@pytest.fixture(scope="module")
def box(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """A busybox sandbox with a small tree under /data and httpd on 127.0.0.1:8000."""
    with client.sandbox(bb_template) as sb:
        sb.write(f"{D}/a.txt", A_TXT)
        sb.write(f"{D}/sub/b.py", B_PY)
        sb.write(f"{D}/sub/deep/c.py", C_PY)
        sb.write("/www/index.html", "hello from busybox\n")
        sb.run(f"httpd -p 127.0.0.1:{HTTPD} -h /www")  # daemonises once it listens
        yield sb


def test_service_url_get(server: Server, box: Sandbox) -> None:
    """sb.service() holds the four fields; its get() reaches the service in the sandbox with the
    token header, which a bare request lacks (401)."""
    svc = box.service(HTTPD, expires_in_seconds=120)
    assert isinstance(svc, ServiceURL) and svc.port == HTTPD
    assert svc.service_url == f"{server.service_url}/svc/{box.id}/{HTTPD}/"
    assert svc.browser_url.endswith(f"?token={svc.token}")
    assert datetime.fromisoformat(svc.expires_at).tzinfo == UTC
    assert 100 < svc.expires_in <= 120
    r = svc.get("/index.html")
    assert (r.status_code, r.text) == (200, "hello from busybox\n")
    assert svc.get_token() == svc.token  # 120 s left: nothing to renew
    assert httpx.get(svc.service_url + "index.html").status_code == 401


def test_service_url_renews_an_expired_token(box: Sandbox) -> None:
    """A ServiceURL whose token has expired gets a new one before its request (the server
    refuses the stale one); one that has not expired is used as it is."""
    stale = {
        "service_url": box.service(HTTPD).service_url,
        "browser_url": "",
        "token": "stale-token",
        "expires_at": "2000-01-01T00:00:00Z",
    }
    svc = ServiceURL(stale, sandbox=box, port=HTTPD, expires_in_seconds=300)
    assert svc.expires_in < 0
    assert svc.get("index.html").text == "hello from busybox\n"
    assert svc.token != "stale-token" and 290 < svc.expires_in <= 300
    assert svc.browser_url.endswith(svc.token)

    unexpired = ServiceURL(
        {**stale, "expires_at": "2999-01-01T00:00:00Z"},
        sandbox=box,
        port=HTTPD,
        expires_in_seconds=300,
    )
    assert unexpired.get("index.html").status_code == 401
    unexpired.refresh()
    assert unexpired.get("index.html").status_code == 200


def test_service_url_bad_input(client: SandboxClient, box: Sandbox) -> None:
    """Out-of-range port or lifetime is a ValueError before any request; a deleted sandbox is
    ResourceNotFoundError."""
    for port, seconds in ((0, 600), (65536, 600), (HTTPD, 0), (HTTPD, 86401)):
        with pytest.raises(ValueError):
            box.service(port, expires_in_seconds=seconds)
    gone = client.get_sandbox(box.name)
    gone.name = "no-such-sandbox"
    with pytest.raises(ResourceNotFoundError) as err:
        gone.service(HTTPD)
    assert err.value.resource_type == "sandbox"


def test_download_url_needs_no_key(box: Sandbox) -> None:
    """generate_download_url() mints a link plain httpx fetches with no API key, ranges too,
    with the disposition asked for."""
    link = box.generate_download_url(
        f"{D}/a.txt", expires_in_seconds=60, content_disposition="attachment"
    )
    assert isinstance(link, DownloadURL) and link.token in link.download_url
    assert link.expires_at is not None
    r = httpx.get(link.download_url)
    assert (r.status_code, r.content) == (200, A_TXT)
    assert r.headers["content-disposition"].startswith("attachment")
    part = httpx.get(link.download_url, headers={"Range": "bytes=2-4"})
    assert (part.status_code, part.content) == (206, b"234")
    forever = box.generate_download_url(f"{D}/sub/b.py", content_type="text/x-python")
    assert forever.expires_at is None
    r = httpx.get(forever.download_url)
    assert r.text == B_PY and r.headers["content-type"].startswith("text/x-python")
    with pytest.raises(ValueError):
        box.generate_download_url(f"{D}/a.txt", expires_in_seconds=0)
    with pytest.raises(ValidationError):
        box.generate_download_url("")


def test_stat(box: Sandbox) -> None:
    """stat() reports size, a strong ETag, Last-Modified and the type, without the bytes."""
    st = box.stat(f"{D}/a.txt")
    assert isinstance(st, FileStat)
    assert st.size_bytes == len(A_TXT)
    assert st.etag and st.etag.startswith('"')
    assert st.last_modified and st.last_modified.endswith("GMT")
    assert st.content_type and st.content_type.startswith("text/plain")
    with pytest.raises(ResourceNotFoundError) as err:
        box.stat(f"{D}/missing.txt")
    assert err.value.resource_type == "file" and "missing.txt" in str(err.value)


def test_read_range_and_suffix(box: Sandbox) -> None:
    """read_range() serves start..end (inclusive, clamped), start.., the last N bytes, 304 with
    if_none_match, the whole new file when if_range is stale, and a typed 416."""
    size = len(A_TXT)
    etag = box.stat(f"{D}/a.txt").etag
    chunk = box.read_range(f"{D}/a.txt", start=2, end=5)
    assert isinstance(chunk, FileChunk)
    assert (chunk.content, chunk.start, chunk.end, chunk.total_bytes) == (b"2345", 2, 6, size)
    assert chunk.partial and chunk.etag == etag
    assert box.read_range(f"{D}/a.txt", start=10).content == A_TXT[10:]
    assert box.read_range(f"{D}/a.txt", start=15, end=10_000).content == A_TXT[15:]
    tail = box.read_range(f"{D}/a.txt", suffix_bytes=4)
    assert (tail.content, tail.start) == (A_TXT[-4:], size - 4)
    same = box.read_range(f"{D}/a.txt", start=0, if_none_match=etag)
    assert same.unchanged and same.content == b""
    whole = box.read_range(f"{D}/a.txt", start=3, if_range='"not-the-etag"')
    assert (whole.partial, whole.start, whole.content) == (False, 0, A_TXT)
    with pytest.raises(SandboxOperationError) as err:
        box.read_range(f"{D}/a.txt", start=size)
    assert err.value.status == 416
    with pytest.raises(ResourceNotFoundError):
        box.read_range(f"{D}/missing.txt", start=0)
    for bad in ({}, {"start": -1}, {"start": 5, "end": 4}, {"suffix_bytes": 0}):
        with pytest.raises(ValueError):
            box.read_range(f"{D}/a.txt", **bad)
    with pytest.raises(ValueError):
        box.read_range(f"{D}/a.txt", start=0, suffix_bytes=3)


def test_ls_and_glob(box: Sandbox) -> None:
    """ls() lists one level with is_dir and sizes; glob() recurses with **; limit truncates."""
    listing = box.ls(D)
    assert isinstance(listing, GlobResult) and not listing.truncated
    assert all(isinstance(e, FileInfo) for e in listing)
    assert [(e.path, e.is_dir) for e in listing] == [(f"{D}/a.txt", False), (f"{D}/sub", True)]
    assert listing.matches[0].size_bytes == len(A_TXT) and listing.matches[0].modified_at
    py = box.glob("**/*.py", D)
    assert [e.path for e in py] == [f"{D}/sub/b.py", f"{D}/sub/deep/c.py"]
    capped = box.glob("**", D, limit=2)
    assert len(capped) == 2 and capped.truncated


def test_grep(box: Sandbox) -> None:
    """grep() finds literal lines with their numbers; glob narrows the files; limit truncates."""
    found = box.grep("needle", D)
    assert isinstance(found, GrepResult) and not found.truncated
    assert all(isinstance(m, GrepMatch) for m in found)
    assert [(m.path, m.line, m.text) for m in found] == [
        (f"{D}/sub/b.py", 2, "print('needle one')"),
        (f"{D}/sub/deep/c.py", 1, "# needle two"),
        (f"{D}/sub/deep/c.py", 2, "# needle three"),
    ]
    deep = box.grep("needle", D, glob="sub/deep/*.py")  # with a "/": the path below D
    assert [m.path for m in deep] == [f"{D}/sub/deep/c.py"] * 2
    assert len(box.grep("needle", D, glob="*.py")) == 3  # bare: by name at any depth
    assert len(box.grep("needle", D, glob="*.txt")) == 0
    capped = box.grep("needle", D, limit=1)
    assert len(capped) == 1 and capped.truncated


def test_search_bad_input(box: Sandbox) -> None:
    """A ``..`` pattern, an empty grep pattern, limit 0 are ValidationError; a missing root is
    ResourceNotFoundError; a ``..`` root stays inside the sandbox (its own ``/``)."""
    for call in (
        lambda: box.glob("../*", D),
        lambda: box.glob("*", D, limit=0),
        lambda: box.grep("", D),
        lambda: box.grep("x", D, glob="../*"),
    ):
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.status == 422
    with pytest.raises(ResourceNotFoundError) as missing:
        box.ls(f"{D}/nope")
    assert missing.value.resource_type == "file"
    above = box.ls(f"{D}/../../../..")
    assert f"{D}" in [e.path for e in above] and "/www" in [e.path for e in above]


async def test_async_sdk(server: Server, box: Sandbox) -> None:
    """The async twin: service GET, download link, stat, suffix read, ls, glob, grep with
    truncation, and a missing file as ResourceNotFoundError."""
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as aclient:
        sb = await aclient.get_sandbox(box.name)
        svc = await sb.service(HTTPD)
        assert isinstance(svc, AsyncServiceURL)
        assert (await svc.get("index.html")).text == "hello from busybox\n"
        assert await svc.get_browser_url() == svc.browser_url
        link = await sb.generate_download_url(f"{D}/a.txt")
        async with httpx.AsyncClient() as plain:
            assert (await plain.get(link.download_url)).content == A_TXT
        assert (await sb.stat(f"{D}/a.txt")).size_bytes == len(A_TXT)
        assert (await sb.read_range(f"{D}/a.txt", suffix_bytes=3)).content == A_TXT[-3:]
        assert [e.path for e in await sb.ls(D)] == [f"{D}/a.txt", f"{D}/sub"]
        assert len(await sb.glob("**/*.py", D)) == 2
        capped = await sb.grep("needle", D, limit=2)
        assert len(capped) == 2 and capped.truncated
        with pytest.raises(ResourceNotFoundError):
            await sb.stat(f"{D}/missing.txt")
        with pytest.raises(ValidationError):
            await sb.glob("../*", D)
