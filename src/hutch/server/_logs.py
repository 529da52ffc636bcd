"""The server's log: one line per HTTP request and per sandbox lifecycle transition, as JSON
objects (``hutch serve --log-format json``, the default) or as text.

Every record goes through one handler on stderr with one formatter: hutch's own loggers,
uvicorn's error log, and libraries (asyncio). uvicorn's access log is off; the request line
written by :mod:`hutch.server._observe` replaces it, with the route template, the request id
and the workspace.

A record's structured fields travel in ``extra={"fields": {...}}``; the request being served is
a context variable (:func:`current_request`), so any line logged while serving it (a lifecycle
transition, a traceback) carries its ``request_id``, and so do the tasks it starts (a sandbox's
provisioning runs in a task created by its create request).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")

#: Logger of the per-request lines.
REQUESTS = logging.getLogger("hutch.request")
#: Logger of sandbox lifecycle transitions.
LIFECYCLE = logging.getLogger("hutch.lifecycle")

#: A client's ``X-Request-Id`` is kept when it is this (anything else could forge log lines or
#: carry a secret into them): 1–128 characters of letters, digits and ``._:-``.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(supplied: str | None) -> str:
    """The id of a request: the client's ``X-Request-Id`` when well-formed, else a new one."""
    if supplied is not None and REQUEST_ID.fullmatch(supplied):
        return supplied
    return secrets.token_hex(16)


@dataclass
class RequestInfo:
    """What the log line and the metrics of one request need to know, filled in as it is served."""

    request_id: str
    #: The authenticated caller's workspace (set by authentication).
    workspace_id: str | None = None
    #: The sandbox the request acts on, when known.
    sandbox_id: str | None = None
    #: ``detail.error`` of the error envelope answered, if any.
    error: str | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("hutch_request", default=None)
#: Why the lifecycle transitions made in this context happen (the reaper sets it).
_reason: ContextVar[str | None] = ContextVar("hutch_transition_reason", default=None)


def current_request() -> RequestInfo | None:
    """The request being served in this context, if any."""
    return _current.get()


@contextmanager
def _bound(var: ContextVar[T], value: T) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def serving(info: RequestInfo) -> AbstractContextManager[None]:
    """``info`` is the request being served inside."""
    return _bound(_current, info)


def note_workspace(workspace_id: str) -> None:
    info = _current.get()
    if info is not None:
        info.workspace_id = workspace_id


def note_sandbox(sandbox_id: str) -> None:
    info = _current.get()
    if info is not None and info.sandbox_id is None:
        info.sandbox_id = sandbox_id


def because(reason: str) -> AbstractContextManager[None]:
    """Transitions made inside happen for ``reason`` (e.g. ``ttl_seconds``), not a request."""
    return _bound(_reason, reason)


def transition(
    sandbox_id: str,
    workspace_id: str,
    old: str | None,
    new: str,
    reason: str,
    seconds: float | None = None,
) -> None:
    """Log a sandbox's change of status (``old`` None: it was just created; ``new`` ``deleted``:
    it is gone). ``reason`` is overridden by :func:`because`; ``seconds`` is how long the change
    took, when that means something (provisioning, a stop, a start, a delete)."""
    note_sandbox(sandbox_id)
    fields: dict[str, Any] = {
        "event": "sandbox.transition",
        "sandbox_id": sandbox_id,
        "workspace_id": workspace_id,
        "from": old,
        "to": new,
        "reason": _reason.get() or reason,
    }
    if seconds is not None:
        fields["duration_ms"] = round(seconds * 1000, 1)
    LIFECYCLE.info("sandbox %s: %s -> %s", sandbox_id, old, new, extra={"fields": fields})


# -- formatting ----------------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
    info = _current.get()
    if info is not None:
        fields.setdefault("request_id", info.request_id)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the record's
    structured fields, and ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a path, an enum) must not lose the line.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <message> key=value ...``: for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        fields.pop("event", None)
        if not fields:
            return text
        head, sep, tail = text.partition("\n")  # fields on the first line, before a traceback
        pairs = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{head} {pairs}{sep}{tail}"


def log_config(fmt: LogFormat, level: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for ``uvicorn.Config(log_config=...)``: every
    logger to stderr through one formatter, uvicorn's access log off."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        # hutch's module-level loggers exist already; they must keep working.
        "disable_existing_loggers": False,
        "formatters": {"hutch": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "hutch",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # Through the root's handler, once: no handlers of their own.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            # hutch.request replaces it.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def configure(fmt: LogFormat, level: str) -> None:
    """Apply :func:`log_config` now (for what is logged before uvicorn starts), and route
    Python warnings through it too, so stderr holds formatted lines only."""
    import logging.config

    logging.config.dictConfig(log_config(fmt, level))
    logging.captureWarnings(True)
