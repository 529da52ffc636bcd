"""One hutch server for the whole conformance suite, with ``local/busybox`` as its default image
(the newest SDK creates sandboxes without a template)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HUTCH, Server, remove_all_sandboxes, start_server, stop_server


@pytest.fixture(scope="session")
def compat_server(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mounts, cgroups); CI runs as root")
    data = tmp_path_factory.mktemp("compat") / "data"
    data.mkdir()
    subprocess.run(
        [*HUTCH, "image", "import", "local/busybox", str(busybox_tar), "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    srv = start_server(data, "--default-image", "local/busybox")
    try:
        yield srv
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)
