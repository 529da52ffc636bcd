"""Choosing a runtime: each backend owns its settings, and the server builds it by name.

The server knows a runtime only by :class:`~hutch.runtime._interface.Runtime` and a backend's
:class:`RuntimeConfig`: the settings that backend takes (``hutch serve`` flags such as the runc
backend's storage pool and egress bridge), and how to build it. Nothing in ``hutch.server``
imports a backend: the CLI makes the config, :func:`load_runtime` builds it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from hutch.runtime._interface import Runtime

#: Backends by name (``hutch serve --runtime``): where each one's config class lives, imported
#: only when chosen.
BACKENDS: dict[str, str] = {"runc": "hutch.runtime.runc._config:RuncConfig"}
DEFAULT_BACKEND = "runc"


@runtime_checkable
class RuntimeConfig(Protocol):
    """A backend's own settings, and how to build its runtime from them."""

    @property
    def name(self) -> str:
        """The backend's name, a key of :data:`BACKENDS`."""
        ...

    @property
    def max_storage_bytes(self) -> int | None:
        """The most disk one sandbox can be given (None: no bound the backend knows)."""
        ...

    def build(self, data_dir: Path, *, default_storage_bytes: int) -> Runtime:
        """The runtime, keeping its state under ``data_dir``; a sandbox whose spec names no
        disk limit gets ``default_storage_bytes``."""
        ...


def runtime_config(name: str = DEFAULT_BACKEND) -> RuntimeConfig:
    """The named backend's config with its defaults. Raises ValueError for an unknown name."""
    try:
        module, _, attr = BACKENDS[name].partition(":")
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown runtime {name!r}: use one of {known}") from None
    config = getattr(importlib.import_module(module), attr)()
    if not isinstance(config, RuntimeConfig):
        raise TypeError(f"{BACKENDS[name]} is not a runtime config")
    return config


def load_runtime(config: RuntimeConfig, data_dir: Path, *, default_storage_bytes: int) -> Runtime:
    """Build the runtime ``config`` describes (its state under ``data_dir``)."""
    runtime = config.build(data_dir, default_storage_bytes=default_storage_bytes)
    if not isinstance(runtime, Runtime):
        raise TypeError(f"the {config.name} backend built {type(runtime).__name__}, not a Runtime")
    return runtime
