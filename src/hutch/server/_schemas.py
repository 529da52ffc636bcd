"""Request bodies of the control plane (unknown fields are refused) and response shapes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

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

from hutch.runtime._interface import NETWORK_MODES
from hutch.runtime._resources import QuantityError, parse_cpu, parse_memory
from hutch.runtime.images import Credentials, ImageError, normalize_reference
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
            try:
                parse_memory(v, field="storage", check_host=False)
            except QuantityError as exc:
                raise ValueError(str(exc)) from None
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


class SandboxCreate(_Body):
    template_name: StrictStr
    name: StrictStr | None = None
    wait_for_ready: StrictBool = True
    timeout: Annotated[StrictInt, Field(ge=0, le=3600)] = 30
    ttl_seconds: Seconds | None = None
    idle_ttl_seconds: Seconds | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None or v == "" else check_name(v)


class SandboxUpdate(_Body):
    name: StrictStr | None = None
    ttl_seconds: Seconds | None = None
    idle_ttl_seconds: Seconds | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)


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
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }


def expires_at(s: Sandbox) -> datetime | None:
    deadlines = []
    if s.ttl_seconds:
        deadlines.append(s.created_at + timedelta(seconds=s.ttl_seconds))
    if s.idle_ttl_seconds:
        deadlines.append(s.last_active_at + timedelta(seconds=s.idle_ttl_seconds))
    return min(deadlines) if deadlines else None


def sandbox_json(s: Sandbox, dataplane_base: str) -> dict[str, Any]:
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
        "expires_at": iso(expires_at(s)),
    }
