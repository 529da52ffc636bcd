"""Runtime backends are chosen by name and built from their own config (no server imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.runtime._backend import RuntimeConfig, load_runtime, runtime_config
from hutch.runtime._interface import Runtime
from hutch.runtime.runc._config import RuncConfig
from hutch.runtime.runc._runtime import DEFAULT_STORAGE_POOL


def test_the_default_backend_is_runc_with_its_defaults() -> None:
    """With no name, the runc backend's config, bounded by its storage pool."""
    config = runtime_config()
    assert isinstance(config, RuncConfig) and isinstance(config, RuntimeConfig)
    assert (config.name, config.max_storage_bytes) == ("runc", DEFAULT_STORAGE_POOL)


def test_an_unknown_backend_names_the_known_ones() -> None:
    """A name no backend has is refused with the names that exist."""
    with pytest.raises(ValueError, match=r"unknown runtime 'k8s': use one of runc"):
        runtime_config("k8s")


@dataclass(frozen=True)
class _Broken:
    name: str = "broken"
    max_storage_bytes: int | None = None

    def build(self, data_dir: Path, *, default_storage_bytes: int) -> Runtime:
        return object()  # type: ignore[return-value]


def test_a_backend_must_build_a_runtime(tmp_path: Path) -> None:
    """load_runtime refuses what is not a Runtime, naming the backend."""
    with pytest.raises(TypeError, match="the broken backend built object, not a Runtime"):
        load_runtime(_Broken(), tmp_path, default_storage_bytes=1)
