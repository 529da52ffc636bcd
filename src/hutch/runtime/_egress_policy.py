"""Egress access control of one sandbox (``proxy_config.access_control``): parsing and matching.

I/O-free: the firewall (:mod:`_network`) and the transparent proxy (:mod:`_egress_proxy`) ask it.

An entry is one of

* an exact domain (``api.example.com``; case and a trailing dot do not matter),
* a glob domain: ``*.example.com`` matches every name *under* ``example.com`` (not the apex);
  ``*`` alone matches every destination, names and addresses alike,
* an IPv4 or IPv6 address, or a CIDR (``10.0.0.0/8``),
* ``~`` and a regular expression, matched in full against the lower-cased name.

Semantics (the SDK's: an allow list restricts egress to matching hosts, a deny list removes
hosts): a destination is allowed when it matches no deny entry and, if an allow list is given,
some allow entry. Deny wins over allow.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hutch.runtime._egress_seal import SecretBox

__all__ = ["HEADER_RULES", "EgressPolicy", "HeaderRule", "PolicyError", "Verdict"]

#: Entries per list, and characters per entry: a policy is compiled into firewall rules and
#: regexes run on every connection, so both stay small.
MAX_ENTRIES = 256
MAX_ENTRY = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyError(ValueError):
    """An unusable ``access_control``; ``str()`` names the entry and says what to write."""


def valid_name(text: str) -> bool:
    """Is ``text`` a host name (what an SNI or Host may carry to be matched by name)?"""
    return _domain(text) is not None


def _domain(text: str) -> str | None:
    name = text.lower().rstrip(".")
    if not name or len(name) > 253:
        return None
    return name if all(_LABEL.match(label) for label in name.split(".")) else None


@dataclass(frozen=True)
class _Rules:
    """One list, split by kind."""

    names: frozenset[str] = frozenset()
    #: Suffixes with their leading dot (``*.example.com`` → ``.example.com``).
    suffixes: tuple[str, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    everything: bool = False

    @classmethod
    def parse(cls, entries: object, where: str) -> _Rules:
        if entries is None:
            return cls()
        if not isinstance(entries, list):
            raise PolicyError(f"access_control.{where} must be a list of strings")
        if len(entries) > MAX_ENTRIES:
            raise PolicyError(f"access_control.{where} has more than {MAX_ENTRIES} entries")
        names: set[str] = set()
        suffixes: list[str] = []
        regexes: list[re.Pattern[str]] = []
        networks: list[IPNetwork] = []
        everything = False
        for raw in entries:
            if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_ENTRY:
                raise PolicyError(
                    f"access_control.{where} entry {str(raw)[:80]!r}: write a non-empty string "
                    f"of at most {MAX_ENTRY} characters"
                )
            entry = raw.strip()
            if entry == "*":
                everything = True
            elif entry.startswith("~"):
                try:
                    regexes.append(re.compile(entry[1:], re.IGNORECASE))
                except re.error as exc:
                    raise PolicyError(
                        f"access_control.{where} entry {entry!r}: not a regular expression ({exc})"
                    ) from None
            elif entry.startswith("*."):
                suffix = _domain(entry[2:])
                if suffix is None:
                    raise PolicyError(
                        f"access_control.{where} entry {entry!r}: write *.DOMAIN, e.g. "
                        "*.example.com"
                    )
                suffixes.append("." + suffix)
            elif "/" in entry or ":" in entry or entry.replace(".", "").isdigit():
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise PolicyError(
                        f"access_control.{where} entry {entry!r}: not an IP address or CIDR; "
                        "write e.g. 203.0.113.7 or 10.0.0.0/8"
                    ) from None
            else:
                name = _domain(entry)
                if name is None:
                    raise PolicyError(
                        f"access_control.{where} entry {entry!r}: not a domain, *.glob, IP, CIDR "
                        "or ~regex"
                    )
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(regexes), tuple(networks), everything)

    @property
    def has_names(self) -> bool:
        return bool(self.names or self.suffixes or self.regexes)

    def match_name(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        if self.everything or name in self.names:
            return True
        if any(name.endswith(s) for s in self.suffixes):
            return True
        return any(r.fullmatch(name) for r in self.regexes)

    def match_ip(self, ip: IPAddress) -> bool:
        return self.everything or any(ip in n for n in self.networks)


class Verdict:
    ALLOW = "allow"
    DENY = "deny"
    #: Only a name (SNI, Host) can decide.
    UNKNOWN = "unknown"


#: The key of the mapping given to :meth:`EgressPolicy.parse` that carries header-injection rules
#: with their values resolved (set by the server, never by a client: see hutch.server._schemas).
HEADER_RULES = "header_rules"
#: Header rules per sandbox, headers per rule, bytes per header value.
MAX_HEADER_RULES = 64
MAX_HEADERS = 16
MAX_HEADER_VALUE = 8 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
#: Headers that frame or route a request: a rule setting one could smuggle a second request or
#: send the request elsewhere than the proxy checked.
FORBIDDEN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
     "keep-alive", "proxy-connection", "expect"}
)  # fmt: skip


def check_header(name: object, value: object, where: str) -> tuple[str, str]:
    """A header a rule may set: a token name (not a framing one), a value of one line."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise PolicyError(f"{where}: {str(name)[:80]!r} is not a header name")
    if name.lower() in FORBIDDEN_HEADERS:
        raise PolicyError(f"{where}: a rule may not set {name} (it frames or routes the request)")
    if not isinstance(value, str) or len(value.encode()) > MAX_HEADER_VALUE:
        raise PolicyError(
            f"{where}: a header value is a string of at most {MAX_HEADER_VALUE} bytes"
        )
    if any(c in value for c in "\r\n\0"):
        raise PolicyError(f"{where}: a header value is one line (no CR, LF or NUL)")
    return name, value


