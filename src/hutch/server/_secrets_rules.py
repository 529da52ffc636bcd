"""``proxy_config.rules``: header-injection rules, checked on arrival and given their secrets.

A rule (the LangSmith shape)::

    {"name": "openai", "match_hosts": ["api.openai.com"], "match_paths": ["/v1/*"],
     "headers": [{"name": "Authorization", "type": "workspace_secret",
                  "value": "Bearer {OPENAI_API_KEY}"}]}

Header types: ``plaintext`` (the value as given), ``opaque`` (write-only: the value as given,
never answered), ``workspace_secret`` (``{NAME}`` references to the workspace's secrets,
resolved when the rule is set). The runtime gets the resolved rules (:data:`HEADER_RULES`),
keeps their values sealed at rest and gives them to the egress proxy only.

Provider rules (``aws``, ``gcp``, ``azure``), ``attribution`` and relays answer 501 naming the
type; so do ``match_headers`` and ``env_vars``, which hutch does not apply yet.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hutch.protocol._errors import ErrorType
from hutch.runtime._egress_policy import HEADER_RULES, EgressPolicy, PolicyError
from hutch.server._errors import ApiError
from hutch.server._secrets_store import SecretBox, SecretError, check_name, open_secrets
from hutch.store import Database

__all__ = ["parse_rules", "resolve_rules", "shown_proxy_config"]

_RULE_FEATURES = {
    "aws": "AWS SigV4 signing rules (aws_auth)",
    "gcp": "GCP OAuth rules (gcp_auth)",
    "azure": "Azure auth rules",
    "attribution": "Attribution header rules",
    "relay": "Relay rules",
}
#: ``type`` values of a header-injection rule (the LangSmith API leaves it out).
_HEADER_TYPES = {None, "", "header", "headers", "custom"}
_REF = re.compile(r"\{([^{}]*)\}")
HEADER_VALUE_TYPES = ("plaintext", "opaque", "workspace_secret")
#: Header value types whose values answers may show (a reference is not a secret).
_SHOWN = ("plaintext", "workspace_secret")


def _bad(message: str) -> ApiError:
    return ApiError(ErrorType.BAD_REQUEST, f"proxy_config.{message}")


def _refs(value: str, where: str) -> list[str]:
    names = _REF.findall(value)
    if not names:
        raise _bad(f"{where}: a workspace_secret value names secrets as {{NAME}}, e.g. "
                   "'Bearer {OPENAI_API_KEY}'")  # fmt: skip
    for name in names:
        try:
            check_name(name)
        except SecretError as exc:
            raise _bad(f"{where}: {exc}") from None
    return names


def parse_rules(raw: object) -> list[dict[str, Any]]:
    """The checked rules (secret references unresolved; disabled rules left out).

    Raises ApiError: 400 naming a malformed rule, 501 naming a rule type hutch lacks.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("rules must be a list of rules")
    rules = []
    for i, rule in enumerate(raw):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise _bad(f"{where} must be an object")
        kind = rule.get("type")
        if kind is not None and not isinstance(kind, str):
            raise _bad(f"{where}.type must be a string")
        provider = next((k for k in ("aws", "gcp", "azure") if k in rule), None)
        if kind in _RULE_FEATURES or provider is not None or kind not in _HEADER_TYPES:
            feature = _RULE_FEATURES.get(str(kind or provider), f"Rules of type {kind!r}")
            raise ApiError(
                ErrorType.NOT_IMPLEMENTED,
                f"{feature} in proxy_config.rules are not supported by this hutch server yet; "
                "header-injection rules (match_hosts, headers) and access_control work",
            )
        for field in ("match_headers", "env_vars"):
            if rule.get(field):
                raise ApiError(
                    ErrorType.NOT_IMPLEMENTED,
                    f"{field} in proxy_config.rules is not supported by this hutch server yet; "
                    "leave it out",
                )
        if rule.get("enabled", True) is False:
            continue
        headers = rule.get("headers")
        if not isinstance(headers, list):
            raise _bad(f"{where}.headers: a list of {{name, type, value}}")
        checked = []
        for j, h in enumerate(headers):
            hwhere = f"{where}.headers[{j}]"
            if not isinstance(h, dict) or not isinstance(h.get("value"), str):
                raise _bad(f"{hwhere}: an object with name, type and a string value")
            htype = h.get("type") or "plaintext"
            if htype not in HEADER_VALUE_TYPES:
                raise _bad(f"{hwhere}.type: one of {', '.join(HEADER_VALUE_TYPES)}")
            if htype == "workspace_secret":
                _refs(h["value"], hwhere)
            checked.append({"name": h.get("name"), "type": htype, "value": h["value"]})
        out = {
            "name": str(rule.get("name") or f"rule-{i}"),
            "match_hosts": rule.get("match_hosts"),
            "match_paths": rule.get("match_paths") or [],
            "headers": checked,
        }
        # The same checks the runtime makes, with a stand-in for secret values.
        probe = [{**out, "headers": [{**h, "value": "x"} for h in checked]}]
        try:
            EgressPolicy.parse({HEADER_RULES: probe})
        except PolicyError as exc:
            raise _bad(str(exc).replace("rules[0]", where)) from None
        rules.append(out)
    return rules


