"""File helpers of the 0.13+ SDKs against a real server: HEAD and ranged GET of ``/download``,
``/glob`` and ``/grep`` (bounded, confined to the sandbox), signed download links, and the real
langsmith 0.15.1 SDK driving all of them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch import Sandbox, SandboxClient
from tests.compat._venvs import langsmith_python
from tests.conftest import TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root

BOXES = "/v2/sandboxes/boxes"
MiB = 1024 * 1024


def _rand() -> str:
    return secrets.token_hex(6)


@pytest.fixture(scope="module")
def box(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """One sandbox for the module; each test works in its own directory."""
    with client.sandbox(bb_template) as sb:
        yield sb


@pytest.fixture(scope="module")
def other(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """A second sandbox, for tokens and paths that must not cross between sandboxes."""
    with client.sandbox(bb_template) as sb:
        yield sb


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with server.http() as c:
        yield c


@pytest.fixture
def anon(server: Server) -> Iterator[httpx.Client]:
    """A client with no API key at all (what a download link's holder has)."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _dp(sb: Sandbox) -> str:
    return f"/dp/{sb.id}"


def _envelope(resp: httpx.Response, status: int, error: str) -> str:
    """Assert the spec's error envelope; returns its message."""
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert detail["error"] == error, detail
    assert isinstance(detail["message"], str) and detail["message"]
    return str(detail["message"])


def _bigfile(sb: Sandbox, path: str, size: int) -> bytes:
    """A file of ``size`` random bytes in the sandbox; returns its content."""
    data = os.urandom(size)
    sb.write(path, data)
    return data


# -- HEAD and ranges ---------------------------------------------------------------------------


def test_head_reports_size_validators_and_type(http: httpx.Client, box: Sandbox) -> None:
    """HEAD: 200, no body, Content-Length, a strong ETag, an HTTP-date, a guessed type."""
    d = f"/tmp/head-{_rand()}"
    box.write(f"{d}/notes.txt", "hello head\n")
    r = http.head(f"{_dp(box)}/download", params={"path": f"{d}/notes.txt"})
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "11"
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 8
    modified = parsedate_to_datetime(r.headers["last-modified"])
    assert abs((datetime.now(UTC) - modified).total_seconds()) < 120
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["accept-ranges"] == "bytes"
    box.write(f"{d}/blob", b"\x00\x01")
    r = http.head(f"{_dp(box)}/download", params={"path": f"{d}/blob"})
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] != etag
    missing = http.head(f"{_dp(box)}/download", params={"path": f"{d}/nope"})
    assert missing.status_code == 404
    assert http.head(f"{_dp(box)}/download", params={"path": d}).status_code == 400


