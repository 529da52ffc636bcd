"""The I/O-free pieces of egress access control: entries parsed and matched, names read from a
connection's first bytes, the firewall rules written for a policy."""

from __future__ import annotations

import ipaddress
import ssl

import pytest

from hutch.runtime._egress_policy import EgressPolicy, PolicyError, Verdict
from hutch.runtime.runc._egress_firewall import ruleset
from hutch.runtime.runc._egress_proxy import NEED_MORE, sniff_name


def _client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def test_sni_is_read_from_a_real_client_hello_and_waits_for_all_of_it() -> None:
    """The SNI of Python's own ClientHello is found; a partial record asks for more bytes."""
    hello = _client_hello("API.example.com")
    assert sniff_name(hello) == "API.example.com"
    assert sniff_name(hello[:40]) is NEED_MORE
    assert sniff_name(b"") is NEED_MORE


def test_host_header_is_read_from_http_requests() -> None:
    """Host (without its port) of an HTTP/1 request head; no Host, or not HTTP: no name."""
    assert sniff_name(b"GET / HTTP/1.1\r\nhost: a.example:8080\r\n\r\n") == "a.example"
    assert sniff_name(b"POST /x HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n") == "2001:db8::1"
    assert sniff_name(b"GET / HTTP/1.1\r\nHost: a.example") is NEED_MORE
    assert sniff_name(b"GE") is NEED_MORE
    assert sniff_name(b"GET / HTTP/1.0\r\n\r\n") is None
    assert sniff_name(b"SSH-2.0-OpenSSH\r\n") is None


def test_entries_match_as_documented() -> None:
    """Exact names, *.globs (not the apex), ~regexes in full, IPs and CIDRs; deny wins."""
    policy = EgressPolicy.parse(
        {
            "allow_list": ["pypi.org", "*.example.com", "~^a+\\.io$", "10.0.0.0/8", "192.0.2.7"],
            "deny_list": ["bad.example.com"],
        }
    )
    assert policy.name_allowed("PyPI.org.") and policy.name_allowed("x.y.example.com")
    assert not policy.name_allowed("example.com") and not policy.name_allowed("bad.example.com")
    assert policy.name_allowed("aaa.io") and not policy.name_allowed("xaaa.io")
    assert policy.ip_allowed(ipaddress.ip_address("10.2.3.4"))
    assert policy.ip_allowed(ipaddress.ip_address("192.0.2.7"))
    assert not policy.ip_allowed(ipaddress.ip_address("192.0.2.8"))
    # A denied name could be behind any address: only the name can decide.
    assert policy.ip_verdict(ipaddress.ip_address("10.2.3.4")) == Verdict.UNKNOWN
    only_ips = EgressPolicy.parse({"allow_list": ["10.0.0.0/8"]})
    assert only_ips.ip_verdict(ipaddress.ip_address("10.2.3.4")) == Verdict.ALLOW
    assert only_ips.ip_verdict(ipaddress.ip_address("8.8.8.8")) == Verdict.DENY
    assert (
        EgressPolicy.parse({"allow_list": []}).ip_verdict(ipaddress.ip_address("8.8.8.8"))
        == Verdict.DENY
    )
    assert EgressPolicy.parse({}).empty and EgressPolicy.parse({"deny_list": []}).empty


@pytest.mark.parametrize(
    "entry", ["exa mple.com", "~(", "10.0.0.0/33", "*.", "1.2.3.999", "", "a" * 300, 5, "-a.com"]
)
def test_bad_entries_are_named(entry: object) -> None:
    """Each malformed entry is refused with a message naming it."""
    with pytest.raises(PolicyError) as err:
        EgressPolicy.parse({"deny_list": [entry]})
    assert "deny_list" in str(err.value) and str(entry)[:20] in str(err.value)


def test_the_ruleset_redirects_tcp_and_rejects_the_rest_at_once() -> None:
    """Denied networks and unmatched traffic are rejected (reset / admin-prohibited), the
    resolver's port 53 passes, TCP goes to the proxy; allowed networks bypass it only when no
    denied name could apply."""
    policy = EgressPolicy.parse(
        {"allow_list": ["a.example", "10.0.0.0/8"], "deny_list": ["1.2.3.4"]}
    )
    rules = ruleset("abc", policy, proxy_port=15001, resolvers=["9.9.9.9"], passthrough=[])
    assert "-A HEN-abc -d 10.0.0.0/8 -j RETURN" in rules
    assert "-A HEN-abc -p tcp -j REDIRECT --to-ports 15001" in rules
    assert "-A HEF-abc -d 1.2.3.4/32 -p tcp -j REJECT --reject-with tcp-reset" in rules
    assert "-A HEF-abc -d 9.9.9.9 -p udp --dport 53 -j RETURN" in rules
    assert rules.rstrip().endswith(
        "-A HEF-abc -j REJECT --reject-with icmp-admin-prohibited\nCOMMIT"
    )
    named = EgressPolicy.parse({"allow_list": ["10.0.0.0/8"], "deny_list": ["evil.example"]})
    rules = ruleset("abc", named, proxy_port=15001, resolvers=[], passthrough=[])
    assert "-A HEN-abc -d 10.0.0.0/8 -j RETURN" not in rules
