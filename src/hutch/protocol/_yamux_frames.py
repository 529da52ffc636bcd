"""Yamux framing, the tunnel connect header, and the events and errors of :mod:`._yamux`.

Facts from HashiCorp's yamux spec.md (protocol version 0) and protocol.md §6.3-6.4. No I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Final, NamedTuple, TypeAlias

# --------------------------------------------------------------------------------------------------
# Framing (yamux spec "Framing"; protocol.md §6.3)

#: The only yamux version there is.
PROTOCOL_VERSION: Final = 0
#: ``version:u8 | type:u8 | flags:u16 | stream_id:u32 | length:u32``, big-endian.
HEADER_SIZE: Final = 12
#: Both sides assume this window per stream and direction, without negotiation (yamux spec
#: "Flow Control"; §6.3).
INITIAL_WINDOW: Final = 256 * 1024
#: The largest window the 32-bit length field can describe; a larger send window is an error.
MAX_WINDOW: Final = 2**32 - 1
#: Stream ids are u32; a session that used them all must be replaced.
MAX_STREAM_ID: Final = 2**32 - 1

HEADER_STRUCT: Final = struct.Struct(">BBHII")


class FrameType(IntEnum):
    """The yamux frame types; what ``length`` means depends on the type."""

    DATA = 0  # length = payload size; the payload follows
    WINDOW_UPDATE = 1  # length = window increment
    PING = 2  # length = opaque value, echoed back
    GO_AWAY = 3  # length = GoAwayCode


class Flag(IntFlag):
    """Frame flags. Unknown bits are ignored on receipt, for forward compatibility."""

    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8


class GoAwayCode(IntEnum):
    """GO_AWAY error codes (yamux spec "Session termination")."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class FrameHeader(NamedTuple):
    """A decoded 12-byte frame header; fields are plain ints so that unknown values survive."""

    version: int
    type: int
    flags: int
    stream_id: int
    length: int


def encode_header(
    frame_type: int, flags: int, stream_id: int, length: int, *, version: int = PROTOCOL_VERSION
) -> bytes:
    """Return the 12-byte header; raises ``struct.error`` when a field does not fit its width."""
    return HEADER_STRUCT.pack(version, frame_type, flags, stream_id, length)


