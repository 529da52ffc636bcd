"""The exec protocol of ``/execute/ws`` as data (spec §4): messages, their JSON codec, offsets.

No I/O: the server's WebSocket endpoint and the SDK's command handles feed raw frames in and get
typed messages out (and the reverse). Both sides share these definitions, so what the SDK sends
is by construction what the server accepts.

Parsing is strict about what a field holds and lenient about what a message carries: a wrong type
or an out-of-range value raises :class:`ExecProtocolError` naming the field, while unknown fields
are ignored (forward compatibility), and unknown *server* message types parse to ``None``
(spec §4.3: clients skip them, so servers may add keep-alive or progress messages).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

# Integers travel as JSON numbers; anything outside int64 is rejected so that neither side has to
# think about overflow (timers, file offsets).
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
# Terminal sizes are unsigned shorts in TIOCSWINSZ.
_WINSIZE_MAX = 65535
# Command ids: the server's uuid hex, or a client's own (0.15.1 sends 32-hex uuid7).
_COMMAND_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Stream: TypeAlias = Literal["stdout", "stderr"]


class ExecProtocolError(ValueError):
    """A message that breaks the exec protocol; the text says which field and why."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ExecProtocolError(message)


def _check_no_nul(value: str, what: str) -> None:
    _check("\x00" not in value, f"{what} must not contain NUL characters")


def _check_int(value: int, what: str, *, minimum: int = _INT_MIN, maximum: int = _INT_MAX) -> None:
    _check(value >= minimum, f"{what} must be >= {minimum}, got {value}")
    _check(value <= maximum, f"{what} must be <= {maximum}, got {value}")


def _check_command_id(value: str, what: str = "command_id") -> None:
    _check(
        _COMMAND_ID.fullmatch(value) is not None,
        f"{what} must be 1-128 characters of letters, digits and . _ : -, got {value!r}",
    )


# -- Sizes the kernel allows -------------------------------------------------------------------

#: Longest single argument or ``NAME=value`` environment string, in bytes of UTF-8: Linux's
#: ``MAX_ARG_STRLEN`` (32 pages of 4 KiB) less the terminating NUL. A command travels as one
#: argument (``<shell> -c <command>``), so this bounds a command.
MAX_ARG_BYTES = 32 * 4096 - 1
#: Budget for a command's arguments and environment together, counted as execve(2) counts them
#: (each string with its NUL, plus one 8-byte pointer). The kernel allows a quarter of the stack
#: limit (2 MiB with the usual 8 MiB); half of that leaves the command room to add its own.
MAX_EXEC_BYTES = 1 << 20
#: Longest shell or working directory, in bytes (``PATH_MAX`` less the NUL).
MAX_PATH_BYTES = 4095


class ExecTooLarge(ExecProtocolError):
    """A command, its environment or a path is larger than the kernel lets a process start with."""


def check_exec_size(
    command: str, env: Mapping[str, str], *, shell: str = "", cwd: str = ""
) -> None:
    """Refuse what execve(2) or chdir(2) would refuse for its size (``E2BIG``, ``ENAMETOOLONG``)
    before anything is started, with a message that says the limit.

    Every transport (``/execute``, ``/execute/ws``, the SSE start) passes here with the command's
    final environment (its run configuration's layers included).

    Raises:
        ExecTooLarge: The first limit exceeded.
    """
    for what, path in (("shell", shell), ("cwd", cwd)):
        size = len(path.encode())
        if size > MAX_PATH_BYTES:
            raise ExecTooLarge(f"{what} is {size} bytes; a path may be at most {MAX_PATH_BYTES}")
    size = len(command.encode())
    if size > MAX_ARG_BYTES:
        raise ExecTooLarge(
            f"command is {size} bytes; a command may be at most {MAX_ARG_BYTES} bytes (the "
            "kernel's limit on one argument): write a long script to a file and run the file"
        )
    total = size + len(shell.encode()) + len(b"-c") + 3 * 9
    for key, value in env.items():
        entry = len(key.encode()) + 1 + len(value.encode())
        if entry > MAX_ARG_BYTES:
            raise ExecTooLarge(
                f"environment variable {key[:64]!r} is {entry} bytes; one may be at most "
                f"{MAX_ARG_BYTES} bytes (name=value): pass large data in a file instead"
            )
        total += entry + 9
    if total > MAX_EXEC_BYTES:
        raise ExecTooLarge(
            f"command and environment together are {total} bytes; they may be at most "
            f"{MAX_EXEC_BYTES} bytes ({len(env)} environment variables): pass large data in a "
            "file instead"
        )


