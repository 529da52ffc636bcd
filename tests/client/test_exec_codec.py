"""The exec message codec and offset cursor of ``/execute/ws`` (spec §4.2–§4.4, §4.7)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.protocol._exec import (
    ClientMessage,
    CloseStdin,
    Error,
    ExecProtocolError,
    Execute,
    Exit,
    Input,
    Kill,
    OffsetTracker,
    Output,
    Reconnect,
    Resize,
    ServerMessage,
    Started,
    encode_client_message,
    encode_server_message,
    parse_client_message,
    parse_server_message,
)

# -- Encoding ----------------------------------------------------------------------------------


def test_execute_is_byte_for_byte_what_langsmith_sends() -> None:
    """A plain execute has the key order and JSON layout of spec §4.8 A."""
    frame = encode_client_message(Execute("echo hello; echo oops >&2; exit 3"))
    assert frame == (
        '{"type": "execute", "command": "echo hello; echo oops >&2; exit 3", '
        '"timeout_seconds": 60, "shell": "/bin/bash", "idle_timeout_seconds": 300, '
        '"kill_on_disconnect": false, "ttl_seconds": 600}'
    )


def test_execute_optional_fields_follow_in_order_only_when_set() -> None:
    """env, cwd, pty, then the extensions; empty env and cwd are not sent."""
    full = Execute(
        "x",
        env={"A": "1"},
        cwd="/tmp",
        pty=True,
        command_id="c1",
        close_stdin=True,
        cols=80,
        rows=24,
    )
    keys = list(json.loads(encode_client_message(full)))
    assert keys[7:] == ["env", "cwd", "pty", "command_id", "close_stdin", "cols", "rows"]
    bare = Execute("x", env={}, cwd="")
    assert (bare.env, bare.cwd) == (None, None)
    assert "env" not in json.loads(encode_client_message(bare))


def test_other_client_messages() -> None:
    """reconnect, input, kill, close_stdin and resize frames (spec §4.2, §4.4)."""
    assert json.loads(encode_client_message(Reconnect("abc", 12, 0))) == {
        "type": "reconnect",
        "command_id": "abc",
        "stdout_offset": 12,
        "stderr_offset": 0,
    }
    assert encode_client_message(Input("world\n")) == '{"type": "input", "data": "world\\n"}'
    assert encode_client_message(Kill()) == '{"type": "kill"}'
    assert encode_client_message(CloseStdin()) == '{"type": "close_stdin"}'
    assert json.loads(encode_client_message(Resize(rows=40, cols=120))) == {
        "type": "resize",
        "rows": 40,
        "cols": 120,
    }


def test_server_messages_encode_as_in_the_spec() -> None:
    """started, stdout/stderr with offset, exit and error (spec §4.3)."""
    assert json.loads(encode_server_message(Started("94e6", 16065))) == {
        "type": "started",
        "command_id": "94e6",
        "pid": 16065,
    }
    assert json.loads(encode_server_message(Output("stderr", "b\n", 0))) == {
        "type": "stderr",
        "data": "b\n",
        "offset": 0,
    }
    assert json.loads(encode_server_message(Exit(3))) == {"type": "exit", "exit_code": 3}
    assert json.loads(encode_server_message(Error("CommandTimeout", "late"))) == {
        "type": "error",
        "error_type": "CommandTimeout",
        "error": "late",
    }


# -- Parsing client messages -------------------------------------------------------------------


def test_parse_accepts_any_json_layout_and_ignores_unknown_fields() -> None:
    """Compact or escaped JSON, text or binary frames; unknown fields are skipped."""
    raw = '{"type":"execute","command":"\\u00fc","future_field":{"x":1},"env":null}'
    assert parse_client_message(raw, first=True) == Execute("ü")
    assert parse_client_message(raw.encode(), first=True) == Execute("ü")
    assert parse_client_message(b'{"type":"kill","why":"x"}', first=False) == Kill()


def test_parse_defaults_match_the_spec() -> None:
    """Absent fields of execute and reconnect take the defaults of spec §4.2."""
    assert parse_client_message('{"type": "execute", "command": "ls"}', first=True) == Execute(
        "ls", 60, "/bin/bash", 300, False, 600
    )
    assert parse_client_message('{"type": "reconnect", "command_id": "a"}', first=True) == (
        Reconnect("a", 0, 0)
    )


@pytest.mark.parametrize(
    ("raw", "first", "message"),
    [
        ("not json", True, "not valid JSON"),
        ("[1, 2]", True, "must be a JSON object, got list"),
        ('{"command": "ls"}', True, "no 'type' field"),
        ('{"type": 3}', True, "'type' must be a string"),
        ('{"type": "hello"}', True, "unknown message type 'hello'"),
        ('{"type": "kill"}', True, "not allowed as the first message"),
        ('{"type": "execute", "command": "ls"}', False, "not allowed after the first message"),
        ('{"type": "execute"}', True, "missing required field 'command'"),
        ('{"type": "execute", "command": 1}', True, "'command' must be a string, got int"),
        ('{"type": "execute", "command": "a\\u0000b"}', True, "NUL"),
        ('{"type": "execute", "command": "x", "timeout_seconds": -1}', True, "timeout_seconds"),
        ('{"type": "execute", "command": "x", "timeout_seconds": 1.5}', True, "integer"),
        ('{"type": "execute", "command": "x", "timeout_seconds": true}', True, "integer"),
        ('{"type": "execute", "command": "x", "idle_timeout_seconds": -2}', True, ">= -1"),
        ('{"type": "execute", "command": "x", "ttl_seconds": -2}', True, ">= -1"),
        ('{"type": "execute", "command": "x", "ttl_seconds": 1e400}', True, "integer"),
        ('{"type": "execute", "command": "x", "timeout_seconds": 9e99}', True, "integer"),
        ('{"type": "execute", "command": "x", "kill_on_disconnect": 1}', True, "true or false"),
        ('{"type": "execute", "command": "x", "env": {"A": 1}}', True, "string values"),
        ('{"type": "execute", "command": "x", "env": ["A"]}', True, "string values"),
        ('{"type": "execute", "command": "x", "env": {"A=B": "1"}}', True, "env name"),
        ('{"type": "execute", "command": "x", "env": {"": "1"}}', True, "env name"),
        ('{"type": "execute", "command": "x", "shell": ""}', True, "shell"),
        ('{"type": "execute", "command": "x", "cols": 0}', True, "cols"),
        ('{"type": "execute", "command": "x", "command_id": "a/b"}', True, "command_id"),
        ('{"type": "reconnect"}', True, "missing required field 'command_id'"),
        ('{"type": "reconnect", "command_id": "a", "stdout_offset": -1}', True, "stdout_offset"),
        ('{"type": "reconnect", "command_id": "a", "stderr_offset": "0"}', True, "integer"),
        ('{"type": "input"}', False, "missing required field 'data'"),
        ('{"type": "input", "data": null}', False, "'data' must be a string, got null"),
        ('{"type": "resize", "rows": 0, "cols": 80}', False, "resize: rows"),
        ('{"type": "resize", "rows": 24}', False, "missing required field 'cols'"),
        ("[" * 100_000, True, "not valid JSON"),
        (b"\xff\xfe\x00", True, "not valid JSON"),
    ],
)
def test_parse_client_errors_say_what_is_wrong(raw: str | bytes, first: bool, message: str) -> None:
    """Each malformed message raises ExecProtocolError naming the problem."""
    with pytest.raises(ExecProtocolError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_client_message(raw, first=first)


def test_protocol_errors_are_value_errors() -> None:
    """Constructing an invalid message in Python raises a ValueError (the SDK's contract)."""
    with pytest.raises(ValueError, match="stdout_offset"):
        Reconnect("abc", stdout_offset=-5)


# -- Parsing server messages -------------------------------------------------------------------


def test_parse_server_defaults_and_unknown_types() -> None:
    """pid, offset, error_type and error are optional; unknown types parse to None (§4.3)."""
    assert parse_server_message('{"type": "started", "command_id": "c"}') == Started("c", None)
    assert parse_server_message('{"type": "stdout", "data": "x"}') == Output("stdout", "x", None)
    assert parse_server_message('{"type": "error"}') == Error("CommandError", "Unknown error")
    assert parse_server_message('{"type": "error", "error": null}') == Error()
    assert parse_server_message('{"type": "keepalive", "n": 1}') is None
    assert parse_server_message(b'{"type":"exit","exit_code":0}') == Exit(0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"type": "stdout"}', "missing required field 'data'"),
        ('{"type": "stderr", "data": "x", "offset": -1}', "offset"),
        ('{"type": "stdout", "data": 5}', "must be a string"),
        ('{"type": "exit"}', "missing required field 'exit_code'"),
        ('{"type": "exit", "exit_code": "0"}', "integer"),
        ('{"type": "started"}', "missing required field 'command_id'"),
        ('{"type": "started", "command_id": "c", "pid": "1"}', "integer"),
        ('{"type": "error", "error_type": 3}', "must be a string"),
        ("42", "JSON object"),
    ],
)
def test_parse_server_errors(raw: str, message: str) -> None:
    """A known server message with a bad field raises ExecProtocolError."""
    with pytest.raises(ExecProtocolError, match=message):
        parse_server_message(raw)


