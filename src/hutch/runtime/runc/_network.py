"""Sandbox networks: ``none`` (loopback only) and ``egress`` (a bridge with NAT, made by CNI).

``none`` is runc's own: a fresh network namespace with only ``lo``, which runc brings up.

``egress``:

* runc creates the sandbox (``runc create``) with a fresh network namespace as for ``none``: it
  must be owned by the sandbox's user namespace, or the sandbox could not mount its ``/sys``.
  Before the sandbox starts (``runc start``), the server pins that namespace with a bind mount on
  ``<data>/netns/<id>`` and runs the standard CNI ``bridge`` plugin on it (Debian's
  ``containernetworking-plugins``, invoked directly as the CNI spec describes: ``CNI_*`` variables
  in the environment, the network configuration on stdin, the result on stdout), with
  ``host-local`` IPAM: a veth into the host's bridge, an address and a default route for the
  sandbox, its traffic masqueraded (``ipMasq``), frames whose source MAC is not the sandbox's own
  dropped (``macspoofchk``). ``lo`` is up already (runc brings it up in namespaces it makes).
* The configuration sent to ``bridge`` is saved in ``<data>/cni/<id>.json`` before anything is
  made, and the result beside it after; DEL sends exactly that configuration (with the result as
  ``prevResult``), so a sandbox is taken down right after a restart, an interrupted create, or a
  change of the server's network options.
* Isolation on top of the plugins, because sandboxed code is hostile:

  - each sandbox's bridge port is *isolated*: ports reach the host, never each other, so
    sandboxes exchange nothing at layer 2 (no ARP, no IPv6 link-local, no broadcast);
  - a permanent neighbour entry on the host per sandbox: forged ARP from one sandbox cannot make
    the host send it another sandbox's traffic (``macspoofchk`` already stops forged source MACs
    from poisoning the bridge's forwarding table);
  - IPv6 is off on the bridge and on the host ends of the veths (sandboxes get IPv4 only), so
    the host's services listening on ``::`` are not reachable over link-local addresses;
  - hutch's own iptables chains, jumped to first from INPUT and FORWARD for the bridge's traffic
    only (other rules, Docker's included, are left alone). ``HUTCH-IN-<bridge>``: the host
    answers a sandbox only on the allowed ports (``--allow-host-port``), whatever address of the
    host it dials (the bridge's, the primary one, another bridge's); everything else is rejected.
    ``HUTCH-FWD-<bridge>``: no routing from one sandbox to another, no forged source addresses,
    nothing to link-local addresses (cloud metadata services hand out credentials there) or to
    other container bridges (Docker's and the like), nothing started from outside; the rest goes
    out through NAT.

* An egress access control (``proxy_config.access_control``, see docs/egress.md) adds per-sandbox
  chains (:mod:`_egress_firewall`) and the transparent proxy (:mod:`_egress_proxy`); the policy
  is kept in ``<data>/egress/<id>.json`` so a start after a stop, or a restarted server, applies
  it again.

The chains and the bridge stay while sandboxes use them (also across a server restart: running
sandboxes keep their protection); :meth:`EgressNetwork.aclose` removes them when none is left.
The kernel's ``ip_forward`` is switched on by the bridge plugin and left on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hutch.runtime._egress_policy import EgressPolicy
from hutch.runtime._egress_seal import SecretBox
from hutch.runtime._interface import RuntimeError_
from hutch.runtime.runc import _egress_firewall
from hutch.runtime.runc._egress_proxy import EgressProxy
from hutch.runtime.runc._egress_tls import ca_dir

__all__ = ["Attachment", "EgressConfig", "EgressNetwork", "HostPort", "NetworkError"]

log = logging.getLogger("hutch.runtime")

_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND = 0x1000
MNT_DETACH = 2

CNI_PATH = Path("/usr/lib/cni")
CNI_VERSION = "1.0.0"
#: The CNI network name: keys the IPAM directory and labels the plugins' NAT rules.
CNI_NETWORK = "hutch"
IFNAME = "eth0"
#: A plugin that takes longer than this is killed and the step fails.
CNI_TIMEOUT = 60.0
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Linux interface names: at most 15 bytes (IFNAMSIZ - 1); kept to a conservative alphabet.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
#: Other container bridges (Docker's default and user networks, libvirt, podman, LXC/LXD,
#: CNI's default) by name pattern, so ones created after hutch set up are covered too.
OTHER_BRIDGES = ("docker0", "br-+", "virbr+", "cni+", "podman+", "lxcbr+", "lxdbr+")
#: Never forwarded to: link-local, where cloud metadata services live (169.254.169.254).
LINK_LOCAL = "169.254.0.0/16"
DEFAULT_SUBNET = "10.201.0.0/16"
#: The egress proxy's port on the bridge's address (fixed, so the redirects of sandboxes kept
#: across a server restart reach the next server's proxy).
PROXY_PORT = 15001


class NetworkError(RuntimeError_):
    """Setting up or taking down a sandbox's network failed; ``str()`` says why."""