# -- Run configuration ---------------------------------------------------------------------------

#: ``name``, ``uid``, ``name:group`` or ``uid:gid`` (as ``docker run -u``).
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31})?")


@dataclass(frozen=True)
class RunConfig:
    """User, working directory and environment of commands (the 0.13+ ``run_config``).

    Layers stack as ``docker run -u/-w/-e`` over an image: the image's own ``USER``/``WORKDIR``/
    ``ENV``, then a snapshot's, a sandbox's, one command's. ``user`` and ``work_dir`` replace the
    layer below; ``env_vars`` merge into it key by key. ``None`` leaves the layer below as is.
    """

    user: str | None = None
    work_dir: str | None = None
    env_vars: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.user is not None:
            _check(
                _USER.fullmatch(self.user) is not None,
                f"run_config.user must be a name, uid, name:group or uid:gid, got {self.user!r}",
            )
        if self.work_dir is not None:
            _check_no_nul(self.work_dir, "run_config.work_dir")
            _check(
                self.work_dir.startswith("/"),
                f"run_config.work_dir must be an absolute path, got {self.work_dir!r}",
            )
        for key, value in (self.env_vars or {}).items():
            _check(
                bool(key) and "=" not in key and "\x00" not in key,
                f"run_config.env_vars name {key!r} must be non-empty, without '=' or NUL",
            )
            _check_no_nul(value, f"run_config.env_vars value of {key!r}")

    def over(self, below: RunConfig | None) -> RunConfig:
        """This layer applied over ``below``."""
        if below is None:
            return self
        env = {**(below.env_vars or {}), **(self.env_vars or {})}
        return RunConfig(
            user=self.user if self.user is not None else below.user,
            work_dir=self.work_dir if self.work_dir is not None else below.work_dir,
            env_vars=env or None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user is not None:
            out["user"] = self.user
        if self.work_dir is not None:
            out["work_dir"] = self.work_dir
        if self.env_vars is not None:
            out["env_vars"] = dict(self.env_vars)
        return out

    @classmethod
    def from_json(cls, value: Any, what: str = "run_config") -> RunConfig | None:
        """Parse a ``run_config`` object (None or ``{}``: no layer).

        Raises:
            ExecProtocolError: Not an object, an unknown key, or a bad value.
        """
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ExecProtocolError(f"{what} must be an object")
        unknown = set(value) - {"user", "work_dir", "env_vars"}
        if unknown:
            raise ExecProtocolError(
                f"{what}: unknown field {sorted(unknown)[0]!r}; it takes user, work_dir, env_vars"
            )
        for key in ("user", "work_dir"):
            if value.get(key) is not None and not isinstance(value[key], str):
                raise ExecProtocolError(f"{what}.{key} must be a string")
        env = value.get("env_vars")
        if env is not None and (
            not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values())
        ):
            raise ExecProtocolError(f"{what}.env_vars must be an object of string values")
        if not any(value.get(k) is not None for k in ("user", "work_dir", "env_vars")):
            return None
        try:
            return cls(user=value.get("user"), work_dir=value.get("work_dir"), env_vars=env)
        except ExecProtocolError as exc:
            raise ExecProtocolError(str(exc).replace("run_config", what, 1)) from None


