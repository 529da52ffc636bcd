"""A yamux session as a pure state machine: bytes and calls in, events and bytes out, no I/O.

The TCP tunnel (spec §6) carries HashiCorp yamux, protocol version 0, over a WebSocket. The server
and the SDK both drive this one class from thin asyncio adapters, in the style of h11 and the
protocol layer of python-websockets. Framing, events and errors live in :mod:`._yamux_frames` and
are re-exported here.

Driver contract (what an adapter around :class:`Session` must do):

1. Feed every byte read from the transport to :meth:`Session.receive_data`, in any chunking: one
   WebSocket message may hold several frames or part of one (§6.2).
2. After every call into the session, write :meth:`Session.data_to_send` to the transport and handle
   :meth:`Session.next_event` until it returns ``None``. The session never blocks and never drops
   output; the buffers below stay bounded only because the driver drains them.
3. :meth:`Session.send` accepts what the peer's window allows and returns the count; keep the rest,
   drain :meth:`Session.data_to_send`, and retry on :class:`WindowUpdated` for that stream.
4. Report bytes the application has taken with :meth:`Session.consumed`; that is what re-opens the
   peer's window (end-to-end backpressure: a reader that does not read stalls only its own stream).

Bounds, in bytes (house-style rule 10):

* Partial frame: fewer than :data:`HEADER_SIZE` (12) bytes. Payloads are never buffered whole: each
  chunk is handed out as a :class:`DataReceived` as soon as it arrives.
* Per stream, bytes handed out but not yet :meth:`~Session.consumed`: at most ``receive_window``.
  A peer that sends beyond the window it was granted is a protocol error. A session therefore holds
  at most ``max_streams × receive_window`` bytes of received data (64 MiB with the defaults).
* Output: :meth:`~Session.send` accepts stream data only while
  :attr:`~Session.pending_output_bytes` stays within ``max_output_buffer``. Control frames are 12
  bytes each and come on top: at most one per frame received and one per control call since the
  last drain, so input alone never queues more output than its own size.
* Recently closed stream ids (so that frames still in flight get no RST): ``recently_closed_limit``.

Protocol rules enforced (each a ``ProtocolError``, after which the session is dead and a GO_AWAY
with :attr:`GoAwayCode.PROTOCOL_ERROR` is queued): a version other than 0, an unknown frame type,
PING or GO_AWAY off stream 0, DATA or WINDOW_UPDATE on stream 0, a SYN with the wrong parity or a
reused id, a DATA length above the receive window (the hard cap) or above the stream's remaining
window (overrun), DATA after the peer's FIN, and a send window pushed above 2**32-1. Per-stream
problems never kill the session: frames for an unknown stream get an RST, and so do SYNs beyond
``max_streams``.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from hutch.protocol._yamux_frames import (
    HEADER_SIZE,
    HEADER_STRUCT,
    INITIAL_WINDOW,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PROTOCOL_VERSION,
    STREAM_HEADER_SIZE,
    STREAM_HEADER_VERSION,
    DataReceived,
    Event,
    Flag,
    FrameHeader,
    FrameType,
    GoAway,
    GoAwayCode,
    PingReceived,
    PongReceived,
    ProtocolError,
    SessionState,
    SessionStateError,
    StreamAccepted,
    StreamEOF,
    StreamHeaderError,
    StreamOpened,
    StreamReset,
    StreamState,
    StreamStateError,
    StreamStatus,
    TooManyStreamsError,
    WindowUpdated,
    YamuxError,
    encode_header,
    encode_stream_header,
    parse_header,
    parse_stream_header,
)

__all__ = [
    "HEADER_SIZE",
    "INITIAL_WINDOW",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "PROTOCOL_VERSION",
    "STREAM_HEADER_SIZE",
    "STREAM_HEADER_VERSION",
    "DataReceived",
    "Event",
    "Flag",
    "FrameHeader",
    "FrameType",
    "GoAway",
    "GoAwayCode",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "Session",
    "SessionState",
    "SessionStateError",
    "StreamAccepted",
    "StreamEOF",
    "StreamHeaderError",
    "StreamOpened",
    "StreamReset",
    "StreamState",
    "StreamStateError",
    "StreamStatus",
    "TooManyStreamsError",
    "WindowUpdated",
    "YamuxError",
    "encode_header",
    "encode_stream_header",
    "parse_header",
    "parse_stream_header",
]

# --------------------------------------------------------------------------------------------------
# The session

_CAN_SEND: Final = (StreamState.OPEN, StreamState.REMOTE_CLOSED)
_CAN_RECEIVE: Final = (StreamState.OPEN, StreamState.LOCAL_CLOSED)

# Guarded half-close transitions; a pair missing here is an illegal move.
_LOCAL_FIN: Final = {
    StreamState.OPEN: StreamState.LOCAL_CLOSED,
    StreamState.REMOTE_CLOSED: StreamState.CLOSED,
}
_REMOTE_FIN: Final = {
    StreamState.OPEN: StreamState.REMOTE_CLOSED,
    StreamState.LOCAL_CLOSED: StreamState.CLOSED,
}


class _Stream:
    """Per-stream bookkeeping. Invariant while the peer can send:
    ``recv_window + reserved + unconsumed + pending_credit == receive_window``, where ``reserved``
    is the rest of a DATA frame whose header has arrived but whose payload has not yet."""

    __slots__ = (
        "accepted",
        "local",
        "pending_credit",
        "recv_window",
        "send_window",
        "state",
        "unconsumed",
    )

    def __init__(self, *, local: bool, recv_window: int, send_window: int) -> None:
        self.local = local
        self.state = StreamState.OPEN
        self.accepted = False
        self.send_window = send_window
        self.recv_window = recv_window
        self.pending_credit = 0
        self.unconsumed = 0


class Session:
    """One side of a yamux session (see the module docstring for the driver contract and bounds).

    ``client=True`` opens odd stream ids (1, 3, 5, …), the server even ones (yamux spec "StreamID
    Field"); the tunnel server of §6 never opens streams, but the machine is symmetric.

    Incoming streams are accepted automatically: an admitted SYN is answered with ACK at once and
    reported as :class:`StreamOpened`; a driver that does not want it calls :meth:`reset_stream`.
    A SYN is refused with RST while ``max_streams`` streams are open or after :meth:`go_away`.

    Parameters:
        max_streams: open streams (both directions) at any time.
        receive_window: bytes the peer may send on a stream before this side reports them
            consumed; at least :data:`INITIAL_WINDOW` (the peer assumes that much from the start;
            any excess is granted in the SYN/ACK frame). It is also the hard cap on a DATA frame.
        window_update_threshold: credit (consumed bytes) gathered before a WINDOW_UPDATE is sent;
            default half the receive window, so a streaming peer never stalls on a round trip.
        max_output_buffer: :meth:`send` accepts data only while queued output stays within this.
        recently_closed_limit: closed stream ids remembered so that late frames for them are
            dropped quietly instead of being answered with RST.
    """

    def __init__(
        self,
        client: bool,
        *,
        max_streams: int = 256,
        receive_window: int = INITIAL_WINDOW,
        window_update_threshold: int | None = None,
        max_output_buffer: int = 1024 * 1024,
        recently_closed_limit: int = 1024,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        if not INITIAL_WINDOW <= receive_window <= MAX_WINDOW:
            raise ValueError(
                f"receive_window must be between {INITIAL_WINDOW} (the window yamux peers assume) "
                f"and {MAX_WINDOW}, got {receive_window}"
            )
        threshold = (
            receive_window // 2 if window_update_threshold is None else window_update_threshold
        )
        if not 1 <= threshold <= receive_window:
            raise ValueError(
                f"window_update_threshold must be between 1 and receive_window, got {threshold}"
            )
        if max_output_buffer <= HEADER_SIZE:
            raise ValueError(f"max_output_buffer must exceed {HEADER_SIZE} bytes")
        if recently_closed_limit < 0:
            raise ValueError("recently_closed_limit must not be negative")

        self._client = client
        self._max_streams = max_streams
        self._receive_window = receive_window
        self._threshold = threshold
        self._max_output = max_output_buffer
        self._recent_limit = recently_closed_limit

        self._state = SessionState.OPEN
        self._go_away_sent = False
        self._remote_go_away: int | None = None
        self._streams: dict[int, _Stream] = {}
        # Insertion-ordered set of ids whose stream is over, oldest first.
        self._recently_closed: dict[int, None] = {}
        self._next_id = 1 if client else 2
        # The peer's ids only grow (yamux allocates them in order), so remembering the highest
        # detects any reuse in O(1) memory.
        self._last_peer_id = 0
        self._next_ping = 1

        self._header_buf = bytearray()
        self._payload_left = 0  # bytes of the current DATA payload still to come
        self._payload_stream: int | None = None  # None: discard the payload
        self._payload_flags = 0

        self._out = bytearray()
        self._events: deque[Event] = deque()

    # ------------------------------------------------------------------ introspection

    @property
    def client(self) -> bool:
        """True for the client role (odd stream ids)."""
        return self._client

    @property
    def state(self) -> SessionState:
        """The session's lifecycle state."""
        return self._state

    @property
    def go_away_sent(self) -> bool:
        """True once this side queued a GO_AWAY (by :meth:`go_away` or a protocol error)."""
        return self._go_away_sent

    @property
    def remote_go_away(self) -> int | None:
        """The code of the peer's GO_AWAY, or None if it sent none."""
        return self._remote_go_away

    @property
    def receive_window(self) -> int:
        """The configured per-stream receive window (and DATA frame cap), in bytes."""
        return self._receive_window

    @property
    def buffered_bytes(self) -> int:
        """Bytes of a partial frame held back; always below :data:`HEADER_SIZE`."""
        return len(self._header_buf)

    @property
    def pending_output_bytes(self) -> int:
        """Bytes queued for the transport and not yet taken by :meth:`data_to_send`."""
        return len(self._out)

    @property
    def pending_events(self) -> int:
        """Events queued and not yet taken by :meth:`next_event`."""
        return len(self._events)

    @property
    def stream_ids(self) -> tuple[int, ...]:
        """Ids of the streams that are open in at least one direction."""
        return tuple(self._streams)

    @property
    def recently_closed_count(self) -> int:
        """Closed stream ids remembered; at most ``recently_closed_limit``."""
        return len(self._recently_closed)

    def stream_state(self, stream_id: int) -> StreamState:
        """The state of ``stream_id``; CLOSED for ids that are over or were never opened."""
        stream = self._streams.get(stream_id)
        return StreamState.CLOSED if stream is None else stream.state

    def send_window(self, stream_id: int) -> int:
        """Bytes :meth:`send` may still put on ``stream_id`` before the peer grants more."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None or stream.state not in _CAN_SEND else stream.send_window

    def unconsumed_bytes(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` handed out as events and not yet reported consumed."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.unconsumed

    # ------------------------------------------------------------------ output

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """Take queued bytes for the transport, at most ``max_bytes`` (None: all of them).

        Frames may be split across calls; the peer reassembles (§6.2). Keep server WebSocket
        messages within 1 MiB by passing ``max_bytes``.
        """
        if max_bytes is None or max_bytes >= len(self._out):
            data = bytes(self._out)
            self._out.clear()
            return data
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        data = bytes(self._out[:max_bytes])
        del self._out[:max_bytes]
        return data

    def next_event(self) -> Event | None:
        """Take the oldest event, or None when there is none."""
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """Take every queued event, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    # ------------------------------------------------------------------ local operations

    def open_stream(self) -> int:
        """Open a stream and return its id; the SYN (a WINDOW_UPDATE) is queued.

        Data may be sent at once, without waiting for the ACK (yamux spec "Opening a stream").
        Raises :class:`SessionStateError` unless the session is OPEN, :class:`TooManyStreamsError`
        at ``max_streams``, and :class:`YamuxError` when the 32-bit id space is used up.
        """
        self._require_session("open_stream()", (SessionState.OPEN,))
        if len(self._streams) >= self._max_streams:
            raise TooManyStreamsError(self._max_streams)
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise YamuxError("this session has used every stream id; open a new session")
        self._next_id += 2
        self._streams[stream_id] = _Stream(
            local=True, recv_window=self._receive_window, send_window=INITIAL_WINDOW
        )
        # A window above the assumed 256 KiB is granted in the SYN itself (yamux spec "Flow
        # Control": "can immediately send a window update as part of the SYN/ACK").
        self._queue(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, self._extra_window)
        return stream_id

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the window and output bound allow; return the count.

        A short count means the window (or, if the driver has not drained, ``max_output_buffer``)
        is used up: keep the rest and retry after :class:`WindowUpdated`. Raises
        :class:`StreamStateError` unless the stream is OPEN or REMOTE_CLOSED.
        """
        stream = self._require_stream("send()", stream_id, _CAN_SEND)
        view = memoryview(data).cast("B")
        headroom = self._max_output - len(self._out) - HEADER_SIZE
        count = min(len(view), stream.send_window, headroom)
        if count <= 0:
            return 0
        self._queue(FrameType.DATA, 0, stream_id, count)
        self._out += view[:count]
        # Only DATA payload counts against the window (yamux spec "Flow Control").
        stream.send_window -= count
        return count

    def consumed(self, stream_id: int, count: int) -> None:
        """Report that the application took ``count`` more bytes of ``stream_id``'s data.

        Once ``window_update_threshold`` bytes are gathered, a WINDOW_UPDATE returns them to the
        peer. A stream that is already over is ignored (its window no longer matters). Raises
        ``ValueError`` for a negative count or more than :meth:`unconsumed_bytes`.
        """
        if count < 0:
            raise ValueError(f"consumed() needs a count of at least 0, got {count}")
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if count > stream.unconsumed:
            raise ValueError(
                f"consumed({count}) on stream {stream_id} exceeds the {stream.unconsumed} bytes "
                "received and not yet consumed"
            )
        stream.unconsumed -= count
        stream.pending_credit += count
        # Credit matters only while the peer may still send; batching it keeps the control
        # traffic at two frames per window rather than one per read.
        if stream.state in _CAN_RECEIVE and stream.pending_credit >= self._threshold:
            credit, stream.pending_credit = stream.pending_credit, 0
            stream.recv_window += credit
            self._queue(FrameType.WINDOW_UPDATE, 0, stream_id, credit)

    def close_stream(self, stream_id: int) -> None:
        """Half-close ``stream_id``: queue DATA with FIN (as §6.4 step 9 does); no more sending.

        Raises :class:`StreamStateError` unless the stream is OPEN or REMOTE_CLOSED.
        """
        stream = self._require_stream("close_stream()", stream_id, _CAN_SEND)
        self._queue(FrameType.DATA, Flag.FIN, stream_id, 0)
        self._set_state(stream_id, stream, _LOCAL_FIN[stream.state])

    def reset_stream(self, stream_id: int) -> None:
        """Abort ``stream_id`` at once (RST on a WINDOW_UPDATE) and forget it.

        Idempotent, so that error paths need no checks: a stream that is already over (or a dead
        session) makes this a no-op.
        """
        if self._state is SessionState.CLOSED or stream_id not in self._streams:
            return
        self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
        self._forget(stream_id)

    def ping(self) -> int:
        """Queue a PING (SYN) and return its opaque value; the answer is a :class:`PongReceived`."""
        self._require_session("ping()", (SessionState.OPEN, SessionState.DRAINING))
        opaque = self._next_ping
        self._next_ping = (self._next_ping + 1) & 0xFFFFFFFF
        self._queue(FrameType.PING, Flag.SYN, 0, opaque)
        return opaque

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Queue GO_AWAY with ``code``: no new streams either way, open ones carry on.

        At most one GO_AWAY is sent per session; later calls (or calls after a protocol error,
        which queued its own) do nothing. Raises ``ValueError`` for a code outside u32.
        """
        if not 0 <= code <= 0xFFFFFFFF:
            raise ValueError(f"a GO_AWAY code is a u32, got {code}")
        if self._go_away_sent or self._state is SessionState.CLOSED:
            return
        self._go_away_sent = True
        self._state = SessionState.DRAINING
        self._queue(FrameType.GO_AWAY, 0, 0, code)

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Process bytes from the transport, in any chunking; never raises on any input.

        Everything the peer does wrong becomes an event (see the module docstring). After a
        :class:`ProtocolError` the session is CLOSED and further input is ignored.
        """
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end and self._state is not SessionState.CLOSED:
            if self._payload_left:
                count = min(self._payload_left, end - pos)
                self._deliver(view[pos : pos + count])
                pos += count
                self._payload_left -= count
                if not self._payload_left:
                    self._end_data_frame()
                continue
            if not self._header_buf and end - pos >= HEADER_SIZE:
                header = FrameHeader(*HEADER_STRUCT.unpack_from(view, pos))
                pos += HEADER_SIZE
            else:
                take = min(HEADER_SIZE - len(self._header_buf), end - pos)
                self._header_buf += view[pos : pos + take]
                pos += take
                if len(self._header_buf) < HEADER_SIZE:
                    break
                header = FrameHeader(*HEADER_STRUCT.unpack(self._header_buf))
                self._header_buf.clear()
            self._on_header(header)

    # ------------------------------------------------------------------ internals

    @property
    def _extra_window(self) -> int:
        return self._receive_window - INITIAL_WINDOW

    def _queue(self, frame_type: FrameType, flags: int, stream_id: int, length: int) -> None:
        self._out += HEADER_STRUCT.pack(PROTOCOL_VERSION, frame_type, flags, stream_id, length)

    def _require_session(self, action: str, allowed: tuple[SessionState, ...]) -> None:
        if self._state not in allowed:
            raise SessionStateError(action, self._state, allowed)

    def _require_stream(
        self, action: str, stream_id: int, allowed: tuple[StreamState, ...]
    ) -> _Stream:
        stream = self._streams.get(stream_id)
        state = StreamState.CLOSED if stream is None else stream.state
        if stream is None or state not in allowed:
            raise StreamStateError(action, stream_id, state, allowed)
        return stream

    def _set_state(self, stream_id: int, stream: _Stream, state: StreamState) -> None:
        stream.state = state
        if state is StreamState.CLOSED:
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._remember_closed(stream_id)

    def _remember_closed(self, stream_id: int) -> None:
        if self._recent_limit == 0:
            return
        self._recently_closed.pop(stream_id, None)
        self._recently_closed[stream_id] = None
        if len(self._recently_closed) > self._recent_limit:
            del self._recently_closed[next(iter(self._recently_closed))]

    def _fail(self, message: str) -> None:
        # Yamux spec "Session termination": GO_AWAY with code 1 for a protocol error. Streams are
        # dropped at once: the peer's state can no longer be trusted, and the memory is freed.
        self._queue(FrameType.GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR)
        self._go_away_sent = True
        self._state = SessionState.CLOSED
        self._streams.clear()
        self._header_buf.clear()
        self._payload_left = 0
        self._payload_stream = None
        self._events.append(ProtocolError(message))

    def _on_header(self, header: FrameHeader) -> None:
        version, frame_type, flags, stream_id, length = header
        if version != PROTOCOL_VERSION:
            self._fail(f"yamux version {version} is not supported (expected {PROTOCOL_VERSION})")
        elif frame_type == FrameType.DATA or frame_type == FrameType.WINDOW_UPDATE:
            self._on_stream_frame(frame_type, flags, stream_id, length)
        elif frame_type == FrameType.PING:
            self._on_ping(flags, stream_id, length)
        elif frame_type == FrameType.GO_AWAY:
            if stream_id != 0:
                self._fail(f"GO_AWAY on stream {stream_id} (it belongs on stream 0)")
                return
            self._remote_go_away = length
            if self._state is SessionState.OPEN:
                self._state = SessionState.DRAINING
            self._events.append(GoAway(length))
        else:
            self._fail(f"unknown frame type {frame_type}")

    def _on_ping(self, flags: int, stream_id: int, opaque: int) -> None:
        # Yamux spec: "Both Ping and Go Away messages should always use the 0 StreamID".
        if stream_id != 0:
            self._fail(f"PING on stream {stream_id} (it belongs on stream 0)")
        elif flags & Flag.SYN:
            self._queue(FrameType.PING, Flag.ACK, 0, opaque)
            self._events.append(PingReceived(opaque))
        elif flags & Flag.ACK:
            self._events.append(PongReceived(opaque))
        else:
            self._fail("PING without SYN or ACK")

    def _on_stream_frame(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        is_data = frame_type == FrameType.DATA
        # Validate everything before any side effect, so that one received frame queues at most
        # one 12-byte reply (the output bound in the module docstring relies on it).
        if stream_id == 0:
            self._fail(f"{FrameType(frame_type).name} on stream 0 (reserved for the session)")
            return
        if is_data and length > self._receive_window:
            # No DATA frame can legitimately exceed the largest window this side grants.
            self._fail(f"DATA frame of {length} bytes exceeds the receive window")
            return
        stream = self._streams.get(stream_id)
        if flags & Flag.SYN:
            peer_parity = 0 if self._client else 1
            if stream_id % 2 != peer_parity:
                # Yamux spec "StreamID Field": the client uses odd ids, the server even ones.
                self._fail(f"SYN for stream {stream_id}, an id of this side's parity")
                return
            if stream_id <= self._last_peer_id:
                self._fail(f"SYN reuses stream id {stream_id}")
                return
            if not is_data and INITIAL_WINDOW + length > MAX_WINDOW:
                self._fail(f"WINDOW_UPDATE on stream {stream_id} overflows the send window")
                return
            self._last_peer_id = stream_id
            if self._go_away_sent or len(self._streams) >= self._max_streams:
                # Refuse with RST (yamux spec "Opening a stream"); the session lives on.
                self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
                self._remember_closed(stream_id)
                self._skip_payload(is_data, length)
                return
            stream = _Stream(
                local=False, recv_window=self._receive_window, send_window=INITIAL_WINDOW
            )
            self._streams[stream_id] = stream
            self._queue(FrameType.WINDOW_UPDATE, Flag.ACK, stream_id, self._extra_window)
            self._events.append(StreamOpened(stream_id))
        elif stream is None:
            # Not a protocol error: the stream may have ended here while the frame was in flight.
            # Answer RST once (never RST an RST, which could loop), then stay quiet about it.
            if stream_id not in self._recently_closed and not flags & Flag.RST:
                self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
                self._remember_closed(stream_id)
            self._skip_payload(is_data, length)
            return
        else:
            if is_data and length:
                if stream.state not in _CAN_RECEIVE:
                    self._fail(f"DATA on stream {stream_id} after the peer's FIN")
                    return
                if length > stream.recv_window:
                    self._fail(
                        f"window overrun on stream {stream_id}: {length} bytes sent with "
                        f"{stream.recv_window} bytes of window left"
                    )
                    return
            if not is_data and stream.send_window + length > MAX_WINDOW:
                self._fail(f"WINDOW_UPDATE on stream {stream_id} overflows the send window")
                return
            if flags & Flag.ACK and stream.local and not stream.accepted:
                stream.accepted = True
                self._events.append(StreamAccepted(stream_id))

        if is_data:
            if length:
                stream.recv_window -= length
                self._payload_left = length
                self._payload_stream = stream_id
                self._payload_flags = flags
                return
        elif length:
            stream.send_window += length
            if stream.state in _CAN_SEND:
                self._events.append(WindowUpdated(stream_id))
        self._apply_close_flags(stream_id, stream, flags)

    def _skip_payload(self, is_data: bool, length: int) -> None:
        if is_data and length:
            self._payload_left = length
            self._payload_stream = None

    def _deliver(self, chunk: memoryview) -> None:
        stream_id = self._payload_stream
        if stream_id is None:
            return
        stream = self._streams.get(stream_id)
        if stream is None:  # reset locally while the frame was arriving
            return
        stream.unconsumed += len(chunk)
        self._events.append(DataReceived(stream_id, bytes(chunk)))

    def _end_data_frame(self) -> None:
        stream_id, self._payload_stream = self._payload_stream, None
        if stream_id is None:
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._apply_close_flags(stream_id, stream, self._payload_flags)

    def _apply_close_flags(self, stream_id: int, stream: _Stream, flags: int) -> None:
        # FIN and RST take effect after the frame's payload (yamux spec: both "may be sent with a
        # data message"). RST wins over FIN.
        if flags & Flag.RST:
            self._forget(stream_id)
            self._events.append(StreamReset(stream_id))
        elif flags & Flag.FIN and stream.state in _CAN_RECEIVE:
            self._events.append(StreamEOF(stream_id))
            self._set_state(stream_id, stream, _REMOTE_FIN[stream.state])
        # A repeated FIN changes nothing and is not worth killing the session over.
