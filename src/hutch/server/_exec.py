"""Run a command to completion for the blocking ``/execute`` (spec §3.2, §5)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from hutch.runtime._interface import Process
from hutch.sessions._utf8 import decode

TIMEOUT_EXIT = 124  # what coreutils' timeout(1) reports; spec §10.9
#: After the command exits, how long to keep reading output that background children still write
#: to the inherited pipes before answering.
DRAIN_GRACE = 0.2


@dataclass
class Completed:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False


class _Sink:
    """Collects one stream up to ``limit`` bytes, then keeps reading and discards the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    async def drain(self, reader: asyncio.StreamReader | None) -> None:
        if reader is None:
            return
        while chunk := await reader.read(1 << 16):
            room = self.limit - self.size
            if room > 0:
                self.parts.append(chunk[:room])
                self.size += min(room, len(chunk))
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        # One "?" per invalid byte, as on the streaming path (hutch.sessions._utf8).
        out = decode(b"".join(self.parts))
        if self.dropped:
            out += (
                f"\n[hutch: {self.dropped} more bytes of output were dropped; "
                "the blocking /execute keeps the first bytes only — stream with "
                "wait=False or callbacks to see everything]\n"
            )
        return out


async def run_to_completion(proc: Process, *, timeout: float | None, max_bytes: int) -> Completed:
    """Wait for ``proc`` (killing its whole tree after ``timeout``) and collect its output."""
    out, err = _Sink(max_bytes), _Sink(max_bytes)
    readers = [
        asyncio.create_task(out.drain(proc.stdout)),
        asyncio.create_task(err.drain(proc.stderr)),
    ]
    if proc.stdin is not None:
        # Blocking /execute has no stdin: the command sees EOF at once.
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            proc.stdin.close()
    timed_out = False
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            await proc.kill()
            await proc.wait()
            code = TIMEOUT_EXIT
        # Children left in the background may hold the pipes open; don't wait for them forever.
        _, pending = await asyncio.wait(readers, timeout=DRAIN_GRACE)
        for task in pending:
            task.cancel()
    finally:
        for task in readers:
            if not task.done():
                task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await proc.close()
    return Completed(out.text(), err.text(), code, timed_out)