# -- Client → server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Execute:
    """First message of a new command (spec §4.2).

    ``timeout_seconds`` 0 means no deadline; ``idle_timeout_seconds`` and ``ttl_seconds`` -1 mean
    never. ``command_id`` (client-chosen id, get-or-create on the server), ``close_stdin`` and the
    terminal size ``cols``/``rows`` are extensions that template-era clients never send. An empty
    ``env`` or ``cwd`` is the same as none (neither is sent).
    """

    command: str
    timeout_seconds: int = 60
    shell: str = "/bin/bash"
    idle_timeout_seconds: int = 300
    kill_on_disconnect: bool = False
    ttl_seconds: int = 600
    env: dict[str, str] | None = None
    cwd: str | None = None
    pty: bool = False
    command_id: str | None = None
    close_stdin: bool = False
    cols: int | None = None
    rows: int | None = None
    #: The 0.13+ per-command layer over the sandbox's run configuration; with it, ``env`` and
    #: ``cwd`` are not sent (the SDK refuses both together).
    run_config: RunConfig | None = None

    def __post_init__(self) -> None:
        _check_no_nul(self.command, "command")
        _check(bool(self.shell), "shell must not be empty")
        _check_no_nul(self.shell, "shell")
        _check_int(self.timeout_seconds, "timeout_seconds", minimum=0)
        _check_int(self.idle_timeout_seconds, "idle_timeout_seconds (-1: never)", minimum=-1)
        _check_int(self.ttl_seconds, "ttl_seconds (-1: forever)", minimum=-1)
        if self.env is not None:
            for key, value in self.env.items():
                _check(
                    bool(key) and "=" not in key and "\x00" not in key,
                    f"env name {key!r} must be non-empty, without '=' or NUL",
                )
                _check_no_nul(value, f"env value of {key!r}")
        if self.cwd is not None:
            _check_no_nul(self.cwd, "cwd")
        if self.command_id is not None:
            _check_command_id(self.command_id)
        for name, size in (("cols", self.cols), ("rows", self.rows)):
            if size is not None:
                _check_int(size, name, minimum=1, maximum=_WINSIZE_MAX)
        # Normalise "empty" to "absent" (neither is sent), and keep a private copy of env.
        object.__setattr__(self, "env", dict(self.env) if self.env else None)
        object.__setattr__(self, "cwd", self.cwd or None)


@dataclass(frozen=True)
class Reconnect:
    """First message that re-attaches to a command, resuming at byte offsets (spec §4.2, §4.7)."""

    command_id: str
    stdout_offset: int = 0
    stderr_offset: int = 0

    def __post_init__(self) -> None:
        _check_command_id(self.command_id)
        _check_int(self.stdout_offset, "stdout_offset", minimum=0)
        _check_int(self.stderr_offset, "stderr_offset", minimum=0)


@dataclass(frozen=True)
class Input:
    """Text for the command's stdin (or its PTY), written as UTF-8 (spec §4.4)."""

    data: str


@dataclass(frozen=True)
class Kill:
    """SIGKILL the command's whole process group (spec §4.4)."""


@dataclass(frozen=True)
class CloseStdin:
    """Close the command's stdin: it reads EOF (spec §9.1)."""


@dataclass(frozen=True)
class Resize:
    """Set the PTY's size (a hutch extension; other clients never send it)."""

    rows: int
    cols: int

    def __post_init__(self) -> None:
        _check_int(self.rows, "rows", minimum=1, maximum=_WINSIZE_MAX)
        _check_int(self.cols, "cols", minimum=1, maximum=_WINSIZE_MAX)


ClientMessage: TypeAlias = Execute | Reconnect | Input | Kill | CloseStdin | Resize

# -- Server → client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The command runs (first message of an execute; an attach acknowledgement on reconnect)."""

    command_id: str
    pid: int | None = None

    def __post_init__(self) -> None:
        _check_command_id(self.command_id)


