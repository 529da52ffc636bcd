"""One hutch server for the whole conformance suite, with ``local/busybox`` as its default image
(the newest SDK creates sandboxes without a template)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)


@pytest.fixture(scope="session")
def compat_server(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mounts, cgroups); CI runs as root")
    data = data_dir_with_busybox(tmp_path_factory.mktemp("compat"), busybox_tar)
    srv = start_server(data, "--default-image", "local/busybox")
    try:
        yield srv
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)
