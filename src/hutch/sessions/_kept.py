"""Sessions whose command survives a server restart: what is kept with the command, and taking
such commands over (see "Commands across a server restart" in ``docs/architecture.md``).

A runtime that supports it keeps the command's pipes, output and exit status outside the server
(:attr:`hutch.runtime._interface.ExecSpec.keep`); the text kept with it is made here from the
session's id and options, and turned back into a session by a later server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from hutch.runtime._interface import Process, Runtime
from hutch.sessions._manager import Recovered, SessionManager
from hutch.sessions._types import STREAMS, SessionOptions, Stream


def keep_text(command_id: str, options: SessionOptions) -> str:
    """What a later server needs to make the session again (kept with the command)."""
    return json.dumps(
        {
            "command_id": command_id,
            "started": time.time(),
            "timeout": options.timeout,
            "idle_timeout": options.idle_timeout,
            "ttl": options.ttl,
            "kill_on_disconnect": options.kill_on_disconnect,
        }
    )


def recovered(keep: str, process: Process, history: Mapping[str, tuple[int, bytes]]) -> Recovered:
    """The session to make of a kept command; raises ValueError, KeyError or TypeError for a
    text :func:`keep_text` did not make."""
    meta: dict[str, Any] = json.loads(keep)
    timeout = meta["timeout"]
    if timeout is not None:
        # The timeout counts from the command's start, not from the take-over.
        timeout = max(0.0, float(timeout) - (time.time() - float(meta["started"])))
    options = SessionOptions(
        timeout=timeout,
        idle_timeout=meta["idle_timeout"],
        ttl=meta["ttl"],
        kill_on_disconnect=bool(meta["kill_on_disconnect"]),
    )
    streams: dict[Stream, tuple[int, bytes]] = {}
    for name in STREAMS:
        if name in history:
            streams[name] = history[name]
    return Recovered(str(meta["command_id"]), process, options, streams)


async def take_over_commands(sessions: SessionManager, runtime: Runtime, sandbox_id: str) -> None:
    """Take over, once per sandbox and server, the commands an earlier server left in the
    sandbox: their sessions come back under the same ids (see :meth:`SessionManager.recover`).
    """

    async def load(history: int) -> list[Recovered]:
        found = []
        for kept in await runtime.kept_commands(sandbox_id, history):
            try:
                found.append(recovered(kept.keep, kept.process, kept.history))
            except (ValueError, KeyError, TypeError):
                await kept.process.close()  # not a text we made: forget the command
        return found

    await sessions.recover(sandbox_id, load)