@dataclass(frozen=True)
class HeaderRule:
    """Headers set on HTTP requests to matching hosts (and paths), outside the sandbox."""

    name: str
    hosts: _Rules
    #: ``fnmatch`` patterns of the request path (query excluded); none: every path.
    paths: tuple[str, ...]
    #: (name, value), values in clear: held by the proxy only.
    headers: tuple[tuple[str, str], ...]

    def matches_host(self, host: str) -> bool:
        return valid_name(host) and self.hosts.match_name(host)

    def matches(self, host: str, path: str) -> bool:
        if not self.matches_host(host):
            return False
        bare = path.split("?", 1)[0]
        return not self.paths or any(fnmatch.fnmatchcase(bare, p) for p in self.paths)


def _parse_header_rules(raw: object, box: SecretBox | None) -> tuple[HeaderRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_HEADER_RULES:
        raise PolicyError(f"header rules are a list of at most {MAX_HEADER_RULES}")
    rules = []
    for i, rule in enumerate(raw):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise PolicyError(f"{where} must be an object")
        hosts = _Rules.parse(rule.get("match_hosts"), f"{where}.match_hosts")
        if hosts.networks or hosts.everything or hosts.regexes or not hosts.has_names:
            raise PolicyError(
                f"{where}.match_hosts: give host names or *.globs (headers are only ever sent to "
                "named hosts; no IPs, no ~regex)"
            )
        paths = rule.get("match_paths") or []
        if not isinstance(paths, list) or not all(
            isinstance(p, str) and p.startswith("/") and len(p) <= 1024 for p in paths
        ):
            raise PolicyError(f"{where}.match_paths: a list of paths (globs) starting with /")
        headers = rule.get("headers") or []
        if not isinstance(headers, list) or not headers or len(headers) > MAX_HEADERS:
            raise PolicyError(f"{where}.headers: a list of 1 to {MAX_HEADERS} headers")
        pairs = []
        for j, h in enumerate(headers):
            hwhere = f"{where}.headers[{j}]"
            if not isinstance(h, dict):
                raise PolicyError(f"{hwhere} must be an object")
            value = h.get("value")
            if "sealed" in h:
                if box is None:
                    raise PolicyError(f"{hwhere}: a sealed value and no key to open it")
                value = box.open(f"egress/{h.get('name')}", str(h["sealed"]))
            pairs.append(check_header(h.get("name"), value, hwhere))
        rules.append(HeaderRule(str(rule.get("name", "")), hosts, tuple(paths), tuple(pairs)))
    return tuple(rules)


@dataclass(frozen=True)
class EgressPolicy:
    """A parsed ``access_control`` (and header rules); :meth:`to_json` gives back what was given
    (normalised; header values sealed)."""

    allow: _Rules | None = None
    deny: _Rules = field(default_factory=_Rules)
    source: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[HeaderRule, ...] = ()

    @classmethod
    def parse(cls, access_control: object, *, box: SecretBox | None = None) -> EgressPolicy:
        """Raises PolicyError naming the first bad entry. Header rules (:data:`HEADER_RULES`)
        carry clear values, or sealed ones that ``box`` opens."""
        if access_control is None:
            return cls()
        if not isinstance(access_control, dict):
            raise PolicyError("access_control must be an object with allow_list and/or deny_list")
        unknown = set(access_control) - {"allow_list", "deny_list", HEADER_RULES}
        if unknown:
            raise PolicyError(
                f"access_control has unknown field(s) {', '.join(sorted(unknown))}; use "
                "allow_list and deny_list"
            )
        allow_entries = access_control.get("allow_list")
        allow = None if allow_entries is None else _Rules.parse(allow_entries, "allow_list")
        deny = _Rules.parse(access_control.get("deny_list"), "deny_list")
        source = {
            k: [str(e).strip() for e in v]
            for k, v in access_control.items()
            if v is not None and k != HEADER_RULES
        }
        headers = _parse_header_rules(access_control.get(HEADER_RULES), box)
        return cls(allow, deny, source, headers)

    def to_json(self, box: SecretBox | None = None) -> dict[str, Any]:
        """What :meth:`parse` takes back; header values sealed by ``box`` (needed with rules)."""
        out: dict[str, Any] = dict(self.source)
        if self.headers:
            if box is None:
                raise PolicyError("header rules are saved sealed: give the key")
            out[HEADER_RULES] = [
                {
                    "name": r.name,
                    "match_hosts": sorted(r.hosts.names) + [f"*{s}" for s in r.hosts.suffixes],
                    "match_paths": list(r.paths),
                    "headers": [
                        {"name": n, "sealed": box.seal(f"egress/{n}", v)} for n, v in r.headers
                    ],
                }
                for r in self.headers
            ]
        return out

    @property
    def empty(self) -> bool:
        """Nothing restricted and nothing to inject: no allow list, an empty deny list, no
        header rules."""
        d = self.deny
        restricted = self.allow is not None or d.has_names or bool(d.networks) or d.everything
        return not restricted and not self.headers

    def headers_for(self, host: str, path: str) -> list[tuple[str, str]]:
        """The headers to set on a request for ``host`` and ``path`` (later rules win)."""
        out: dict[str, tuple[str, str]] = {}
        for rule in self.headers:
            if rule.matches(host, path):
                for name, value in rule.headers:
                    out[name.lower()] = (name, value)
        return list(out.values())

    def injects_for(self, host: str) -> bool:
        """Does any rule name ``host`` (whatever the path)?"""
        return any(rule.matches_host(host) for rule in self.headers)

    def allow_networks(self) -> tuple[IPNetwork, ...]:
        """What the firewall lets through by address (everything when there is no allow list)."""
        if self.allow is None or self.allow.everything:
            return (ipaddress.ip_network("0.0.0.0/0"),)
        return self.allow.networks

    def deny_networks(self) -> tuple[IPNetwork, ...]:
        if self.deny.everything:
            return (ipaddress.ip_network("0.0.0.0/0"),)
        return self.deny.networks

    def ip_verdict(self, ip: IPAddress) -> str:
        """The verdict on an address alone."""
        if self.deny.match_ip(ip):
            return Verdict.DENY
        if self.allow is None or self.allow.match_ip(ip):
            # Allowed by address, unless a denied *name* turns out to be what is dialled.
            return Verdict.UNKNOWN if self.deny.has_names else Verdict.ALLOW
        return Verdict.UNKNOWN if self.allow.has_names else Verdict.DENY

    def name_allowed(self, name: str) -> bool:
        """The verdict on a name alone (the caller checks it resolves to the address dialled)."""
        if self.deny.match_name(name):
            return False
        return self.allow is None or self.allow.match_name(name)

    @property
    def has_regexes(self) -> bool:
        return bool(self.deny.regexes or (self.allow is not None and self.allow.regexes))

    def ip_allowed(self, ip: IPAddress) -> bool:
        """Allowed by address alone, names aside (no allow list: anything not denied)."""
        if self.deny.match_ip(ip):
            return False
        return self.allow is None or self.allow.match_ip(ip)

    def names(self) -> Iterable[str]:
        """Exact names of the allow list (for diagnostics)."""
        return sorted(self.allow.names) if self.allow else []
