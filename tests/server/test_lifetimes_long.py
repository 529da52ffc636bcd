"""Sandbox lifetimes at their real scale, across server restarts (about 3.5 minutes).

Both scenarios share one timeline so their waits overlap: a sandbox with ``ttl_seconds=60`` is gone
within 70 s of its creation; one with ``idle_ttl_seconds=60`` survives a command streaming output
for 2 minutes and is gone about 60 s after it stops. The server restarts before the stream (both
deadlines must survive it) and after it (the end of the activity must have been stored).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    TIME_SCALE,
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.root
LIFETIME = 60
#: A sandbox must be gone this long after its deadline at the latest.
LATE = 10 * TIME_SCALE
STREAM_SECONDS = 120


@pytest.fixture
def srv(tmp_path: Path, busybox_tar: Path) -> Iterator[list[Server]]:
    data = data_dir_with_busybox(tmp_path, busybox_tar)
    holder = [start_server(data)]
    try:
        yield holder
    finally:
        stop_server(holder[0])
        remove_all_sandboxes(data)


def exists(server: Server, name: str) -> bool | None:
    """True or False, or None while the server is restarting."""
    try:
        r = httpx.get(f"{server.base}/boxes/{name}", headers={"X-Api-Key": server.key}, timeout=5)
    except httpx.HTTPError:
        return None
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


class Watch:
    """When a sandbox was last seen and when it was first seen gone (monotonic seconds)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_seen: float | None = None
        self.gone: float | None = None

    def poll(self, server: Server) -> None:
        if self.gone is not None:
            return
        now, there = time.monotonic(), exists(server, self.name)
        if there:
            self.last_seen = now
        elif there is False:
            self.gone = now


def restart(srv: list[Server]) -> None:
    stop_server(srv[0])
    srv[0] = start_server(srv[0].data_dir)


@pytest.mark.timeout(480)
def test_ttl_and_idle_ttl_at_scale_across_restarts(srv: list[Server]) -> None:
    """ttl_seconds=60: gone 60-70 s after creation; idle_ttl_seconds=60: kept through 2 minutes
    of streamed output, gone about 60 s after the stream ends; two server restarts between."""
    with srv[0].client() as client:
        client.create_template("bb", "local/busybox", memory="64Mi")
        created = time.monotonic()
        hard = Watch(client.create_sandbox("bb", ttl_seconds=LIFETIME).name)
        idle = Watch(client.create_sandbox("bb", idle_ttl_seconds=LIFETIME).name)
        ids = {s.name: s.id for s in client.list_sandboxes()}

    restart(srv)  # both deadlines come from stored fields
    lines: list[str] = []
    ended: list[float] = []

    with srv[0].client() as client:
        handle = client.get_sandbox(idle.name).run(
            f"i=0; while [ $i -lt {STREAM_SECONDS} ]; do echo $i; i=$((i+1)); sleep 1; done",
            timeout=0,
            wait=False,
        )
        started = time.monotonic()

        def stream() -> None:
            for chunk in handle:
                lines.extend(chunk.data.splitlines())
            ended.append(time.monotonic())

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        while reader.is_alive():
            hard.poll(srv[0])
            idle.poll(srv[0])
            assert idle.gone is None, f"idle sandbox deleted {time.monotonic() - started:.0f}s in"
            time.sleep(0.5)
        reader.join()
        assert handle.result.exit_code == 0

    assert lines == [str(i) for i in range(STREAM_SECONDS)]
    stream_end = ended[0]
    assert stream_end - started >= STREAM_SECONDS - 2
    assert hard.gone is not None and hard.last_seen is not None
    assert hard.last_seen - created >= LIFETIME - 2, "ttl sandbox deleted early"
    assert hard.gone - created <= LIFETIME + LATE, "ttl sandbox deleted late"
    assert ids[hard.name] not in srv[0].runc_ids()

    time.sleep(10)
    restart(srv)  # the end of the activity is in the store, not only in the old process
    while idle.gone is None and time.monotonic() - stream_end < LIFETIME + 3 * LATE:
        idle.poll(srv[0])
        time.sleep(0.5)
    assert idle.gone is not None and idle.last_seen is not None, "idle sandbox never deleted"
    assert idle.last_seen - stream_end >= LIFETIME - 5, "idle sandbox deleted early"
    assert idle.gone - stream_end <= LIFETIME + LATE, "idle sandbox deleted late"
    assert ids[idle.name] not in srv[0].runc_ids()
