"""The runc backend's settings (``hutch serve --storage-pool-size``, ``--egress-*``, ``--dns``,
``--allow-host-port``) and how to build a :class:`~hutch.runtime.runc.RuncRuntime` from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hutch.runtime.runc._network import EgressConfig
from hutch.runtime.runc._runtime import DEFAULT_STORAGE_POOL, RuncRuntime


@dataclass(frozen=True)
class RuncConfig:
    """One runc container per sandbox, writable layers in a btrfs pool, egress on a bridge."""

    name: str = "runc"
    #: Size of the (sparse) btrfs image holding every sandbox's writable layer.
    storage_pool_bytes: int = DEFAULT_STORAGE_POOL
    #: How ``egress`` sandboxes are networked: bridge, subnet, DNS, allowed host ports.
    egress: EgressConfig = field(default_factory=EgressConfig)

    @property
    def max_storage_bytes(self) -> int:
        """No sandbox can be given more than the whole pool."""
        return self.storage_pool_bytes

    def build(self, data_dir: Path, *, default_storage_bytes: int) -> RuncRuntime:
        return RuncRuntime(
            data_dir,
            storage_pool_bytes=self.storage_pool_bytes,
            storage_limit_bytes=default_storage_bytes,
            network=self.egress,
        )
