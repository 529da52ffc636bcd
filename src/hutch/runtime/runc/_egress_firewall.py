"""Per-sandbox firewall of an egress access control (see docs/egress.md).

For a sandbox with a policy, three things, all keyed by the sandbox's address and tagged with a
comment naming the sandbox:

* ``nat`` chain ``HEN-<id>`` (from PREROUTING): TCP is redirected to the egress proxy, except
  to the host itself, link-local addresses, the sandbox subnet and other container bridges
  (left to hutch's ``HUTCH-IN``/``HUTCH-FWD`` chains, which refuse them), to the configured
  resolvers' port 53, to denied networks (refused below), and, when no denied *name* could
  match, to allowed networks (straight out).
* ``filter`` chain ``HEF-<id>`` (from FORWARD, before hutch's chain): what is forwarded (UDP,
  ICMP, TCP not redirected) passes to the resolvers' port 53 and to allowed networks; denied
  networks and everything else are rejected at once (TCP reset, ICMP admin-prohibited).
* ``filter`` INPUT: the proxy's port is open to the sandbox for *redirected* connections only
  (``--ctstate DNAT``): dialled directly, it stays closed like every other host port.

* ``bridge hutch_egress`` (nftables): IPv4 from the sandbox's veth with another source address
  than its own is dropped before routing. The sandbox has ``CAP_NET_RAW``; without this, it could
  send (and, answering ARP, receive) as an unused address of the subnet, which none of the rules
  above match.

The rule counters of the reject rules count the sandbox's denied packets.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hutch.runtime._egress_policy import EgressPolicy

__all__ = ["apply", "chain_names", "denied_packets", "other_networks", "remove", "ruleset"]

#: Also the chain-name budget: iptables chain names have at most 28 characters.
_ID_CHARS = 20
_TIMEOUT = 60.0


def chain_names(sandbox_id: str) -> tuple[str, str]:
    short = sandbox_id.replace("-", "")[:_ID_CHARS]
    return f"HEF-{short}", f"HEN-{short}"


def _tag(sandbox_id: str) -> list[str]:
    return ["-m", "comment", "--comment", f"hutch-egress:{sandbox_id}"]


def ruleset(
    sandbox_id: str,
    policy: EgressPolicy,
    *,
    proxy_port: int,
    resolvers: Sequence[str],
    passthrough: Sequence[str],
) -> str:
    """The ``iptables-restore --noflush`` input that (re)fills the sandbox's two chains.

    ``passthrough``: networks left to hutch's own chains (host, link-local, bridges).
    """
    fchain, nchain = chain_names(sandbox_id)
    v4 = [n for n in policy.deny_networks() if n.version == 4]
    allow = [n for n in policy.allow_networks() if n.version == 4]
    lines = ["*nat", f":{nchain} - [0:0]"]
    nat = [
        "-m addrtype --dst-type LOCAL -j RETURN",
        *(f"-d {net} -j RETURN" for net in passthrough),
        *(f"-d {r} -p tcp --dport 53 -j RETURN" for r in resolvers),
        *(f"-d {net} -j RETURN" for net in v4),
    ]
    if not policy.deny.has_names and not policy.headers:
        # Header rules need the proxy to see every connection (it injects into some).
        nat += [f"-d {net} -j RETURN" for net in allow]
    nat.append(f"-p tcp -j REDIRECT --to-ports {proxy_port}")
    lines += [f"-A {nchain} {rule}" for rule in nat]
    lines += ["COMMIT", "*filter", f":{fchain} - [0:0]"]
    filt = [
        *(f"-d {r} -p {proto} --dport 53 -j RETURN" for r in resolvers for proto in ("udp", "tcp")),
        *(f"-d {net} -p tcp -j REJECT --reject-with tcp-reset" for net in v4),
        *(f"-d {net} -j REJECT --reject-with icmp-admin-prohibited" for net in v4),
        *(f"-d {net} -j RETURN" for net in allow),
        "-p tcp -j REJECT --reject-with tcp-reset",
        "-j REJECT --reject-with icmp-admin-prohibited",
    ]
    lines += [f"-A {fchain} {rule}" for rule in filt]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _jumps(
    sandbox_id: str, bridge: str, source: str, proxy_port: int
) -> list[tuple[str, str, list[str]]]:
    fchain, nchain = chain_names(sandbox_id)
    match = ["-i", bridge, "-s", f"{source}/32", *_tag(sandbox_id)]
    return [
        ("nat", "PREROUTING", [*match, "-j", nchain]),
        ("filter", "FORWARD", [*match, "-j", fchain]),
        ("filter", "INPUT", [*match, "-p", "tcp", "--dport", str(proxy_port), "-m", "conntrack",
                             "--ctstate", "DNAT", "-j", "ACCEPT"]),
    ]  # fmt: skip


def _run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise OSError(f"{' '.join(argv[:4])} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def apply(
    sandbox_id: str,
    policy: EgressPolicy,
    *,
    bridge: str,
    veth: str,
    source: str,
    proxy_port: int,
    resolvers: Sequence[str],
    passthrough: Sequence[str],
) -> None:
    """Install or replace the sandbox's rules (blocking; OSError says what failed).

    The chains are refilled in one ``iptables-restore`` each table: a PATCH never leaves a
    moment without rules.
    """
    rules = ruleset(sandbox_id, policy, proxy_port=proxy_port, resolvers=resolvers,
                    passthrough=passthrough)  # fmt: skip
    _nft_apply(sandbox_id, veth, source)
    _run("iptables-restore", "-w", "--noflush", stdin=rules)
    for table, chain, rule in _jumps(sandbox_id, bridge, source, proxy_port):
        check = ["iptables", "-w", "-t", table, "-C", chain, *rule]
        if subprocess.run(check, capture_output=True, timeout=_TIMEOUT).returncode != 0:
            _run("iptables", "-w", "-t", table, "-I", chain, "1", *rule)


NFT_TABLE = "hutch_egress"
NFT_CHAIN = "spoof"


def _nft_remove(tag: str) -> None:
    out = _run("nft", "-a", "list", "chain", "bridge", NFT_TABLE, NFT_CHAIN, check=False)
    for line in out.splitlines():
        if f'"{tag}"' in line and "# handle " in line:
            handle = line.rsplit("# handle ", 1)[1].strip()
            _run("nft", "delete", "rule", "bridge", NFT_TABLE, NFT_CHAIN, "handle", handle,
                 check=False)  # fmt: skip


def _nft_apply(sandbox_id: str, veth: str, source: str) -> None:
    tag = f"hutch-egress:{sandbox_id}"
    _nft_remove(tag)
    # Before the bridge's own nat hook: a forged packet never reaches routing or conntrack.
    script = (
        f"add table bridge {NFT_TABLE}\n"
        f"add chain bridge {NFT_TABLE} {NFT_CHAIN} "
        "{ type filter hook prerouting priority -300; policy accept; }\n"
        f'add rule bridge {NFT_TABLE} {NFT_CHAIN} iifname "{veth}" ether type ip '
        f'ip saddr != {source} counter drop comment "{tag}"\n'
    )
    _run("nft", "-f", "-", stdin=script)


def remove(sandbox_id: str) -> None:
    """Remove the sandbox's rules and chains; idempotent (blocking)."""
    tag = f"hutch-egress:{sandbox_id}"
    _nft_remove(tag)
    for table, chain in (("nat", "PREROUTING"), ("filter", "FORWARD"), ("filter", "INPUT")):
        for line in _run("iptables", "-w", "-t", table, "-S", chain, check=False).splitlines():
            if tag in line and line.startswith(f"-A {chain} "):
                _run("iptables", "-w", "-t", table, "-D", *shlex.split(line)[1:], check=False)
    fchain, nchain = chain_names(sandbox_id)
    for table, chain in (("filter", fchain), ("nat", nchain)):
        _run("iptables", "-w", "-t", table, "-F", chain, check=False)
        _run("iptables", "-w", "-t", table, "-X", chain, check=False)


def denied_packets(sandbox_id: str) -> int:
    """Packets the sandbox's reject rules have refused (0 without rules)."""
    fchain, _ = chain_names(sandbox_id)
    out = _run("iptables", "-w", "-t", "filter", "-L", fchain, "-v", "-x", "-n", check=False)
    total = 0
    for line in out.splitlines():
        words = line.split()
        if len(words) > 3 and words[2] == "REJECT" and words[0].isdigit():
            total += int(words[0])
    return total


def other_networks(
    addresses: Sequence[tuple[str, ipaddress.IPv4Interface]], bridge: str
) -> list[str]:
    """Networks of the host's other interfaces that are bridges (for ``passthrough``)."""
    return sorted(
        {
            str(addr.network)
            for ifname, addr in addresses
            if ifname != bridge and Path(f"/sys/class/net/{ifname}/bridge").exists()
        }
    )