# -- Offsets -----------------------------------------------------------------------------------


def test_offsets_count_utf8_bytes() -> None:
    """Example B: after "a\\n" and "ü€😀\\n" the next stdout offset is 2 + 10 = 12."""
    tracker = OffsetTracker()
    assert tracker.accept("stdout", "a\n", 0) == ("a\n", 0)
    assert tracker.accept("stdout", "ü€😀\n", 2) == ("ü€😀\n", 2)
    assert (tracker.stdout, tracker.stderr) == (12, 0)
    assert tracker.accept("stderr", "b\n", 0) == ("b\n", 0)
    assert tracker.offset("stderr") == 2


def test_tracker_drops_resent_bytes_and_accepts_gaps() -> None:
    """Duplicates are dropped, an overlap is trimmed, a gap and a missing offset are accepted."""
    tracker = OffsetTracker(stdout=6)
    assert tracker.accept("stdout", "hello\n", 0) is None
    assert tracker.accept("stdout", "lo\nworld\n", 3) == ("world\n", 6)
    assert tracker.stdout == 12
    assert tracker.accept("stdout", "later", 100) == ("later", 100)
    assert tracker.accept("stdout", "!", None) == ("!", 105)
    assert tracker.stdout == 106
    assert tracker.accept("stdout", "", 106) is None