@dataclass(frozen=True)
class HostPort:
    """A port of the host that egress sandboxes may reach (``--allow-host-port``)."""

    port: int
    proto: Literal["tcp", "udp"] = "tcp"

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """``"8080"``, ``"8080/tcp"`` or ``"53/udp"``; ValueError says what is wrong."""
        number, _, proto = text.strip().partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp") or not number.isdigit() or not 0 < int(number) < 65536:
            raise ValueError(
                f"{text!r} is not a host port: write PORT or PORT/tcp or PORT/udp, "
                "with PORT from 1 to 65535"
            )
        return cls(int(number), "tcp" if proto == "tcp" else "udp")

    def __str__(self) -> str:
        return f"{self.port}/{self.proto}"


@dataclass(frozen=True)
class EgressConfig:
    """How ``egress`` sandboxes are networked (``hutch serve --egress-*``, ``--dns``, …).

    Raises ValueError with a message naming the option when a value is unusable.
    """

    #: The host bridge all egress sandboxes of this server plug into (one server per bridge).
    bridge: str = "hutch0"
    #: IPv4 subnet of the bridge; the first address is the bridge's (the sandboxes' gateway).
    subnet: str = DEFAULT_SUBNET
    #: Nameservers for resolv.conf; empty: the host's, unless those are loopback addresses.
    dns: tuple[str, ...] = ()
    allow_host_ports: tuple[HostPort, ...] = ()
    cni_path: Path = CNI_PATH
    #: The host's resolver configuration the nameservers are taken from.
    host_resolv_conf: Path = field(default=Path("/etc/resolv.conf"))

    def __post_init__(self) -> None:
        if not _IFNAME_RE.match(self.bridge):
            raise ValueError(
                f"--egress-bridge {self.bridge!r}: use 1-15 letters, digits, '-' or '_'"
            )
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise ValueError(
                f"--egress-subnet {self.subnet!r}: {exc}; write an IPv4 network like "
                f"{DEFAULT_SUBNET}"
            ) from None
        if not 8 <= net.prefixlen <= 28:
            raise ValueError(f"--egress-subnet {self.subnet!r}: the prefix must be from /8 to /28")
        for server in self.dns:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(f"--dns {server!r} is not an IP address") from None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def input_chain(self) -> str:
        return f"HUTCH-IN-{self.bridge}"

    @property
    def forward_chain(self) -> str:
        return f"HUTCH-FWD-{self.bridge}"

    def jumps(self) -> list[tuple[str, list[str]]]:
        """``(builtin chain, match)`` of the jumps into hutch's chains."""
        return [
            ("INPUT", ["-i", self.bridge, "-j", self.input_chain]),
            ("FORWARD", ["-i", self.bridge, "-j", self.forward_chain]),
            ("FORWARD", ["-o", self.bridge, "-j", self.forward_chain]),
        ]


@dataclass(frozen=True)
class Attachment:
    """A sandbox plugged into the bridge."""

    netns: Path
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    mac: str
    #: The host end of the veth pair (a port of the bridge).
    host_veth: str
    bridge: str

    @classmethod
    def from_result(cls, netns: Path, bridge: str, result: dict[str, Any]) -> Attachment:
        """Read a ``bridge`` plugin result (CNI 1.0.0)."""
        try:
            interfaces = result["interfaces"]
            ip = next(i for i in result["ips"] if "." in i["address"])
            inside = interfaces[ip["interface"]]
            host = next(
                i["name"] for i in interfaces if not i.get("sandbox") and i["name"] != bridge
            )
            return cls(
                netns=netns,
                address=ipaddress.IPv4Interface(ip["address"]),
                gateway=ipaddress.IPv4Address(ip["gateway"]),
                mac=str(inside["mac"]),
                host_veth=str(host),
                bridge=bridge,
            )
        except (KeyError, IndexError, StopIteration, TypeError, ValueError) as exc:
            raise NetworkError(f"unexpected result from the CNI bridge plugin: {result}") from exc


