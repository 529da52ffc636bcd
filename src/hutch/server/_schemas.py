"""Request bodies of the control plane (unknown fields are refused) and response shapes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from hutch.protocol._errors import ErrorType
from hutch.runtime._egress_policy import HEADER_RULES, EgressPolicy
from hutch.runtime._interface import NETWORK_MODES
from hutch.runtime._resources import QuantityError, parse_cpu, parse_memory
from hutch.runtime.images import Credentials, ImageError, normalize_reference
from hutch.server._errors import ApiError
from hutch.server._lifetimes import Lifetime, expires_at
from hutch.server._secrets_rules import parse_rules
from hutch.server._snapshot_store import effective_run_config
from hutch.store import Sandbox, Template

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_name(value: str) -> str:
    if not DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Largest disk limit a template or sandbox may ask for (1 PiB). The limit is a btrfs quota in a
#: pool that is one sparse file on the host's disk, so anything larger could never be given; the
#: pool's own size (``--storage-pool-size``) is the tighter bound, checked where the server's
#: configuration is known.
MAX_STORAGE_BYTES = 1024**5


def check_storage(value: str, field: str = "storage") -> int:
    """A disk-size quantity in bytes, 16Mi to :data:`MAX_STORAGE_BYTES`.

    Raises:
        ValueError: Not a size, or out of range; the message says what is accepted.
    """
    try:
        size = parse_memory(value, field=field, check_host=False)
    except QuantityError as exc:
        raise ValueError(str(exc)) from None
    if size > MAX_STORAGE_BYTES:
        raise ValueError(
            f"{field} {value[:40]!r} is larger than the most a sandbox's disk may be (1Pi); "
            'ask for what the sandbox needs, e.g. "10Gi"'
        )
    return size


class ResourcesIn(_Body):
    cpu: StrictStr = "500m"
    memory: StrictStr = "512Mi"
    storage: StrictStr | None = None

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        try:
            parse_cpu(v)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        try:
            parse_memory(v)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None:
            check_storage(v)
        return v


class VolumeMountIn(_Body):
    volume_name: StrictStr
    mount_path: StrictStr


class TemplateCreate(_Body):
    name: StrictStr
    image: StrictStr
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    volume_mounts: list[VolumeMountIn] = Field(default_factory=list)
    #: hutch extension: ``none`` or ``egress``; absent: the server's ``--default-network``.
    network: StrictStr | None = None
    #: hutch extension: the ``proxy_config`` (``access_control`` only) of the template's
    #: sandboxes whose create names none.
    proxy_config: dict[str, Any] | None = None
    # hutch extension: credentials for pulling ``image`` (kept by the server, never returned).
    registry_username: StrictStr | None = None
    registry_password: StrictStr | None = Field(default=None, repr=False)

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))

    @model_validator(mode="after")
    def _credentials_pair(self) -> TemplateCreate:
        if (self.registry_username is None) != (self.registry_password is None):
            raise ValueError("give both registry_username and registry_password, or neither")
        return self

    def credentials(self) -> Credentials | None:
        if self.registry_username is None or self.registry_password is None:
            return None
        return Credentials(self.registry_username, self.registry_password)

    @field_validator("network")
    @classmethod
    def _network(cls, v: str | None) -> str | None:
        if v is not None and v not in NETWORK_MODES:
            raise ValueError(
                f"{v!r} is not a network mode: use 'none' (loopback only) or 'egress' "
                "(outbound connections through NAT; no other sandboxes, no host services)"
            )
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        try:
            return normalize_reference(v)
        except ImageError as exc:
            raise ValueError(str(exc)) from None


class TemplateUpdate(_Body):
    name: StrictStr

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))


Seconds = Annotated[StrictInt, Field(ge=0, le=10 * 365 * 86400)]
Positive = Annotated[StrictInt, Field(ge=1)]
#: The largest integer the store can hold (SQLite and PostgreSQL: signed 64 bits); a larger one
#: is a client's error, not an OverflowError in the database driver.
INT64_MAX = 2**63 - 1
#: ``offset`` of a listing.
PageOffset = Annotated[int, Query(ge=0, le=INT64_MAX)]


def _unsupported(body: BaseModel, fields: dict[str, str]) -> str | None:
    """The first field of ``fields`` (name → feature) the body sets, as a message."""
    for field_name, feature in fields.items():
        if getattr(body, field_name) is not None:
            return (
                f"{feature} ({field_name}) is not supported by this hutch server yet; "
                f"leave {field_name} out"
            )
    return None


#: ``proxy_config`` fields hutch honours or may ignore (``no_proxy``: deprecated by the SDK and
#: ignored there too; ``description``: text for people).
_PROXY_FIELDS = {"access_control", "rules", "callbacks", "no_proxy", "description"}


def proxy_access_control(proxy_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The validated ``access_control`` of a ``proxy_config`` (None: unrestricted), with its
    enabled header-injection rules under ``"rules"`` (secret references not yet resolved: see
    :func:`hutch.server._secrets_rules.resolve_rules`).

    Raises ApiError: 400 naming a bad entry or field; 501 naming a rule type hutch cannot apply
    yet (AWS, GCP, …) or callbacks.
    """
    if proxy_config is None:
        return None
    unknown = sorted(set(proxy_config) - _PROXY_FIELDS)
    if unknown:
        raise ApiError(
            ErrorType.BAD_REQUEST,
            f"proxy_config has unknown field(s) {', '.join(unknown)}; use access_control "
            "(allow_list, deny_list) and rules",
        )
    rules = parse_rules(proxy_config.get("rules"))
    if proxy_config.get("callbacks"):
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            "proxy_config.callbacks are not supported by this hutch server yet; leave them out",
        )
    access_control = proxy_config.get("access_control")
    if isinstance(access_control, dict) and HEADER_RULES in access_control:
        raise ApiError(
            ErrorType.BAD_REQUEST,
            f"access_control has unknown field(s) {HEADER_RULES}; use allow_list and deny_list",
        )
    try:
        policy = EgressPolicy.parse(access_control)
    except ValueError as exc:
        raise ApiError(ErrorType.BAD_REQUEST, str(exc)) from None
    out = {} if policy.empty else policy.to_json()
    if rules:
        out["rules"] = rules
    return out or None