@dataclass(frozen=True)
class Output:
    """A piece of one output stream.

    ``offset`` is the byte position of ``data``'s first byte within its stream (UTF-8), or
    ``None`` if the server did not say (the chunk then continues where the last one ended).
    """

    stream: Stream
    data: str
    offset: int | None = None

    def __post_init__(self) -> None:
        _check(
            self.stream in ("stdout", "stderr"),
            f"stream must be stdout or stderr, got {self.stream!r}",
        )
        if self.offset is not None:
            _check_int(self.offset, f"{self.stream} offset", minimum=0)


@dataclass(frozen=True)
class Exit:
    """The command ended with ``exit_code``; all its output has been sent (terminal)."""

    exit_code: int


@dataclass(frozen=True)
class Error:
    """The command failed or could not be found (terminal, spec §4.5)."""

    error_type: str = "CommandError"
    error: str = "Unknown error"


ServerMessage: TypeAlias = Started | Output | Exit | Error

# -- Decoding ----------------------------------------------------------------------------------

_T = TypeVar("_T")


def _load_object(raw: str | bytes | bytearray) -> dict[str, Any]:
    """The JSON object in a frame (text or binary)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise ExecProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ExecProtocolError(f"message must be a JSON object, got {type(value).__name__}")
    return value


def _type_of(obj: Mapping[str, Any]) -> str:
    if "type" not in obj:
        raise ExecProtocolError("message has no 'type' field")
    kind = obj["type"]
    if not isinstance(kind, str):
        raise ExecProtocolError(f"'type' must be a string, got {type(kind).__name__}")
    return kind


class _Fields:
    """Typed reads of one message's fields; errors name the message type and the field.

    A reader called without a default requires the field; with one, an absent field takes it.
    The ``optional_*`` readers also take JSON ``null`` as absent.
    """

    def __init__(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.kind = kind
        self.obj = obj

    def _wrong(self, name: str, expected: str) -> ExecProtocolError:
        value = self.obj[name]
        shown = "null" if value is None else type(value).__name__
        return ExecProtocolError(f"{self.kind}: {name!r} must be {expected}, got {shown}")

    def _present(self, name: str, required: bool) -> bool:
        if name in self.obj:
            return True
        if required:
            raise ExecProtocolError(f"{self.kind}: missing required field {name!r}")
        return False

    def text(self, name: str, default: str | None = None) -> str:
        if not self._present(name, default is None):
            assert default is not None
            return default
        value = self.obj[name]
        if not isinstance(value, str):
            raise self._wrong(name, "a string")
        return value

    def integer(self, name: str, default: int | None = None) -> int:
        if not self._present(name, default is None):
            assert default is not None
            return default
        value = self.obj[name]
        # bool is an int in Python, but not in the protocol.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(name, "an integer")
        _check_int(value, f"{self.kind}: {name!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        if not self._present(name, False):
            return default
        value = self.obj[name]
        if not isinstance(value, bool):
            raise self._wrong(name, "true or false")
        return value

    def optional_str(self, name: str) -> str | None:
        return None if self.obj.get(name) is None else self.text(name)

    def optional_int(self, name: str) -> int | None:
        return None if self.obj.get(name) is None else self.integer(name)

    def optional_env(self, name: str) -> dict[str, str] | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._wrong(name, "an object of string values")
        return value

    def build(self, make: Callable[[], _T]) -> _T:
        """Construct the message, naming its type in validation errors."""
        try:
            return make()
        except ExecProtocolError as exc:
            raise ExecProtocolError(f"{self.kind}: {exc}") from None


def _parse_execute(f: _Fields) -> Execute:
    command = f.text("command")
    timeout_seconds = f.integer("timeout_seconds", 60)
    shell = f.text("shell", "/bin/bash")
    idle_timeout_seconds = f.integer("idle_timeout_seconds", 300)
    kill_on_disconnect = f.flag("kill_on_disconnect", False)
    ttl_seconds = f.integer("ttl_seconds", 600)
    env = f.optional_env("env")
    cwd = f.optional_str("cwd")
    pty = f.flag("pty", False)
    command_id = f.optional_str("command_id")
    close_stdin = f.flag("close_stdin", False)
    cols = f.optional_int("cols")
    rows = f.optional_int("rows")
    run_config = f.build(lambda: RunConfig.from_json(f.obj.get("run_config")))
    return f.build(
        lambda: Execute(
            command=command,
            timeout_seconds=timeout_seconds,
            shell=shell,
            idle_timeout_seconds=idle_timeout_seconds,
            kill_on_disconnect=kill_on_disconnect,
            ttl_seconds=ttl_seconds,
            env=env,
            cwd=cwd,
            pty=pty,
            command_id=command_id,
            close_stdin=close_stdin,
            cols=cols,
            rows=rows,
            run_config=run_config,
        )
    )


def _parse_reconnect(f: _Fields) -> Reconnect:
    command_id = f.text("command_id")
    stdout_offset = f.integer("stdout_offset", 0)
    stderr_offset = f.integer("stderr_offset", 0)
    return f.build(lambda: Reconnect(command_id, stdout_offset, stderr_offset))


def _parse_resize(f: _Fields) -> Resize:
    rows = f.integer("rows")
    cols = f.integer("cols")
    return f.build(lambda: Resize(rows=rows, cols=cols))


_FIRST_TYPES = ("execute", "reconnect")
_LATER_TYPES = ("input", "kill", "close_stdin", "resize")


def parse_client_message(raw: str | bytes | bytearray, *, first: bool) -> ClientMessage:
    """Decode one client frame; ``first`` says whether it opens the session.

    The first message must be ``execute`` or ``reconnect``; later ones ``input``, ``kill``,
    ``close_stdin`` or ``resize``.

    Raises:
        ExecProtocolError: The frame is not a valid message in that position.
    """
    obj = _load_object(raw)
    kind = _type_of(obj)
    allowed = _FIRST_TYPES if first else _LATER_TYPES
    if kind not in allowed:
        where = "as the first message" if first else "after the first message"
        known = "" if kind in _FIRST_TYPES + _LATER_TYPES else "unknown "
        raise ExecProtocolError(
            f"{known}message type {kind!r} is not allowed {where}; "
            f"expected one of: {', '.join(allowed)}"
        )
    f = _Fields(kind, obj)
    if kind == "execute":
        return _parse_execute(f)
    if kind == "reconnect":
        return _parse_reconnect(f)
    if kind == "input":
        return Input(data=f.text("data"))
    if kind == "kill":
        return Kill()
    if kind == "close_stdin":
        return CloseStdin()
    return _parse_resize(f)


def encode_client_message(msg: ClientMessage) -> str:
    """Encode a client message as one text frame.

    ``execute`` keeps the key order of spec §4.2 and carries optional fields only when set, so a
    plain command is byte-for-byte what the langsmith SDK sends (Python's default JSON layout).
    """
    obj: dict[str, Any]
    if isinstance(msg, Execute):
        obj = {
            "type": "execute",
            "command": msg.command,
            "timeout_seconds": msg.timeout_seconds,
            "shell": msg.shell,
            "idle_timeout_seconds": msg.idle_timeout_seconds,
            "kill_on_disconnect": msg.kill_on_disconnect,
            "ttl_seconds": msg.ttl_seconds,
        }
        if msg.env:
            obj["env"] = msg.env
        if msg.cwd:
            obj["cwd"] = msg.cwd
        if msg.pty:
            obj["pty"] = True
        if msg.command_id is not None:
            obj["command_id"] = msg.command_id
        if msg.close_stdin:
            obj["close_stdin"] = True
        if msg.cols is not None:
            obj["cols"] = msg.cols
        if msg.rows is not None:
            obj["rows"] = msg.rows
        if msg.run_config is not None:
            obj["run_config"] = msg.run_config.to_json()
    elif isinstance(msg, Reconnect):
        obj = {
            "type": "reconnect",
            "command_id": msg.command_id,
            "stdout_offset": msg.stdout_offset,
            "stderr_offset": msg.stderr_offset,
        }
    elif isinstance(msg, Input):
        obj = {"type": "input", "data": msg.data}
    elif isinstance(msg, Kill):
        obj = {"type": "kill"}
    elif isinstance(msg, CloseStdin):
        obj = {"type": "close_stdin"}
    else:
        obj = {"type": "resize", "rows": msg.rows, "cols": msg.cols}
    return json.dumps(obj)


def parse_server_message(raw: str | bytes | bytearray) -> ServerMessage | None:
    """Decode one server frame; ``None`` for a message type this version does not know.

    Missing (or null) ``pid``, ``offset``, ``error_type`` and ``error`` take the defaults of
    spec §4.3; ``command_id``, ``data`` and ``exit_code`` are required.

    Raises:
        ExecProtocolError: The frame is not JSON, not an object, or a known type is malformed.
    """
    obj = _load_object(raw)
    kind = _type_of(obj)
    f = _Fields(kind, obj)
    if kind == "started":
        command_id = f.text("command_id")
        pid = f.optional_int("pid")
        return f.build(lambda: Started(command_id, pid))
    if kind in ("stdout", "stderr"):
        stream: Stream = "stdout" if kind == "stdout" else "stderr"
        data = f.text("data")
        offset = f.optional_int("offset")
        return f.build(lambda: Output(stream, data, offset))
    if kind == "exit":
        return Exit(exit_code=f.integer("exit_code"))
    if kind == "error":
        error_type = f.optional_str("error_type")
        error = f.optional_str("error")
        return Error(
            error_type="CommandError" if error_type is None else error_type,
            error="Unknown error" if error is None else error,
        )
    return None


def encode_server_message(msg: ServerMessage) -> str:
    """Encode a server message as one text frame (``offset`` omitted only when unknown)."""
    obj: dict[str, Any]
    if isinstance(msg, Started):
        obj = {"type": "started", "command_id": msg.command_id, "pid": msg.pid}
    elif isinstance(msg, Output):
        obj = {"type": msg.stream, "data": msg.data}
        if msg.offset is not None:
            obj["offset"] = msg.offset
    elif isinstance(msg, Exit):
        obj = {"type": "exit", "exit_code": msg.exit_code}
    else:
        obj = {"type": "error", "error_type": msg.error_type, "error": msg.error}
    return json.dumps(obj)


# -- Client-side cursor ------------------------------------------------------------------------


@dataclass
class OffsetTracker:
    """Where each output stream continues, in bytes (spec §4.7): the offsets to resume from.

    After a chunk, its stream's offset is ``chunk.offset + len(chunk.data.encode("utf-8"))``.
    :meth:`accept` also drops output the client already has (a server must never resend it,
    but a duplicate would corrupt the concatenated result), and accepts gaps (output the server no
    longer retained is simply missing).
    """

    stdout: int = 0
    stderr: int = 0

    def __post_init__(self) -> None:
        _check_int(self.stdout, "stdout offset", minimum=0)
        _check_int(self.stderr, "stderr offset", minimum=0)

    def offset(self, stream: Stream) -> int:
        """The next byte expected on ``stream``."""
        return self.stdout if stream == "stdout" else self.stderr

    def accept(self, stream: Stream, data: str, offset: int | None) -> tuple[str, int] | None:
        """Record a chunk; returns ``(new text, its offset)``, or ``None`` if nothing is new.

        ``offset=None`` (the server sent none) means the chunk continues at the current offset.
        """
        cursor = self.offset(stream)
        start = cursor if offset is None else offset
        encoded = data.encode("utf-8")
        end = start + len(encoded)
        if end <= cursor:
            return None
        if start < cursor:
            # Keep only the unseen tail. Offsets fall on character boundaries when the server
            # follows spec §4.3; "replace" only guards against one that does not.
            data = encoded[cursor - start :].decode("utf-8", errors="replace")
            start = cursor
        if stream == "stdout":
            self.stdout = end
        else:
            self.stderr = end
        return data, start
