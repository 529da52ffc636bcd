"""The I/O-free and in-memory pieces of egress header rules: rules parsed, sealed and matched;
request heads rewritten, and refused where their framing is ambiguous; a connection's requests
framed (lengths, chunks, upgrades) with the headers set on each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hutch.runtime._egress_policy import HEADER_RULES, EgressPolicy, PolicyError
from hutch.runtime._egress_seal import SealError, SecretBox
from hutch.runtime.runc._egress_firewall import ruleset
from hutch.runtime.runc._egress_http import Buffered, HttpError, HttpRewriter, rewrite_head

HOST = "api.example.com"


def policy(*headers: tuple[str, str], paths: list[str] | None = None) -> EgressPolicy:
    rule = {
        "name": "r",
        "match_hosts": [HOST, "*.svc.example"],
        "match_paths": paths or [],
        "headers": [{"name": n, "value": v} for n, v in headers],
    }
    return EgressPolicy.parse({HEADER_RULES: [rule]})


AUTH = policy(("Authorization", "Bearer s3cret"))


def test_a_rule_replaces_the_sandboxs_header_on_its_host_only() -> None:
    """The rule's header replaces the sandbox's own (any case); another Host, an absolute URL
    naming another host, two Hosts, and a TRACE get nothing."""
    head = b"GET /v1 HTTP/1.1\r\nHost: API.example.com:443\r\nauthorization: mine\r\n\r\n"
    new, framing = rewrite_head(head, HOST, AUTH)
    assert (
        new
        == b"GET /v1 HTTP/1.1\r\nHost: API.example.com:443\r\nAuthorization: Bearer s3cret\r\n\r\n"
    )
    assert framing == 0
    for other in (
        b"GET /v1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        b"GET http://evil.example/v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"GET /v1 HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.example\r\n\r\n",
        b"TRACE / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ):
        assert rewrite_head(other, HOST, AUTH)[0] == other


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /\r\n\r\n",
    ],
)
def test_ambiguous_framing_is_refused(head: bytes) -> None:
    """Framing two servers could read differently ends the connection (HttpError)."""
    with pytest.raises(HttpError):
        rewrite_head(head, HOST, AUTH)


def test_paths_globs_and_later_rules() -> None:
    """match_paths limits a rule to its paths (query ignored); globbed hosts match below them."""
    p = policy(("X-Key", "k"), paths=["/v1/*"])
    assert p.headers_for(HOST, "/v1/models?x=1") == [("X-Key", "k")]
    assert p.headers_for(HOST, "/v2") == []
    assert p.headers_for("a.svc.example", "/v1/x") == [("X-Key", "k")]
    assert p.headers_for("svc.example", "/v1/x") == []


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"match_hosts": ["10.0.0.1"], "headers": [{"name": "A", "value": "b"}]}, "match_hosts"),
        ({"match_hosts": ["~.*"], "headers": [{"name": "A", "value": "b"}]}, "match_hosts"),
        ({"match_hosts": ["a.b"], "headers": [{"name": "Host", "value": "b"}]}, "Host"),
        ({"match_hosts": ["a.b"], "headers": [{"name": "A", "value": "b\r\nC: d"}]}, "one line"),
        ({"match_hosts": ["a.b"], "headers": [{"name": "A B", "value": "b"}]}, "header name"),
        ({"match_hosts": ["a.b"], "headers": []}, "headers"),
    ],
)
def test_bad_rules_name_what_is_wrong(rule: dict[str, object], says: str) -> None:
    """A rule that could send a header to an address, or break framing, is refused."""
    with pytest.raises(PolicyError, match=says):
        EgressPolicy.parse({HEADER_RULES: [rule]})


def test_saved_policies_hold_values_sealed(tmp_path: Path) -> None:
    """to_json seals header values; parse opens them with the same key only; the key file is
    0600; rules send every TCP connection through the proxy."""
    box = SecretBox.in_dir(tmp_path)
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    saved = AUTH.to_json(box)
    assert "s3cret" not in str(saved)
    assert EgressPolicy.parse(saved, box=box).headers_for(HOST, "/") == AUTH.headers_for(HOST, "/")
    with pytest.raises(SealError):
        EgressPolicy.parse(saved, box=SecretBox.in_dir(tmp_path / "other"))
    with pytest.raises(PolicyError):
        EgressPolicy.parse(saved)
    assert not AUTH.empty
    rules = ruleset("x", AUTH, proxy_port=15001, resolvers=[], passthrough=[])
    assert (
        "-p tcp -j REDIRECT --to-ports 15001" in rules
        and "0.0.0.0/0 -j RETURN" not in rules.split("*filter")[0]
    )


def _run(data: list[bytes]) -> bytes:
    """What the rewriter sends on for a connection that delivers ``data`` piece by piece."""
    pieces = list(data)
    out: list[bytes] = []

    async def recv(n: int) -> bytes:
        return pieces.pop(0) if pieces else b""

    async def send(b: bytes) -> None:
        out.append(b)

    asyncio.run(HttpRewriter(HOST, AUTH).run(Buffered(recv), send))
    return b"".join(out)


def test_every_keep_alive_request_is_framed_and_rewritten() -> None:
    """A request with a length, a chunked one split mid-chunk and a GET, on one connection:
    each head gets the header, bodies pass byte for byte; an upgrade passes the rest raw."""
    auth = b"Authorization: Bearer s3cret\r\n"
    host = b"Host: api.example.com\r\n"
    sent = _run([
        b"POST /a HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhel",
        b"loPOST /b HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n3\r\nab",
        b"c\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\n" + host + b"\r\n",
        b"GET /ws HTTP/1.1\r\n" + host + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n",
    ])  # fmt: skip
    assert sent == (
        b"POST /a HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n" + auth + b"\r\nhello"
        + b"POST /b HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n" + auth
        + b"\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        + b"GET /c HTTP/1.1\r\n" + host + auth + b"\r\n"
        + b"GET /ws HTTP/1.1\r\n" + host + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        + auth + b"\r\n" + b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n"
    )  # fmt: skip


def test_a_head_over_the_limit_or_a_cut_body_ends_the_connection() -> None:
    """An endless head and a body shorter than its length raise HttpError (no guessing)."""
    with pytest.raises(HttpError):
        _run([b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000])
    with pytest.raises(HttpError):
        _run([b"POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 9\r\n\r\nab"])
    with pytest.raises(HttpError):
        _run([b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