async def resolve_rules(
    db: Database, box: SecretBox, workspace_id: str, rules: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rules with every header value in clear (what the runtime takes).

    Raises ApiError: 400 naming a workspace secret the workspace does not hold.
    """
    wanted = {
        name
        for r in rules
        for h in r["headers"]
        if h["type"] == "workspace_secret"
        for name in _REF.findall(h["value"])
    }
    try:
        values = await open_secrets(db, box, workspace_id, wanted)
    except SecretError as exc:
        raise ApiError(ErrorType.BAD_REQUEST, str(exc)) from None
    missing = sorted(wanted - set(values))
    if missing:
        raise ApiError(
            ErrorType.BAD_REQUEST,
            f"proxy_config.rules name workspace secret(s) {', '.join(missing)} that this "
            "workspace does not hold; set them first (PUT /secrets/NAME, or `hutch secrets set "
            "NAME`)",
        )
    out = []
    for r in rules:
        headers = []
        for h in r["headers"]:
            value = h["value"]
            if h["type"] == "workspace_secret":
                value = _REF.sub(lambda m: values[m.group(1)], value)
            if any(c in value for c in "\r\n\0"):
                raise ApiError(
                    ErrorType.BAD_REQUEST,
                    f"proxy_config.rules: the value of header {h['name']!r} would hold a line "
                    "break; a secret used in a header is one line",
                )
            headers.append({"name": h["name"], "value": value})
        out.append({**r, "headers": headers})
    return out


def shown_proxy_config(proxy_config: dict[str, Any] | None) -> str | None:
    """A checked ``proxy_config`` as answers show it (JSON): as given, but every header value
    blanked that is not ``plaintext`` or a ``workspace_secret`` reference (``opaque`` ones are
    write-only)."""
    if proxy_config is None:
        return None
    shown: dict[str, Any] = {k: v for k, v in proxy_config.items() if k != "rules"}
    rules = []
    for rule in proxy_config.get("rules") or []:
        raw = rule.get("headers")
        if not isinstance(raw, list):  # a disabled rule is kept as given, minus its headers
            rules.append({k: v for k, v in rule.items() if k != "headers"})
            continue
        headers = [
            # Anything but a plaintext value or a reference is taken for a secret.
            {**h, "value": ""}
            if isinstance(h, dict) and h.get("type", "plaintext") not in _SHOWN
            else h
            for h in raw
        ]
        rules.append({**rule, "headers": headers})
    shown["rules"] = rules
    return json.dumps(shown)
