"""What the CLI shows on stderr while the server provisions a sandbox: the server's status
message (``Pulling REF: 12.0 MB received``, ``Unpacking REF: layer 2 of 5`` ...), with a bar
once the message counts layers. Nothing at all when stderr is not a terminal."""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any

from hutch._cli_sandbox._common import stderr_is_tty

_LAYERS = re.compile(r"\blayer (\d+) of (\d+)\b")


def layer_progress(message: str | None) -> tuple[int, int] | None:
    """``(i, n)`` of a status message saying ``layer i of n`` (the server unpacks layer i now),
    None when it says no such thing or the numbers make no sense."""
    m = _LAYERS.search(message or "")
    if m is None:
        return None
    i, n = int(m.group(1)), int(m.group(2))
    return (i, n) if 1 <= i <= n else None


class StatusDisplay:
    """A live line on stderr: spinner, the latest status message and, while layers are being
    unpacked, a bar of the layers done. A context manager; ``show`` updates it."""

    def __init__(self, first: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        if not stderr_is_tty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,  # the command's own output follows; the display was only meanwhile
        )
        # Without a total rich draws no numbers and a pulsing bar: "busy, extent unknown".
        self._task = self._progress.add_task(first, total=None)

    def __enter__(self) -> StatusDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, message: str) -> None:
        if self._progress is None:
            return
        layers = layer_progress(message)
        if layers is None:
            self._progress.update(self._task, description=message, total=None, completed=0)
        else:
            i, n = layers
            self._progress.update(self._task, description=message, total=n, completed=i - 1)