def default_proxy_config(proxy_config: dict[str, Any] | None, whose: str) -> dict[str, Any] | None:
    """A template's or the server's default ``proxy_config``, checked: ``access_control`` only
    (header rules carry values and name a workspace's secrets: they are given per sandbox).
    None when it restricts nothing.

    Raises ApiError: 400 naming what is wrong.
    """
    if proxy_config is None:
        return None
    if proxy_config.get("rules") or proxy_config.get("callbacks"):
        raise ApiError(
            ErrorType.BAD_REQUEST,
            f"{whose} proxy_config takes access_control only; give header rules and callbacks "
            "on each sandbox",
        )
    access_control = proxy_access_control(proxy_config)
    return {"access_control": access_control} if access_control else None


class SandboxCreate(_Body):
    """Template era (§2.2), 0.7.33 (§8) and newest (§9.1) fields alike.

    With neither ``template_name`` nor a snapshot, the server's default image is used (§9.1).
    Fields of features hutch does not have are accepted here and refused by
    :meth:`unsupported` with a message naming the feature (501), not as unknown fields.
    """

    template_name: StrictStr | None = None
    name: StrictStr | None = None
    wait_for_ready: StrictBool = True
    timeout: Annotated[StrictInt, Field(ge=0, le=3600)] = 30
    ttl_seconds: Seconds | None = None
    idle_ttl_seconds: Seconds | None = None
    delete_after_stop_seconds: Seconds | None = None
    vcpus: Positive | None = None
    mem_bytes: Positive | None = None
    #: The sandbox's disk limit, as a template's ``storage``.
    fs_capacity_bytes: Annotated[StrictInt, Field(ge=1, le=MAX_STORAGE_BYTES)] | None = None
    persistent: StrictBool | None = None
    preserve_memory_on_stop: StrictBool | None = None
    restore_memory: StrictBool | None = None
    snapshot_id: StrictStr | None = None
    snapshot: StrictStr | None = None
    snapshot_name: StrictStr | None = None
    labels: Annotated[dict[StrictStr, StrictStr], Field(max_length=64)] | None = None
    tag_value_ids: list[StrictStr] | None = None
    mount_config: dict[str, Any] | None = None
    proxy_config: dict[str, Any] | None = None
    run_config: dict[str, Any] | None = None
    access_delegation: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None or v == "" else check_name(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            if not key or len(key) > 63 or len(value) > 256:
                raise ValueError(
                    f"label {key[:70]!r}: keys are 1-63 characters, values at most 256"
                )
        return v

    @field_validator("vcpus")
    @classmethod
    def _vcpus(cls, v: int | None) -> int | None:
        if v is not None:
            try:
                parse_cpu(str(v))
            except QuantityError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("mem_bytes")
    @classmethod
    def _mem_bytes(cls, v: int | None) -> int | None:
        if v is not None:
            try:
                parse_memory(str(v), field="mem_bytes")
            except QuantityError as exc:
                raise ValueError(str(exc)) from None
        return v

    def unsupported(self) -> str | None:
        """Why hutch cannot honour this request (a missing feature), or None."""
        if self.preserve_memory_on_stop or self.restore_memory:
            return (
                "Memory snapshots (preserve_memory_on_stop, restore_memory) are not supported by "
                "this hutch server yet; a start always boots afresh"
            )
        return _unsupported(
            self,
            {
                "tag_value_ids": "Governed tags",
                "mount_config": "Mounts",
                "access_delegation": "Access delegation",
            },
        )


class SandboxUpdate(_Body):
    name: StrictStr | None = None
    ttl_seconds: Seconds | None = None
    idle_ttl_seconds: Seconds | None = None
    delete_after_stop_seconds: Seconds | None = None
    proxy_config: dict[str, Any] | None = None
    run_config: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)

    def unsupported(self) -> str | None:
        """Why hutch cannot honour this update (a missing feature), or None."""
        return None


def iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def template_json(t: Template) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": t.cpu, "memory": t.memory}
    if t.storage is not None:
        resources["storage"] = t.storage
    return {
        "id": t.id,
        "name": t.name,
        "image": t.image,
        "resources": resources,
        "volume_mounts": [],
        "network": t.network,
        **({"proxy_config": json.loads(t.proxy_config)} if t.proxy_config else {}),
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }


def sandbox_json(s: Sandbox, dataplane_base: str, life: Lifetime) -> dict[str, Any]:
    """A sandbox as every SDK generation reads it (a superset of §7, §8 and §9.1);
    ``life`` gives ``expires_at`` (see :mod:`hutch.server._lifetimes`)."""
    rc = effective_run_config(s.run_config)
    return {
        "id": s.id,
        "name": s.name,
        "template_name": s.template_name,
        "image": s.image,
        "status": s.status,
        "status_message": s.status_message,
        "dataplane_url": f"{dataplane_base}/{s.id}",
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
        "ttl_seconds": s.ttl_seconds,
        "idle_ttl_seconds": s.idle_ttl_seconds,
        "delete_after_stop_seconds": s.delete_after_stop_seconds,
        "stopped_at": iso(s.stopped_at),
        "expires_at": iso(expires_at(life)),
        "snapshot_id": s.snapshot_id,
        "vcpus": s.cpu_millis // 1000 if s.cpu_millis and s.cpu_millis % 1000 == 0 else None,
        "mem_bytes": s.memory_bytes,
        "fs_capacity_bytes": s.fs_capacity_bytes,
        "run_config": rc.to_json() if rc is not None else None,
        "labels": json.loads(s.labels) if s.labels else {},
        "persistent": s.persistent,
        "preserve_memory_on_stop": False,
        # What the client set, opaque values blanked (never a secret value).
        "proxy_config": json.loads(s.proxy_config) if s.proxy_config else None,
    }