def test_plain_get_is_unchanged_but_carries_validators(http: httpx.Client, box: Sandbox) -> None:
    """A plain GET streams the whole file (no Content-Length) with ETag, Last-Modified,
    Accept-Ranges and headers that stop a browser from running it as a page."""
    path = f"/tmp/get-{_rand()}.html"
    data = _bigfile(box, path, 3 * MiB + 17)
    head = http.head(f"{_dp(box)}/download", params={"path": path})
    r = http.get(f"{_dp(box)}/download", params={"path": path})
    assert r.status_code == 200 and r.content == data
    assert "content-length" not in r.headers
    assert r.headers["etag"] == head.headers["etag"]
    assert r.headers["last-modified"] == head.headers["last-modified"]
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == "sandbox"
    assert r.headers["x-content-type-options"] == "nosniff"
    msg = _envelope(http.get(f"{_dp(box)}/download", params={"path": "/tmp"}), 400, "ReadError")
    assert "directory" in msg


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1048570-2097160", 1048570, 2097160),
        ("bytes=-1000", 3 * MiB - 1000, 3 * MiB - 1),
        ("bytes=3000000-", 3000000, 3 * MiB - 1),
        ("bytes=3145000-9999999", 3145000, 3 * MiB - 1),
    ],
)
def test_ranges(http: httpx.Client, box: Sandbox, header: str, first: int, last: int) -> None:
    """First, middle (across read chunks), suffix, open-ended and clamped ranges: 206 with the
    exact bytes, Content-Range and Content-Length."""
    path = f"/tmp/range-{_rand()}"
    data = _bigfile(box, path, 3 * MiB)
    r = http.get(f"{_dp(box)}/download", params={"path": path}, headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.headers["content-range"] == f"bytes {first}-{last}/{3 * MiB}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.content == data[first : last + 1]


def test_range_past_the_end_is_416(http: httpx.Client, box: Sandbox) -> None:
    """A range starting at or past EOF: 416 in the error envelope, Content-Range bytes */size."""
    path = f"/tmp/r416-{_rand()}"
    box.write(path, b"x" * 10)
    for header in ("bytes=10-", "bytes=50-60", "bytes=-0"):
        r = http.get(f"{_dp(box)}/download", params={"path": path}, headers={"Range": header})
        msg = _envelope(r, 416, "ReadError")
        assert r.headers["content-range"] == "bytes */10"
        assert "past the end" in msg


def test_multi_range_answers_the_whole_file(http: httpx.Client, box: Sandbox) -> None:
    """Several ranges in one request: 200 with the whole file (documented)."""
    path = f"/tmp/multi-{_rand()}"
    box.write(path, b"0123456789")
    r = http.get(f"{_dp(box)}/download", params={"path": path}, headers={"Range": "bytes=0-1,4-5"})
    assert (r.status_code, r.content) == (200, b"0123456789")


def test_if_range_and_if_none_match(http: httpx.Client, box: Sandbox) -> None:
    """If-Range with the current ETag keeps the range, a stale one gets the whole new file;
    If-None-Match with the current ETag is 304 with no body, after a rewrite 200."""
    path = f"/tmp/cond-{_rand()}"
    box.write(path, b"version one")
    url, params = f"{_dp(box)}/download", {"path": path}
    etag = http.head(url, params=params).headers["etag"]
    r = http.get(url, params=params, headers={"Range": "bytes=0-6", "If-Range": etag})
    assert (r.status_code, r.content) == (206, b"version")
    same = http.get(url, params=params, headers={"If-None-Match": etag})
    assert (same.status_code, same.content) == (304, b"")
    assert same.headers["etag"] == etag
    assert http.head(url, params=params, headers={"If-None-Match": etag}).status_code == 304
    box.write(path, b"version two!")
    r = http.get(url, params=params, headers={"Range": "bytes=0-6", "If-Range": etag})
    assert (r.status_code, r.content) == (200, b"version two!")
    assert r.headers["etag"] != etag
    changed = http.get(url, params=params, headers={"If-None-Match": etag})
    assert (changed.status_code, changed.content) == (200, b"version two!")


# -- glob and grep -----------------------------------------------------------------------------


def _tree(sb: Sandbox) -> str:
    """A small project under a fresh directory; returns the directory."""
    d = f"/home/user/proj-{_rand()}"
    sb.write(f"{d}/main.py", "import os\nprint('needle here')\n")
    sb.write(f"{d}/pkg/util.py", "def f():\n    return 'needle'\n")
    sb.write(f"{d}/pkg/deep/x.txt", "no match\nneedle\n")
    sb.write(f"{d}/README.md", "# needle (not a regex: .*)\n")
    sb.write(f"{d}/.env", "SECRET=needle\n")
    sb.write(f"{d}/data.bin", b"needle\x00\x01\x02needle")
    return d


def _glob(http: httpx.Client, sb: Sandbox, **body: Any) -> dict[str, Any]:
    r = http.post(f"{_dp(sb)}/glob", json=body)
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    assert set(got) == {"matches", "truncated"}
    return got


def _grep(http: httpx.Client, sb: Sandbox, **body: Any) -> dict[str, Any]:
    r = http.post(f"{_dp(sb)}/grep", json=body)
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    assert set(got) == {"matches", "truncated"}
    return got


def test_glob_lists_and_matches(http: httpx.Client, box: Sandbox) -> None:
    """``*`` lists one level (what ``ls`` sends); ``**`` recurses; paths come back absolute
    with is_dir, size_bytes and an RFC 3339 modified_at."""
    d = _tree(box)
    ls = _glob(http, box, pattern="*", path=d)
    assert [m["path"] for m in ls["matches"]] == [
        f"{d}/{n}" for n in (".env", "README.md", "data.bin", "main.py", "pkg")
    ]
    assert ls["truncated"] is False
    entry = {m["path"]: m for m in ls["matches"]}
    assert entry[f"{d}/pkg"]["is_dir"] is True
    assert entry[f"{d}/main.py"] == {
        "path": f"{d}/main.py",
        "is_dir": False,
        "size_bytes": 31,
        "modified_at": entry[f"{d}/main.py"]["modified_at"],
    }
    assert datetime.fromisoformat(entry[f"{d}/main.py"]["modified_at"]).tzinfo is not None
    py = _glob(http, box, pattern="**/*.py", path=d)
    assert [m["path"] for m in py["matches"]] == [f"{d}/main.py", f"{d}/pkg/util.py"]
    one = _glob(http, box, pattern="pkg/*/x.txt", path=d)
    assert [m["path"] for m in one["matches"]] == [f"{d}/pkg/deep/x.txt"]
    relative = _glob(http, box, pattern="*.md", path=d.removeprefix("/home/user/"))
    assert [m["path"] for m in relative["matches"]] == [f"{d}/README.md"]


def test_glob_limit_truncates(http: httpx.Client, box: Sandbox) -> None:
    """``limit`` caps the matches and sets ``truncated``; an exact fit is not truncated."""
    d = _tree(box)
    capped = _glob(http, box, pattern="**", path=d, limit=3)
    assert len(capped["matches"]) == 3 and capped["truncated"] is True
    exact = _glob(http, box, pattern="*", path=d, limit=5)
    assert len(exact["matches"]) == 5 and exact["truncated"] is False


def test_glob_and_grep_errors(http: httpx.Client, box: Sandbox) -> None:
    """Bad patterns and bodies are 422; a missing root 404; a file as the root 400."""
    d = _tree(box)
    dp = _dp(box)
    for pattern in ("", "/etc/*", "../*", "a/../../b"):
        _envelope(
            http.post(f"{dp}/glob", json={"pattern": pattern, "path": d}), 422, "ValidationError"
        )
    _envelope(http.post(f"{dp}/glob", json={"pattern": "*"}), 422, "ValidationError")
    _envelope(
        http.post(f"{dp}/glob", json={"pattern": "*", "path": d, "limit": 0}),
        422,
        "ValidationError",
    )
    for bad in ("", "two\nlines"):
        _envelope(http.post(f"{dp}/grep", json={"pattern": bad, "path": d}), 422, "ValidationError")
    _envelope(
        http.post(f"{dp}/grep", json={"pattern": "x", "path": d, "glob": "../*"}),
        422,
        "ValidationError",
    )
    _envelope(
        http.post(f"{dp}/glob", json={"pattern": "*", "path": f"{d}/nope"}), 404, "FileNotFound"
    )
    msg = _envelope(
        http.post(f"{dp}/grep", json={"pattern": "x", "path": f"{d}/main.py"}), 400, "ReadError"
    )
    assert "not a directory" in msg


def test_grep_finds_literal_lines(http: httpx.Client, box: Sandbox) -> None:
    """Literal matches with 1-based line numbers, dotfiles included, binary files skipped;
    ``glob`` filters by base name or by relative path; ``limit`` truncates."""
    d = _tree(box)
    got = _grep(http, box, pattern="needle", path=d)
    assert [(m["path"], m["line"], m["text"]) for m in got["matches"]] == [
        (f"{d}/.env", 1, "SECRET=needle"),
        (f"{d}/README.md", 1, "# needle (not a regex: .*)"),
        (f"{d}/main.py", 2, "print('needle here')"),
        (f"{d}/pkg/util.py", 2, "    return 'needle'"),
        (f"{d}/pkg/deep/x.txt", 2, "needle"),
    ]
    assert got["truncated"] is False
    literal = _grep(http, box, pattern=".*", path=d)
    assert [m["path"] for m in literal["matches"]] == [f"{d}/README.md"]
    by_name = _grep(http, box, pattern="needle", path=d, glob="*.py")
    assert [m["path"] for m in by_name["matches"]] == [f"{d}/main.py", f"{d}/pkg/util.py"]
    by_path = _grep(http, box, pattern="needle", path=d, glob="pkg/**/*.txt")
    assert [m["path"] for m in by_path["matches"]] == [f"{d}/pkg/deep/x.txt"]
    capped = _grep(http, box, pattern="needle", path=d, limit=2)
    assert len(capped["matches"]) == 2 and capped["truncated"] is True


@pytest.fixture
def host_canary(tmp_path: Path) -> Iterator[Path]:
    """A host directory holding a file with a unique string no search may ever return."""
    d = tmp_path / f"canary-{_rand()}"
    d.mkdir()
    (d / "secret.txt").write_text(f"host-canary-{d.name}\n")
    yield d


def test_searches_never_leave_the_sandbox(
    http: httpx.Client, box: Sandbox, host_canary: Path
) -> None:
    """Symlinks to /, /proc/1/root, the host's canary directory and ``..`` chains, as search
    roots or inside the tree, never lead glob or grep to a host file; /proc is not read."""
    canary = (host_canary / "secret.txt").read_text().strip()
    d = f"/home/user/hostile-{_rand()}"
    box.run(
        f"mkdir -p {d} && cd {d} && ln -s / slash && ln -s /proc/1/root p1 && "
        f"ln -s /proc/self/root pself && ln -s {host_canary} hostdir && "
        f"ln -s ../../../../../../../..{host_canary} up && ln -s {host_canary}/secret.txt f"
    )
    for root in (d, f"{d}/slash", f"{d}/slash/proc", f"{d}/hostdir", f"{d}/up"):
        r = http.post(f"{_dp(box)}/grep", json={"pattern": canary, "path": root})
        assert r.status_code in (200, 404), r.text
        if r.status_code == 200:
            assert r.json()["matches"] == [], root
    for root in (f"{d}/p1", f"{d}/pself"):
        r = http.post(f"{_dp(box)}/glob", json={"pattern": "**", "path": root})
        assert r.status_code in (400, 404), r.text  # magic links are refused outright
    found = _glob(http, box, pattern="**", path=d, limit=10_000)
    assert sorted(m["path"] for m in found["matches"]) == sorted(
        f"{d}/{n}" for n in ("f", "hostdir", "p1", "pself", "slash", "up")
    )
    everything = _glob(http, box, pattern="**", path="/", limit=10_000)
    paths = [m["path"] for m in everything["matches"]]
    assert "/proc" in paths and not [p for p in paths if p.startswith(("/proc/", "/sys/"))]
    assert not [p for p in paths if host_canary.name in p and not p.startswith(d)]
    proc = _grep(http, box, pattern="PATH=", path="/proc/1")
    assert proc["matches"] == []  # /proc/1/environ holds PATH=, but /proc is never read


def test_searches_count_as_activity(
    http: httpx.Client, anon: httpx.Client, bb_template: str
) -> None:
    """HEAD, GET, glob, grep and a download-link fetch each push back the idle deadline."""
    r = http.post(BOXES, json={"template_name": bb_template, "idle_ttl_seconds": 3600})
    assert r.status_code == 201, r.text
    name, sandbox_id = r.json()["name"], r.json()["id"]
    dp = f"/dp/{sandbox_id}"
    try:
        up = http.post(f"{dp}/upload", params={"path": "/tmp/a"}, files={"file": ("f", b"x")})
        assert up.status_code == 200
        link = http.post(f"{BOXES}/{name}/download-url", json={"path": "/tmp/a"}).json()

        def deadline() -> str:
            return str(http.get(f"{BOXES}/{name}").json()["expires_at"])

        actions = {
            "head": lambda: http.head(f"{dp}/download", params={"path": "/tmp/a"}),
            "get": lambda: http.get(f"{dp}/download", params={"path": "/tmp/a"}),
            "glob": lambda: http.post(f"{dp}/glob", json={"pattern": "*", "path": "/tmp"}),
            "grep": lambda: http.post(f"{dp}/grep", json={"pattern": "x", "path": "/tmp"}),
            "link": lambda: anon.get(link["download_url"]),
        }
        for what, act in actions.items():
            before = deadline()

            def moved(act: Any = act, before: str = before) -> bool:
                assert act().status_code == 200
                return deadline() > before

            assert wait_until(moved, 5), f"{what} did not count as activity"
    finally:
        http.delete(f"{BOXES}/{name}")


# -- download links ----------------------------------------------------------------------------


def _link(http: httpx.Client, sb: Sandbox, **body: Any) -> dict[str, Any]:
    r = http.post(f"{BOXES}/{sb.name}/download-url", json=body)
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    assert set(got) == {"download_url", "token", "expires_at"}
    return got


def test_download_link_works_without_a_key(
    http: httpx.Client, anon: httpx.Client, box: Sandbox
) -> None:
    """The link alone fetches the file (GET, HEAD, Range) with the type and disposition asked
    for; without them the type is guessed and no disposition is sent; no expiry is null."""
    d = f"/tmp/link-{_rand()}"
    data = _bigfile(box, f"{d}/report.csv", 2 * MiB + 3)
    plain = _link(http, box, path=f"{d}/report.csv")
    assert plain["expires_at"] is None
    assert plain["token"] in plain["download_url"]
    assert plain["download_url"].startswith(f"{box.dataplane_url}/download-link?")
    r = anon.get(plain["download_url"])
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"].startswith("text/csv")
    assert "content-disposition" not in r.headers
    assert r.headers["content-security-policy"] == "sandbox"

    asked = _link(
        http,
        box,
        path=f"{d}/report.csv",
        expires_in_seconds=600,
        content_type="application/vnd.ms-excel",
        content_disposition="attachment",
    )
    expires = datetime.fromisoformat(asked["expires_at"].replace("Z", "+00:00"))
    assert asked["expires_at"].endswith("Z")
    assert 590 < (expires - datetime.now(UTC)).total_seconds() <= 601
    head = anon.head(asked["download_url"])
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.headers["content-type"] == "application/vnd.ms-excel"
    assert head.headers["content-disposition"] == (
        "attachment; filename=\"report.csv\"; filename*=UTF-8''report.csv"
    )
    part = anon.get(asked["download_url"], headers={"Range": "bytes=-10"})
    assert (part.status_code, part.content) == (206, data[-10:])
    inline = _link(http, box, path=f"{d}/report.csv", content_disposition="inline")
    assert anon.head(inline["download_url"]).headers["content-disposition"].startswith("inline;")


def test_download_link_refusals(
    http: httpx.Client, anon: httpx.Client, box: Sandbox, other: Sandbox
) -> None:
    """Forged, expired, foreign (another path, another sandbox) and malformed links are
    refused with 401/403 saying to mint a new link; bad mint requests are 404/422."""
    d = f"/tmp/refuse-{_rand()}"
    box.write(f"{d}/a.txt", "a")
    box.write(f"{d}/b.txt", "b")
    other.write(f"{d}/a.txt", "other a")
    link = _link(http, box, path=f"{d}/a.txt")
    url = link["download_url"]
    token = link["token"]
    payload, _, mac = token.partition(".")

    forged = url.replace(token, f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}")
    assert "mint a new link" in _envelope(anon.get(forged), 401, "Unauthorized")
    assert anon.head(forged).status_code == 401
    _envelope(anon.get(url.replace(token, "garbage")), 401, "Unauthorized")
    _envelope(anon.get(url.split("&token=")[0].split("?token=")[0]), 422, "ValidationError")

    other_path = url.replace("a.txt", "b.txt")
    assert "mint a new link" in _envelope(anon.get(other_path), 403, "Forbidden")
    other_box = url.replace(f"/dp/{box.id}/", f"/dp/{other.id}/")
    _envelope(anon.get(other_box), 403, "Forbidden")

    expiring = _link(http, box, path=f"{d}/a.txt", expires_in_seconds=1)
    first = anon.get(expiring["download_url"])
    assert first.status_code in (200, 401)  # a slow machine may already be past the second
    assert wait_until(lambda: anon.get(expiring["download_url"]).status_code == 401, 5)
    msg = _envelope(anon.get(expiring["download_url"]), 401, "Unauthorized")
    assert "expired" in msg and "mint a new link" in msg

    _envelope(
        http.post(f"{BOXES}/nobody-{_rand()}/download-url", json={"path": "/x"}), 404, "NotFound"
    )
    for body in (
        {"path": "/x", "expires_in_seconds": 0},
        {"path": "/x", "content_disposition": "evil"},
        {"path": "/x", "content_type": "text/plain\r\nSet-Cookie: a=b"},
        {"path": "bad\x00path"},
        {},
    ):
        _envelope(http.post(f"{BOXES}/{box.name}/download-url", json=body), 422, "ValidationError")
    assert anon.post(f"{BOXES}/{box.name}/download-url", json={"path": "/x"}).status_code == 401


def test_download_link_of_a_stopped_sandbox(
    http: httpx.Client, anon: httpx.Client, client: SandboxClient, bb_template: str
) -> None:
    """A link to a stopped sandbox answers 400 NotReady saying to start it; after a start it
    works again; after a delete it is 404."""
    with client.sandbox(bb_template) as sb:
        sb.write("/home/user/keep.txt", "kept")
        link = _link(http, sb, path="keep.txt")
        assert "path=%2Fhome%2Fuser%2Fkeep.txt" in link["download_url"]
        assert anon.get(link["download_url"]).content == b"kept"
        sb.stop()
        msg = _envelope(anon.get(link["download_url"]), 400, "NotReady")
        assert "start" in msg
        sb.start()
        assert anon.get(link["download_url"]).content == b"kept"
    _envelope(anon.get(link["download_url"]), 404, "NotFound")


# -- the real SDK ------------------------------------------------------------------------------

SDK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, urllib.request, urllib.error
    from langsmith.sandbox import SandboxClient, ResourceNotFoundError, SandboxOperationError

    name, d = sys.argv[1], sys.argv[2]
    sb = SandboxClient().get_sandbox(name)
    out = {}
    st = sb.stat(f"{d}/data.txt")
    out["stat"] = [st.size_bytes, st.etag, st.last_modified, st.content_type]
    c = sb.read_range(f"{d}/data.txt", start=2, end=5, if_range=st.etag)
    out["range"] = [c.content.decode(), c.start, c.end, c.total_bytes, c.partial, c.etag == st.etag]
    c = sb.read_range(f"{d}/data.txt", suffix_bytes=3)
    out["suffix"] = [c.content.decode(), c.start, c.partial]
    c = sb.read_range(f"{d}/data.txt", start=7)
    out["open"] = [c.content.decode(), c.start]
    c = sb.read_range(f"{d}/data.txt", start=0, if_none_match=st.etag)
    out["unchanged"] = [c.unchanged, c.content.decode()]
    c = sb.read_range(f"{d}/data.txt", start=0, end=1, if_range='"stale"')
    out["stale"] = [c.partial, c.content.decode(), c.start]
    try:
        sb.read_range(f"{d}/data.txt", start=1000)
    except SandboxOperationError as e:
        out["past_end"] = str(e)
    try:
        sb.stat(f"{d}/missing")
    except ResourceNotFoundError as e:
        out["missing"] = e.resource_type
    out["ls"] = [[f.path, f.is_dir] for f in sb.ls(d)]
    g = sb.glob("**/*.py", d, limit=1)
    out["glob"] = [[f.path for f in g], g.truncated]
    r = sb.grep("needle", d, glob="*.py")
    out["grep"] = [[m.path, m.line, m.text] for m in r] + [r.truncated]
    link = sb.generate_download_url(f"{d}/data.txt", expires_in_seconds=120,
                                    content_disposition="attachment")
    with urllib.request.urlopen(link.download_url) as resp:
        out["link"] = [resp.read().decode(), resp.headers["Content-Disposition"],
                       link.expires_at is not None]
    print(json.dumps(out))
    """
)


def test_langsmith_015_sdk_file_helpers(server: Server, box: Sandbox) -> None:
    """The real langsmith 0.15.1 SDK: stat, read_range (range, suffix, open-ended, unchanged,
    stale If-Range, 416), ls, glob, grep and generate_download_url all work against hutch."""
    python = langsmith_python("0.15.1", websockets=True)
    d = f"/home/user/sdk-{_rand()}"
    box.write(f"{d}/data.txt", "0123456789")
    box.write(f"{d}/a.py", "x = 1\n# needle\n")
    box.write(f"{d}/sub/b.py", "needle()\n")
    env = {
        **os.environ,
        "LANGSMITH_ENDPOINT": f"{server.url}/api",
        "LANGSMITH_API_KEY": server.key,
    }
    proc = subprocess.run(
        [str(python), "-c", SDK_SCRIPT, box.name, d],
        env=env,
        capture_output=True,
        text=True,
        timeout=120 * TIME_SCALE,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    size, etag, modified, ctype = got["stat"]
    assert size == 10 and etag.startswith('"') and modified.endswith("GMT")
    assert ctype.startswith("text/plain")
    assert got["range"] == ["2345", 2, 6, 10, True, True]
    assert got["suffix"] == ["789", 7, True]
    assert got["open"] == ["789", 7]
    assert got["unchanged"] == [True, ""]
    assert got["stale"] == [False, "0123456789", 0]
    assert "past the end" in got["past_end"] and "bytes */10" in got["past_end"]
    assert got["missing"] == "file"
    assert got["ls"] == [[f"{d}/a.py", False], [f"{d}/data.txt", False], [f"{d}/sub", True]]
    assert got["glob"] == [[f"{d}/a.py"], True]
    assert got["grep"] == [[f"{d}/a.py", 2, "# needle"], [f"{d}/sub/b.py", 1, "needle()"], False]
    assert got["link"] == [
        "0123456789",
        "attachment; filename=\"data.txt\"; filename*=UTF-8''data.txt",
        True,
    ]
