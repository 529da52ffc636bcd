"""Egress configuration of the runc runtime, without root: option parsing, resolv.conf, the
firewall rules hutch loads (the rules in action are proved by test_network.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.runtime.runc._network import EgressConfig, HostPort, firewall_rules, resolv_conf

# -- configuration (no root) -------------------------------------------------------------------


def test_host_ports_parse_and_refuse_bad_values() -> None:
    """``--allow-host-port`` takes PORT, PORT/tcp, PORT/udp; anything else says what to write."""
    assert HostPort.parse("8080") == HostPort(8080, "tcp")
    assert HostPort.parse("53/udp") == HostPort(53, "udp")
    assert str(HostPort.parse("443/tcp")) == "443/tcp"
    for bad in ("0", "65536", "http", "53/sctp", "-1", ""):
        with pytest.raises(ValueError, match="PORT/udp"):
            HostPort.parse(bad)


def test_egress_config_refuses_bad_values() -> None:
    """Bridge names fit IFNAMSIZ, the subnet is IPv4 /8../28, DNS entries are addresses."""
    assert EgressConfig().bridge == "hutch0"
    with pytest.raises(ValueError, match="--egress-bridge"):
        EgressConfig(bridge="a-bridge-name-too-long")
    with pytest.raises(ValueError, match="--egress-bridge"):
        EgressConfig(bridge="br;rm")
    for subnet in ("10.0.0.0/33", "fd00::/64", "10.1.2.3/16", "nonsense", "10.0.0.0/30"):
        with pytest.raises(ValueError, match="--egress-subnet"):
            EgressConfig(subnet=subnet)
    with pytest.raises(ValueError, match="--dns"):
        EgressConfig(dns=("dns.example",))
    cfg = EgressConfig(subnet="10.9.0.0/16")
    assert str(cfg.gateway) == "10.9.0.1"


def test_resolv_conf_skips_loopback_resolvers(tmp_path: Path) -> None:
    """Host resolvers are copied except loopback ones; none left: the file says why; --dns wins."""
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\noptions edns0\nsearch corp.example\n")
    only_loopback = resolv_conf(EgressConfig(host_resolv_conf=host))
    assert "nameserver" not in only_loopback.replace("no DNS servers", "")
    assert "127.0.0.53" in only_loopback and "--dns" in only_loopback
    host.write_text(
        "nameserver 127.0.0.1\nnameserver 192.0.2.53\nnameserver fd00::53\nsearch x.y\n"
    )
    assert resolv_conf(EgressConfig(host_resolv_conf=host)) == (
        "nameserver 192.0.2.53\nsearch x.y\n"
    )
    explicit = EgressConfig(host_resolv_conf=host, dns=("198.51.100.7", "198.51.100.8"))
    assert resolv_conf(explicit) == "nameserver 198.51.100.7\nnameserver 198.51.100.8\n"
    missing = EgressConfig(host_resolv_conf=tmp_path / "absent")
    assert "no DNS servers" in resolv_conf(missing)


def test_firewall_rules_name_only_hutch_chains() -> None:
    """The restore input fills hutch's two chains (allowed ports first, then reject) and nothing
    else: no built-in chain is flushed or changed by it."""
    cfg = EgressConfig(bridge="hx0", subnet="10.9.0.0/24", allow_host_ports=(HostPort(53, "udp"),))
    rules = firewall_rules(cfg, ["docker0", "hx0", "lab0"])
    lines = rules.splitlines()
    assert lines[:3] == ["*filter", ":HUTCH-IN-hx0 - [0:0]", ":HUTCH-FWD-hx0 - [0:0]"]
    assert lines[-1] == "COMMIT"
    body = [line for line in lines[3:-1]]
    assert all(line.startswith(("-A HUTCH-IN-hx0 ", "-A HUTCH-FWD-hx0 ")) for line in body)
    allow = body.index("-A HUTCH-IN-hx0 -p udp -m udp --dport 53 -j ACCEPT")
    assert allow < body.index("-A HUTCH-IN-hx0 -p tcp -j REJECT --reject-with tcp-reset")
    assert "-A HUTCH-FWD-hx0 -i hx0 -o lab0 -j DROP" in body
    assert "-A HUTCH-FWD-hx0 -i hx0 -o hx0 -j DROP" in body
    assert "-A HUTCH-FWD-hx0 -i hx0 -o docker0 -j DROP" in body
    assert body[-1] == "-A HUTCH-FWD-hx0 -i hx0 -j ACCEPT"