# -- Properties --------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
_int64 = st.integers(min_value=0, max_value=2**63 - 1)
_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
_env_names = st.text(
    alphabet=st.characters(exclude_characters="\x00=", exclude_categories=["Cs"]), min_size=1
)
_sizes = st.none() | st.integers(min_value=1, max_value=65535)

executes = st.builds(
    Execute,
    command=_text,
    timeout_seconds=_int64,
    shell=_text.filter(bool),
    idle_timeout_seconds=st.integers(min_value=-1, max_value=2**63 - 1),
    kill_on_disconnect=st.booleans(),
    ttl_seconds=st.integers(min_value=-1, max_value=2**63 - 1),
    env=st.none() | st.dictionaries(_env_names, _text, max_size=4),
    cwd=st.none() | _text,
    pty=st.booleans(),
    command_id=st.none() | _ids,
    close_stdin=st.booleans(),
    cols=_sizes,
    rows=_sizes,
)
first_messages = executes | st.builds(Reconnect, _ids, _int64, _int64)
later_messages = (
    st.builds(Input, st.text())
    | st.just(Kill())
    | st.just(CloseStdin())
    | st.builds(Resize, st.integers(1, 65535), st.integers(1, 65535))
)
server_messages = (
    st.builds(Started, _ids, st.none() | st.integers(0, 2**31))
    | st.builds(Output, st.sampled_from(["stdout", "stderr"]), st.text(), st.none() | _int64)
    | st.builds(Exit, st.integers(-(2**31), 2**31))
    | st.builds(Error, st.text(), st.text())
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
message_types = st.sampled_from(
    [
        "execute",
        "reconnect",
        "input",
        "kill",
        "close_stdin",
        "resize",
        "started",
        "stdout",
        "stderr",
        "exit",
        "error",
        "other",
    ]
)
field_names = st.sampled_from(
    [
        "command",
        "timeout_seconds",
        "shell",
        "idle_timeout_seconds",
        "kill_on_disconnect",
        "ttl_seconds",
        "env",
        "cwd",
        "pty",
        "command_id",
        "close_stdin",
        "cols",
        "rows",
        "stdout_offset",
        "stderr_offset",
        "data",
        "offset",
        "pid",
        "exit_code",
        "error_type",
        "error",
    ]
)
message_like = st.builds(
    lambda kind, fields: json.dumps({"type": kind, **fields}),
    message_types,
    st.dictionaries(field_names, json_values, max_size=6),
)


@given(first_messages)
def test_first_messages_round_trip(msg: ClientMessage) -> None:
    """parse(encode(m), first=True) == m for every valid execute and reconnect."""
    assert parse_client_message(encode_client_message(msg), first=True) == msg


@given(later_messages)
def test_later_messages_round_trip(msg: ClientMessage) -> None:
    """parse(encode(m), first=False) == m for input, kill, close_stdin and resize."""
    assert parse_client_message(encode_client_message(msg), first=False) == msg


@given(server_messages)
def test_server_messages_round_trip(msg: ServerMessage) -> None:
    """parse(encode(m)) == m for every valid server message."""
    assert parse_server_message(encode_server_message(msg)) == msg


def _only_protocol_errors(raw: Any) -> None:
    for parse in (
        lambda: parse_client_message(raw, first=True),
        lambda: parse_client_message(raw, first=False),
        lambda: parse_server_message(raw),
    ):
        with contextlib.suppress(ExecProtocolError):
            parse()


@given(st.binary() | st.text() | message_like | json_values.map(json.dumps))
def test_junk_raises_nothing_but_protocol_errors(raw: str | bytes) -> None:
    """Random bytes, text, JSON and near-messages parse or raise ExecProtocolError, nothing else."""
    _only_protocol_errors(raw)


@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(max_size=20)), max_size=8))
def test_tracker_offsets_equal_bytes_received(chunks: list[tuple[str, str]]) -> None:
    """Fed a stream's chunks at their true offsets, the tracker ends at the byte totals."""
    tracker = OffsetTracker()
    total = {"stdout": 0, "stderr": 0}
    for stream, data in chunks:
        accepted = tracker.accept(stream, data, total[stream])  # type: ignore[arg-type]
        assert accepted == ((data, total[stream]) if data else None)
        total[stream] += len(data.encode())
    assert (tracker.stdout, tracker.stderr) == (total["stdout"], total["stderr"])
