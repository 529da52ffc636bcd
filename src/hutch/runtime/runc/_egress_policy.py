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

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EgressPolicy", "PolicyError", "Verdict"]

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


@dataclass(frozen=True)
class EgressPolicy:
    """A parsed ``access_control``; :meth:`to_json` gives back what was given (normalised)."""

    allow: _Rules | None = None
    deny: _Rules = field(default_factory=_Rules)
    source: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, access_control: object) -> EgressPolicy:
        """Raises PolicyError naming the first bad entry."""
        if access_control is None:
            return cls()
        if not isinstance(access_control, dict):
            raise PolicyError("access_control must be an object with allow_list and/or deny_list")
        unknown = set(access_control) - {"allow_list", "deny_list"}
        if unknown:
            raise PolicyError(
                f"access_control has unknown field(s) {', '.join(sorted(unknown))}; use "
                "allow_list and deny_list"
            )
        allow_entries = access_control.get("allow_list")
        allow = None if allow_entries is None else _Rules.parse(allow_entries, "allow_list")
        deny = _Rules.parse(access_control.get("deny_list"), "deny_list")
        source = {
            k: [str(e).strip() for e in v] for k, v in access_control.items() if v is not None
        }
        return cls(allow, deny, source)

    def to_json(self) -> dict[str, Any]:
        return dict(self.source)

    @property
    def empty(self) -> bool:
        """Nothing restricted: no allow list and an empty deny list."""
        d = self.deny
        return self.allow is None and not (d.has_names or d.networks or d.everything)

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