def firewall_rules(config: EgressConfig, other_bridges: list[str]) -> str:
    """The ``iptables-restore --noflush`` input that (re)fills hutch's two chains.

    Declaring a chain there creates it, or empties it if it exists, so applying this again
    leaves the same rules (a changed ``--allow-host-port`` list takes effect).
    """
    br, subnet = config.bridge, str(config.network)
    inp, fwd = config.input_chain, config.forward_chain
    lines = ["*filter", f":{inp} - [0:0]", f":{fwd} - [0:0]"]
    # To the host: replies to connections the host opened, the allowed ports, nothing else.
    # REJECT rather than DROP, so a client in a sandbox fails at once instead of hanging.
    lines.append(f"-A {inp} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    for hp in config.allow_host_ports:
        lines.append(f"-A {inp} -p {hp.proto} -m {hp.proto} --dport {hp.port} -j ACCEPT")
    lines.append(f"-A {inp} -p tcp -j REJECT --reject-with tcp-reset")
    lines.append(f"-A {inp} -j REJECT --reject-with icmp-admin-prohibited")
    # Through the host: sandbox to sandbox via the host's routing (layer 2 is already cut by
    # port isolation), connections from outside into the sandboxes, forged sources.
    lines.append(f"-A {fwd} -i {br} -o {br} -j DROP")
    lines.append(f"-A {fwd} -o {br} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    lines.append(f"-A {fwd} -o {br} -j DROP")
    lines.append(f"-A {fwd} -i {br} ! -s {subnet} -j DROP")
    lines.append(f"-A {fwd} -i {br} -d {LINK_LOCAL} -j DROP")
    for other in sorted({*other_bridges, *OTHER_BRIDGES} - {br}):
        lines.append(f"-A {fwd} -i {br} -o {other} -j DROP")
    lines.append(f"-A {fwd} -i {br} -j ACCEPT")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def resolv_conf(config: EgressConfig) -> str:
    """resolv.conf of egress sandboxes.

    ``--dns`` when given; else the host's nameservers (and search domains), except loopback
    ones, which would be the sandbox's own loopback; with none left, a file that says so.
    """
    if config.dns:
        return "".join(f"nameserver {s}\n" for s in config.dns)
    servers: list[str] = []
    loopback: list[str] = []
    search = ""
    try:
        text = config.host_resolv_conf.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            # Sandboxes have IPv4 only; a loopback resolver (127.0.0.53) is not the host's there.
            if addr.is_loopback:
                loopback.append(words[1])
            elif addr.version == 4:
                servers.append(words[1])
        elif len(words) >= 2 and words[0] in ("search", "domain"):
            search = " ".join(words[1:])
    if not servers:
        why = (
            f"the host's resolvers ({', '.join(loopback)}) are loopback addresses, which a "
            "sandbox cannot reach"
            if loopback
            else f"the host has no usable IPv4 nameserver in {config.host_resolv_conf}"
        )
        return (
            f"# hutch: no DNS servers: {why}.\n"
            "# Start hutch serve with --dns <server address> to give sandboxes one.\n"
        )
    out = "".join(f"nameserver {s}\n" for s in servers[:3])
    return out + (f"search {search}\n" if search else "")


# -- host helpers (blocking; run in a worker thread) --------------------------------------------


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=CNI_TIMEOUT, env=_env({})
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{argv[0]} failed: {exc}; install iproute2 and iptables") from exc
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH") or _PATH, **extra}


def _write_sys(path: str, value: str, *, required: bool) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        if required:
            raise NetworkError(f"could not write {value!r} to {path}: {exc}") from exc


def _bridges() -> list[str]:
    return sorted(p.parent.name for p in Path("/sys/class/net").glob("*/bridge"))


def bridge_ports(bridge: str) -> list[str]:
    """Interfaces plugged into ``bridge`` (empty if it does not exist)."""
    try:
        return sorted(p.name for p in Path(f"/sys/class/net/{bridge}/brif").iterdir())
    except FileNotFoundError:
        return []


def _ipv4_addresses() -> list[tuple[str, ipaddress.IPv4Interface]]:
    out = _run("ip", "-j", "-4", "addr", "show").stdout
    found = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            found.append(
                (str(link["ifname"]), ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}"))
            )
    return found


def setup_host(config: EgressConfig) -> None:
    """Make the bridge and hutch's chains (idempotent: a second call leaves the same state)."""
    br, gw = config.bridge, ipaddress.IPv4Interface(f"{config.gateway}/{config.network.prefixlen}")
    ours: list[ipaddress.IPv4Interface] = []
    for ifname, addr in _ipv4_addresses():
        if ifname == br:
            ours.append(addr)
        elif addr.network.overlaps(config.network):
            raise NetworkError(
                f"the egress subnet {config.network} overlaps {addr} on {ifname}; start "
                "hutch serve with another --egress-subnet"
            )
    sys_dir = Path("/sys/class/net") / br
    if not sys_dir.exists():
        _run("ip", "link", "add", br, "type", "bridge")
    elif not (sys_dir / "bridge").exists():
        raise NetworkError(f"{br} exists and is not a bridge; choose another --egress-bridge")
    stale = [a for a in ours if a != gw]
    if stale and bridge_ports(br):
        raise NetworkError(
            f"bridge {br} is in use with {', '.join(map(str, stale))}, not {gw}; delete its "
            "sandboxes or keep the previous --egress-subnet"
        )
    for addr in stale:
        _run("ip", "addr", "del", str(addr), "dev", br)
    # No IPv6 on the bridge: sandboxes get IPv4 only, and the host's services on "::" must not
    # answer them over link-local addresses.
    _write_sys(f"/proc/sys/net/ipv6/conf/{br}/disable_ipv6", "1", required=False)
    if gw not in ours:
        _run("ip", "addr", "add", str(gw), "dev", br)
    _run("ip", "link", "set", br, "up")
    try:
        restore = subprocess.run(
            ["iptables-restore", "-w", "--noflush"],
            input=firewall_rules(config, _bridges()),
            capture_output=True,
            text=True,
            env=_env({}),
            timeout=CNI_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"iptables-restore failed: {exc}; install iptables") from exc
    if restore.returncode != 0:
        raise NetworkError(f"iptables-restore failed: {restore.stderr.strip()}")
    for chain, rule in config.jumps():
        if _run("iptables", "-w", "-C", chain, *rule, check=False).returncode != 0:
            _run("iptables", "-w", "-I", chain, "1", *rule)


def teardown_host(config: EgressConfig) -> None:
    """Remove hutch's chains, their jumps and the bridge (what :func:`setup_host` made)."""
    for chain, rule in config.jumps():
        for _ in range(16):  # every copy, should someone have added the jump twice
            if _run("iptables", "-w", "-D", chain, *rule, check=False).returncode != 0:
                break
    for chain in (config.input_chain, config.forward_chain):
        _run("iptables", "-w", "-F", chain, check=False)
        _run("iptables", "-w", "-X", chain, check=False)
    if Path(f"/sys/class/net/{config.bridge}/bridge").exists():
        _run("ip", "link", "del", config.bridge, check=False)


def _pin_netns(pid: int, path: Path) -> None:
    """Keep the network namespace of ``pid`` alive with a bind mount on ``path`` (an empty file).

    Refused when that is the server's own namespace: CNI must never reconfigure the host's.
    """
    source = f"/proc/{pid}/ns/net"
    try:
        if os.stat(source).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise NetworkError(f"process {pid} is in the host's network namespace")
    except FileNotFoundError:
        raise NetworkError(f"the sandbox's init (pid {pid}) is gone") from None
    path.touch(mode=0o600)
    if _libc.mount(source.encode(), str(path).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise NetworkError(f"bind-mounting {source} on {path}: {os.strerror(err)}")


def _is_netns(path: Path) -> bool:
    """Is a network namespace mounted on ``path`` (not just the empty file left by a reboot)?"""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def _remove_netns(path: Path) -> None:
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise NetworkError(f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


# -- the egress network --------------------------------------------------------------------------


class EgressNetwork:
    """Egress networking of one server's sandboxes (state under ``data_dir``)."""

    def __init__(self, data_dir: Path, config: EgressConfig | None = None) -> None:
        self.config = config or EgressConfig()
        self.netns_dir = data_dir / "netns"
        self.state_dir = data_dir / "cni"
        self.ipam_dir = self.state_dir / "ipam"
        self._lock = asyncio.Lock()
        self._ready = False
        #: Bridges this process plugged sandboxes into or unplugged them from (a restarted
        #: server may find sandboxes of an earlier ``--egress-bridge``): cleaned up on close.
        self._used: set[str] = set()
        self.policy_dir = data_dir / "egress"
        self._data_dir = data_dir
        self._box: SecretBox | None = None
        self.proxy: EgressProxy | None = None
        self._resumed = False

    def netns_path(self, sandbox_id: str) -> Path:
        return self.netns_dir / sandbox_id

    def _state(self, sandbox_id: str) -> Path:
        return self.state_dir / f"{sandbox_id}.json"

    def ids(self) -> set[str]:
        """Sandboxes with anything of an egress network left (a namespace or saved state)."""
        found: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            found.update(p.name for p in self.netns_dir.iterdir())
        with contextlib.suppress(FileNotFoundError):
            found.update(p.stem for p in self.state_dir.glob("*.json"))
        return found

    def has(self, sandbox_id: str) -> bool:
        return self.netns_path(sandbox_id).exists() or self._state(sandbox_id).exists()

    def resolv_conf(self) -> str:
        return resolv_conf(self.config)

    def attachment(self, sandbox_id: str) -> Attachment | None:
        """The sandbox's address, MAC and ports, from the saved CNI result (None: no egress)."""
        saved = _load(self._state(sandbox_id))
        if saved is None or "result" not in saved:
            return None
        bridge = str(saved["conf"].get("bridge", ""))
        return Attachment.from_result(self.netns_path(sandbox_id), bridge, saved["result"])

    def bridge_conf(self) -> dict[str, Any]:
        """The ``bridge`` plugin's network configuration (CNI 1.0.0)."""
        cfg = self.config
        return {
            "cniVersion": CNI_VERSION,
            "name": CNI_NETWORK,
            "type": "bridge",
            "bridge": cfg.bridge,
            "isDefaultGateway": True,
            "ipMasq": True,
            "hairpinMode": False,
            "macspoofchk": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(cfg.network), "gateway": str(cfg.gateway)}]],
                "dataDir": str(self.ipam_dir),
            },
        }

    async def ensure_host(self) -> None:
        """Set up the bridge and the firewall once per process (before the first attach)."""
        async with self._lock:
            if not self._ready:
                await asyncio.to_thread(setup_host, self.config)
                self._ready = True

    async def attach(self, sandbox_id: str, pid: int) -> Attachment:
        """Plug the network namespace of the sandbox's init (``pid``) into the bridge.

        The namespace is pinned at ``netns/<id>`` first, so DEL can still reach the sandbox's
        interface after its processes are gone. On failure call :meth:`detach`.
        """
        await self.ensure_host()
        self._used.add(self.config.bridge)
        for d in (self.netns_dir, self.state_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = self.bridge_conf()
        # Saved before ADD: whatever ADD gets done, DEL can undo it, even from another process.
        _save(self._state(sandbox_id), {"conf": conf})
        path = self.netns_path(sandbox_id)
        await asyncio.to_thread(_pin_netns, pid, path)
        result = await self._cni("ADD", conf, sandbox_id, str(path), IFNAME)
        _save(self._state(sandbox_id), {"conf": conf, "result": result})
        att = Attachment.from_result(path, self.config.bridge, result)
        await self._harden(att)
        if self._policy_path(sandbox_id).exists():  # no policy: nothing to add (nor to undo)
            await self._enforce(sandbox_id, att)
        return att

    # -- access control ---------------------------------------------------------------------

    def _policy_path(self, sandbox_id: str) -> Path:
        return self.policy_dir / f"{sandbox_id}.json"

    @property
    def ca_dir(self) -> Path:
        """Where the egress proxy's interception CA is kept (see _egress_tls)."""
        return ca_dir(self._data_dir)

    def box(self) -> SecretBox:
        """Seals the header values of saved policies (the data dir's ``secrets.key``)."""
        if self._box is None:
            self._box = SecretBox.in_dir(self._data_dir)
        return self._box

    def load_policy(self, sandbox_id: str) -> EgressPolicy | None:
        """The sandbox's saved access control (None: unrestricted)."""
        try:
            data = json.loads(self._policy_path(sandbox_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        try:
            return EgressPolicy.parse(data, box=self.box())
        except ValueError:  # written by us from a parsed policy: never, but fail closed
            return EgressPolicy.parse({"allow_list": []})

    async def set_policy(self, sandbox_id: str, policy: EgressPolicy | None) -> None:
        """Save the sandbox's access control and, when it is plugged in, enforce it now (new
        connections; :meth:`attach` enforces it otherwise)."""
        path = self._policy_path(sandbox_id)
        if policy is None or policy.empty:
            path.unlink(missing_ok=True)
        else:
            self.policy_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(policy.to_json(self.box())))
            tmp.replace(path)
        att = self.attachment(sandbox_id) if self.netns_path(sandbox_id).exists() else None
        if att is not None:
            await self._enforce(sandbox_id, att)

    def forget_policy(self, sandbox_id: str) -> None:
        self._policy_path(sandbox_id).unlink(missing_ok=True)

    def resolvers(self) -> list[str]:
        """The nameservers sandboxes are given (their port 53 stays open under a policy)."""
        return [
            line.split()[1] for line in self.resolv_conf().splitlines()
            if line.startswith("nameserver ")
        ]  # fmt: skip

    async def _enforce(self, sandbox_id: str, att: Attachment) -> None:
        policy = self.load_policy(sandbox_id)
        source = str(att.address.ip)
        if policy is None:
            if self.proxy is not None:
                self.proxy.remove(source)
            await asyncio.to_thread(_egress_firewall.remove, sandbox_id)
            return
        if self.proxy is None:
            self.proxy = EgressProxy(str(att.gateway), PROXY_PORT, ca_dir=self.ca_dir)
        try:
            await self.proxy.start()
        except OSError as exc:
            raise NetworkError(
                f"the egress proxy cannot listen on {att.gateway}:{PROXY_PORT}: {exc}; free "
                "that port on the bridge's address"
            ) from exc
        self.proxy.set(source, sandbox_id, policy)
        passthrough = [LINK_LOCAL, str(att.address.network)]
        passthrough += _egress_firewall.other_networks(
            await asyncio.to_thread(_ipv4_addresses), att.bridge
        )
        try:
            await asyncio.to_thread(
                _egress_firewall.apply, sandbox_id, policy, bridge=att.bridge, veth=att.host_veth,
                source=source,
                proxy_port=PROXY_PORT, resolvers=self.resolvers(), passthrough=passthrough,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"egress rules of sandbox {sandbox_id}: {exc}") from exc

    async def resume(self) -> None:
        """Once per process: enforce the saved policies of sandboxes already plugged in (kept
        running across a server restart: their redirects need this process's proxy)."""
        if self._resumed:
            return
        self._resumed = True
        for sandbox_id in sorted(self.ids()):
            if not self._policy_path(sandbox_id).exists() or not _is_netns(
                self.netns_path(sandbox_id)
            ):
                continue
            att = self.attachment(sandbox_id)
            if att is not None:
                await self.ensure_host()
                await self._enforce(sandbox_id, att)

    def denied(self, sandbox_id: str) -> int:
        """Denied connections (proxy) and packets (firewall) of the sandbox (blocking)."""
        by_proxy = self.proxy.denied(sandbox_id) if self.proxy is not None else 0
        return by_proxy + _egress_firewall.denied_packets(sandbox_id)

    async def _harden(self, att: Attachment) -> None:
        """Isolate the port and pin the sandbox's address to its MAC on the host."""
        port = f"/sys/class/net/{att.host_veth}"
        _write_sys(f"{port}/brport/isolated", "1", required=True)
        _write_sys(f"/proc/sys/net/ipv6/conf/{att.host_veth}/disable_ipv6", "1", required=False)
        await self._ip(
            "neigh", "replace", str(att.address.ip), "lladdr", att.mac, "dev", att.bridge,
            "nud", "permanent",
        )  # fmt: skip

    async def detach(self, sandbox_id: str) -> None:
        """Unplug the sandbox and remove its namespace; idempotent.

        The saved state is kept when the address could not be released, so a later delete
        (e.g. the orphan clean-up of the next server start) tries again.
        """
        state, path = self._state(sandbox_id), self.netns_path(sandbox_id)
        saved = _load(state)
        released = True
        with contextlib.suppress(NetworkError):
            att = self.attachment(sandbox_id)
            if att is not None and self.proxy is not None:
                self.proxy.remove(str(att.address.ip))
        if self._policy_path(sandbox_id).exists():
            await asyncio.to_thread(_egress_firewall.remove, sandbox_id)
        if saved is not None:
            self._used.add(str(saved["conf"].get("bridge", self.config.bridge)))
            released = await self._cni_del(sandbox_id, path, saved)
        if path.exists():
            await asyncio.to_thread(_remove_netns, path)
        if released:
            state.unlink(missing_ok=True)

    async def _cni_del(self, sandbox_id: str, path: Path, saved: dict[str, Any]) -> bool:
        conf = dict(saved["conf"])
        result = saved.get("result")
        if result is not None:
            conf["prevResult"] = result
        netns = str(path) if _is_netns(path) else ""
        try:
            await self._cni("DEL", conf, sandbox_id, netns, IFNAME)
        except NetworkError as exc:
            log.warning("CNI DEL of sandbox %s failed: %s", sandbox_id, exc)
            if not netns:
                return False
            try:  # without a namespace the plugin only releases the address
                await self._cni("DEL", conf, sandbox_id, "", IFNAME)
            except NetworkError as exc2:
                log.warning("releasing the address of sandbox %s failed: %s", sandbox_id, exc2)
                return False
        if result is not None:
            with contextlib.suppress(NetworkError):
                att = Attachment.from_result(path, str(conf.get("bridge", "")), result)
                await self._ip("neigh", "del", str(att.address.ip), "dev", att.bridge, check=False)
        return True

    async def aclose(self) -> None:
        """Remove the bridges and chains this process used once no sandbox is left on them.

        The proxy always stops (sandboxes left running are refused until the next server's).
        """
        if self.proxy is not None:
            await self.proxy.aclose()
            self.proxy = None
        if self.ids():
            return
        async with self._lock:
            for bridge in sorted(self._used):
                if not bridge_ports(bridge):
                    with contextlib.suppress(ValueError):  # a name no config could have made
                        await asyncio.to_thread(teardown_host, EgressConfig(bridge=bridge))
            self._used.clear()
            self._ready = False

    # -- subprocesses ---------------------------------------------------------------------------

    async def _ip(self, *args: str, check: bool = True) -> None:
        code, out = await _exec(["ip", *args], None, _env({}))
        if check and code != 0:
            raise NetworkError(f"ip {' '.join(args)} failed: {out.strip()}")

    async def _cni(
        self, command: str, conf: dict[str, Any], sandbox_id: str, netns: str, ifname: str
    ) -> dict[str, Any]:
        """Run one CNI plugin; its parsed result (``{}`` for DEL)."""
        plugin = self.config.cni_path / str(conf["type"])
        env = _env(
            {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": sandbox_id,
                "CNI_NETNS": netns,
                "CNI_IFNAME": ifname,
                "CNI_PATH": str(self.config.cni_path),
            }
        )
        try:
            code, out = await _exec([str(plugin)], json.dumps(conf).encode(), env)
        except FileNotFoundError:
            raise NetworkError(
                f"CNI plugin {plugin} not found; install containernetworking-plugins"
            ) from None
        try:
            parsed = json.loads(out) if out.strip() else {}
        except json.JSONDecodeError:
            parsed = {"msg": out.strip()}
        if code != 0:
            detail = parsed.get("details") or ""
            msg = f"{parsed.get('msg') or out.strip()}" + (f" ({detail})" if detail else "")
            raise NetworkError(f"CNI {conf['type']} {command} failed: {msg}")
        return parsed if isinstance(parsed, dict) else {}


async def _exec(argv: list[str], stdin: bytes | None, env: dict[str, str]) -> tuple[int, str]:
    """Run ``argv`` (stdout and stderr together), killed after ``CNI_TIMEOUT``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        async with asyncio.timeout(CNI_TIMEOUT):
            out, _ = await proc.communicate(stdin)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise NetworkError(f"{argv[0]} did not finish within {CNI_TIMEOUT:.0f} s") from None
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "conf" in data else None