def parse_header(data: bytes | bytearray | memoryview) -> FrameHeader:
    """Decode the first 12 bytes of ``data``; raises ``ValueError`` when fewer are given."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"a yamux header is {HEADER_SIZE} bytes, got {len(data)}")
    return FrameHeader(*HEADER_STRUCT.unpack_from(data))


# --------------------------------------------------------------------------------------------------
# The connect header at the start of every tunnel stream (§6.3 step 2, §6.4)

#: Version byte of the connect header (not the yamux version).
STREAM_HEADER_VERSION: Final = 1
#: ``[version=1][port_hi][port_lo]``
STREAM_HEADER_SIZE: Final = 3


class StreamStatus(IntEnum):
    """The one status byte the server answers a connect header with (§6.3 step 3)."""

    OK = 0
    NOT_ALLOWED = 1
    DIAL_FAILED = 2
    BAD_VERSION = 3


class StreamHeaderError(ValueError):
    """A connect header the server must refuse; ``status`` is the byte to answer with."""

    def __init__(self, message: str, status: StreamStatus) -> None:
        super().__init__(message)
        self.status = status


def encode_stream_header(port: int) -> bytes:
    """Return the 3-byte connect header for ``port``; raises ``ValueError`` outside 1..65535."""
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return bytes((STREAM_HEADER_VERSION, port >> 8, port & 0xFF))


def parse_stream_header(data: bytes | bytearray | memoryview) -> int:
    """Return the port of a connect header held in the first 3 bytes of ``data``.

    Raises ``ValueError`` when fewer than 3 bytes are given (buffer until there are), and
    :class:`StreamHeaderError` carrying the status to answer for a version other than 1
    (``BAD_VERSION``, §6.4 step 2) or port 0 (``NOT_ALLOWED``). A u16 cannot exceed 65535.
    """
    if len(data) < STREAM_HEADER_SIZE:
        raise ValueError(
            f"a connect header is {STREAM_HEADER_SIZE} bytes, got {len(data)}; buffer more first"
        )
    if data[0] != STREAM_HEADER_VERSION:
        raise StreamHeaderError(
            f"connect header version {data[0]} is not supported (expected {STREAM_HEADER_VERSION})",
            StreamStatus.BAD_VERSION,
        )
    port = (data[1] << 8) | data[2]
    if port == 0:
        raise StreamHeaderError("port 0 cannot be dialled", StreamStatus.NOT_ALLOWED)
    return port


# --------------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened ``stream_id`` (SYN); the session has already answered it with ACK."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The peer acknowledged (ACK) a stream this side opened. Sending need not wait for it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes for ``stream_id``, in order; report them with :meth:`Session.consumed` once taken."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEOF:
    """The peer half-closed ``stream_id`` (FIN): it will send no more data."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset ``stream_id`` (RST), or refused a stream this side opened; it is gone."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The send window of ``stream_id`` grew; a driver holding unsent bytes should retry."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged; the PING ACK with the same ``opaque`` is already queued."""

    opaque: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a ping; ``opaque`` is the value it echoed."""

    opaque: int


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer is ending the session (``code``, usually a :class:`GoAwayCode`): no new streams."""

    code: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol. The session is dead and GO_AWAY(PROTOCOL_ERROR) is queued."""

    message: str


Event: TypeAlias = (
    StreamOpened
    | StreamAccepted
    | DataReceived
    | StreamEOF
    | StreamReset
    | WindowUpdated
    | PingReceived
    | PongReceived
    | GoAway
    | ProtocolError
)


# --------------------------------------------------------------------------------------------------
# States and errors


class SessionState(Enum):
    """Session lifecycle: OPEN → DRAINING (a GO_AWAY either way: no new streams) → CLOSED."""

    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"  # protocol error: input is ignored, every stream is gone


class StreamState(Enum):
    """Stream lifecycle (yamux spec "Closing a stream"): FIN half-closes one direction.

    ``CLOSED`` also stands for reset streams and ids that are not (or no longer) open: the session
    forgets a stream as soon as it is over, which keeps its memory bounded.
    """

    OPEN = "open"
    LOCAL_CLOSED = "local_closed"  # this side sent FIN; the peer may still send
    REMOTE_CLOSED = "remote_closed"  # the peer sent FIN; this side may still send
    CLOSED = "closed"


class YamuxError(Exception):
    """Root of the errors :class:`Session` raises for calls its state does not allow."""


class SessionStateError(YamuxError):
    """A session call made in a state that does not allow it."""

    def __init__(self, action: str, state: SessionState, expected: Iterable[SessionState]) -> None:
        self.state = state
        self.expected = tuple(expected)
        names = " or ".join(s.name for s in self.expected)
        super().__init__(
            f"{action} needs the session to be {names}, but it is {state.name}; "
            "open a new session for new streams"
        )


class StreamStateError(YamuxError):
    """A stream call made in a state that does not allow it (house-style rule 5)."""

    def __init__(
        self, action: str, stream_id: int, state: StreamState, expected: Iterable[StreamState]
    ) -> None:
        self.stream_id = stream_id
        self.state = state
        self.expected = tuple(expected)
        names = " or ".join(s.name for s in self.expected)
        super().__init__(
            f"{action} on stream {stream_id} needs state {names}, but it is {state.name}; "
            "handle StreamEOF/StreamReset events before acting on a stream"
        )


class TooManyStreamsError(YamuxError):
    """:meth:`Session.open_stream` with ``max_streams`` streams already open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"this session already has {limit} open streams (max_streams); close one first"
        )
