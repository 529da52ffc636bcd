"""Property tests for the yamux session: hostile input stays bounded; honest peers lose nothing."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hutch.protocol._yamux import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    DataReceived,
    Event,
    Flag,
    FrameType,
    ProtocolError,
    Session,
    SessionState,
    StreamReset,
    StreamState,
    TooManyStreamsError,
    encode_header,
)

FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(deadline=None, max_examples=75, suppress_health_check=[HealthCheck.too_slow])
CAN_SEND = (StreamState.OPEN, StreamState.REMOTE_CLOSED)
MAX_STREAMS = 4
RECENT = 8


def new_session(client: bool) -> Session:
    # Small limits, so that short inputs already reach them.
    return Session(client, max_streams=MAX_STREAMS, recently_closed_limit=RECENT)


def chunked(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Split ``data`` by cycling through ``sizes``; the last piece takes the rest."""
    pieces, pos, index = [], 0, 0
    while pos < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        pieces.append(data[pos : pos + size])
        pos += size
        index += 1
    return pieces


def check_bounds(session: Session) -> None:
    """The documented bounds hold."""
    assert session.buffered_bytes < HEADER_SIZE
    assert len(session.stream_ids) <= MAX_STREAMS
    assert session.recently_closed_count <= RECENT
    for stream_id in session.stream_ids:
        assert 0 <= session.unconsumed_bytes(stream_id) <= session.receive_window


def feed_checked(session: Session, pieces: list[bytes], consume: bool = False) -> list[Event]:
    """Feed pieces one by one, checking the bounds and the dead-session rule after each."""
    events: list[Event] = []
    received = 0
    for piece in pieces:
        dead = session.state is SessionState.CLOSED
        session.receive_data(piece)
        received += len(piece)
        new = session.events()
        if dead:
            assert new == []
            assert session.pending_output_bytes == 0
        events += new
        check_bounds(session)
        if not consume:
            # With no local calls, each received frame queues at most one 12-byte reply.
            assert session.pending_output_bytes <= received
        elif not dead:
            for stream_id in session.stream_ids:
                session.consumed(stream_id, session.unconsumed_bytes(stream_id))
        if session.state is SessionState.CLOSED and not dead:
            session.data_to_send()  # the GO_AWAY; nothing may follow it
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert len(errors) <= 1
    # Shown by --hypothesis-show-statistics: which paths the inputs reach.
    for kind in sorted({type(e).__name__ for e in events}):
        hypothesis.event(kind)
    if errors:
        hypothesis.event("error: " + errors[0].message.split(" ")[0])
        assert events[-1] == errors[0]
        assert session.state is SessionState.CLOSED
    return events


def normalise(events: list[Event]) -> list[Event]:
    """Merge adjacent DataReceived of one stream: chunking may split a payload differently."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            isinstance(event, DataReceived)
            and isinstance(last, DataReceived)
            and last.stream_id == event.stream_id
        ):
            merged[-1] = DataReceived(event.stream_id, last.data + event.data)
        else:
            merged.append(event)
    return merged


chunk_sizes = st.lists(
    st.one_of(st.integers(1, 40), st.sampled_from([4096, 65_536])), min_size=1, max_size=8
)

wild_frames = st.builds(
    encode_header,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
    version=st.sampled_from([0, 0, 0, 1, 255]),
)
ACTIONS = ["open"] * 3 + ["data"] * 6 + ["window", "fin", "rst", "ping", "pong", "go_away", "wild"]
PAYLOAD_SIZES = [0, 1, 3, 12, 100, 4096, 70_000, 200_000]


@st.composite
def peer_script(draw: st.DrawFn, client: bool) -> bytes:
    """What a peer of a ``client``-role session might send: mostly legitimate, sometimes not."""
    next_id = 2 if client else 1  # the peer's parity
    opened: list[int] = []
    out = bytearray()
    for _ in range(draw(st.integers(0, 25))):
        action = draw(st.sampled_from(ACTIONS))
        if action == "wild":
            out += draw(wild_frames)
            continue
        if action in ("ping", "pong", "go_away"):
            frame_type = FrameType.GO_AWAY if action == "go_away" else FrameType.PING
            flags = Flag.ACK if action == "pong" else (Flag.SYN if action == "ping" else 0)
            out += encode_header(frame_type, flags, 0, draw(st.integers(0, 3)))
            continue
        if action == "open" or not opened:
            next_id += 2 * draw(st.sampled_from([1, 1, 1, 2, 0, -1]))  # sometimes skip or reuse
            stream_id, flags = max(next_id, 0), Flag.SYN
            opened.append(stream_id)
        else:
            # Mostly a stream this script opened, sometimes one of this side's or an unknown one.
            stream_id = draw(
                st.one_of(st.just(opened[-1]), st.sampled_from(opened), st.integers(1, 20))
            )
            flags = 0
        frame_type = FrameType.DATA
        length = 0
        if action == "data" or (action == "open" and draw(st.booleans())):
            length = draw(st.sampled_from(PAYLOAD_SIZES))
        elif action != "open" or draw(st.booleans()):
            frame_type = FrameType.WINDOW_UPDATE
            length = draw(st.sampled_from([0, 1, 1000, INITIAL_WINDOW, 2**32 - 1]))
        flags |= {"fin": Flag.FIN, "rst": Flag.RST}.get(action, 0)
        out += encode_header(frame_type, flags, stream_id, length)
        if frame_type == FrameType.DATA:
            out += bytes([stream_id & 0xFF]) * length
    return bytes(out)


@st.composite
def mangled(draw: st.DrawFn, client: bool) -> bytes:
    """A peer script, sometimes truncated, sometimes with a few bits flipped."""
    data = bytearray(draw(peer_script(client)))
    if data and draw(st.integers(0, 3)) == 0:
        del data[draw(st.integers(0, len(data) - 1)) :]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=600), sizes=chunk_sizes, client=st.booleans())
def test_random_bytes_never_raise(data: bytes, sizes: list[int], client: bool) -> None:
    """Arbitrary bytes in any chunking raise nothing, stay bounded; a dead session stays dead."""
    feed_checked(new_session(client), chunked(data, sizes))


@FUZZ
@given(script=st.data(), sizes=chunk_sizes, client=st.booleans(), consume=st.booleans())
def test_mangled_frames_never_raise(
    script: st.DataObject, sizes: list[int], client: bool, consume: bool
) -> None:
    """Plausible, truncated or bit-flipped frame sequences raise nothing and keep every bound."""
    data = script.draw(mangled(client))
    feed_checked(new_session(client), chunked(data, sizes), consume=consume)


@FUZZ
@given(script=st.data(), sizes=chunk_sizes, client=st.booleans())
def test_chunking_does_not_change_the_outcome(
    script: st.DataObject, sizes: list[int], client: bool
) -> None:
    """The same bytes give the same events and output however they are split."""
    data = script.draw(mangled(client))
    whole, split = new_session(client), new_session(client)
    whole.receive_data(data)
    pieces_events = feed_checked(split, chunked(data, sizes))
    assert normalise(whole.events()) == normalise(pieces_events)
    assert whole.state is split.state
    # The split session had its GO_AWAY taken on error; compare what is left the same way.
    if whole.state is SessionState.CLOSED:
        return
    assert whole.data_to_send() == split.data_to_send()


# ------------------------------------------------------------------------------ honest peers

ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 1)),
        st.tuples(
            st.just("write"),
            st.integers(0, 1),
            st.integers(0, 7),
            st.one_of(st.integers(0, 3000), st.sampled_from([70_000, 150_000, 300_000])),
        ),
        st.tuples(
            st.just("consume"), st.integers(0, 1), st.integers(0, 7), st.sampled_from([0, 1, 2, 4])
        ),
        st.tuples(st.just("close"), st.integers(0, 1), st.integers(0, 7)),
        st.tuples(st.just("reset"), st.integers(0, 1), st.integers(0, 7)),
        st.tuples(st.just("pump"), st.sampled_from([7, 12, 13, 1000, 70_000, 0])),
    ),
    min_size=3,
    max_size=40,
)


class Peers:
    """Two wired sessions with application-side buffers, as a driver would keep them."""

    def __init__(self, seed: int, streams: int) -> None:
        # The server admits three streams at a time, so that some SYNs are refused with RST.
        self.sessions = (Session(True), Session(False, max_streams=3))
        self.rng = random.Random(seed)
        # Per side and stream: bytes the application asked to send, not yet accepted by send().
        self.pending: tuple[dict[int, bytearray], ...] = ({}, {})
        self.sent: tuple[dict[int, bytearray], ...] = ({}, {})
        self.received: tuple[dict[int, bytearray], ...] = ({}, {})
        self.closing: tuple[set[int], ...] = (set(), set())
        self.reset: set[int] = set()
        for _ in range(streams):
            self.apply(("open", 0))

    def pick(self, side: int, index: int) -> int | None:
        ids = self.sessions[side].stream_ids
        return ids[index % len(ids)] if ids else None

    def flush(self, side: int) -> None:
        session = self.sessions[side]
        for stream_id, buffer in self.pending[side].items():
            if stream_id in self.reset:
                hypothesis.event("stream reset")
            elif buffer:
                count = session.send(stream_id, buffer)
                if count < len(buffer) and not session.send_window(stream_id):
                    hypothesis.event("window exhausted")
                self.sent[side].setdefault(stream_id, bytearray()).extend(buffer[:count])
                del buffer[:count]
        for stream_id in list(self.closing[side]):
            if not self.pending[side].get(stream_id):
                self.closing[side].discard(stream_id)
                if stream_id not in self.reset:
                    session.close_stream(stream_id)

    def pump(self, chunk: int) -> bool:
        moved = False
        for side in (0, 1):
            out = self.sessions[side].data_to_send()
            moved = moved or bool(out)
            peer = self.sessions[1 - side]
            for piece in chunked(out, [chunk] if chunk else []):
                peer.receive_data(piece)
                check_bounds_honest(peer)
            for event in peer.events():
                assert not isinstance(event, ProtocolError), event
                if isinstance(event, DataReceived):
                    buffer = self.received[1 - side].setdefault(event.stream_id, bytearray())
                    buffer += event.data
                elif isinstance(event, StreamReset):
                    self.reset.add(event.stream_id)
        return moved

    def apply(self, op: tuple[object, ...]) -> None:
        kind = op[0]
        if kind == "pump":
            assert isinstance(op[1], int)
            self.pump(op[1])
            return
        side = op[1]
        assert isinstance(side, int)
        session = self.sessions[side]
        if kind == "open":
            with contextlib.suppress(TooManyStreamsError):  # the server's limit is 3
                self.pending[side][session.open_stream()] = bytearray()
            return
        assert isinstance(op[2], int)
        stream_id = self.pick(side, op[2])
        if stream_id is None or stream_id in self.reset:
            return
        can_send = session.stream_state(stream_id) in CAN_SEND
        if kind == "write" and can_send and stream_id not in self.closing[side]:
            assert isinstance(op[3], int)
            buffer = self.pending[side].setdefault(stream_id, bytearray())
            buffer += self.rng.randbytes(op[3])
            self.flush(side)
        elif kind == "consume":
            assert isinstance(op[3], int)
            share = session.unconsumed_bytes(stream_id) * op[3] // 4
            session.consumed(stream_id, share)
        elif kind == "close" and can_send:
            self.closing[side].add(stream_id)
            self.flush(side)
        elif kind == "reset":
            session.reset_stream(stream_id)
            self.reset.add(stream_id)

    def settle(self) -> None:
        """Let every reader consume and every writer finish, until nothing moves."""
        for _ in range(1000):
            for side in (0, 1):
                session = self.sessions[side]
                for stream_id in session.stream_ids:
                    session.consumed(stream_id, session.unconsumed_bytes(stream_id))
                self.flush(side)
            if not self.pump(65_536) and not any(
                any(buffer for sid, buffer in pending.items() if sid not in self.reset)
                for pending in self.pending
            ):
                return
        raise AssertionError("the sessions did not settle")


def check_bounds_honest(session: Session) -> None:
    assert session.buffered_bytes < HEADER_SIZE
    for stream_id in session.stream_ids:
        assert session.unconsumed_bytes(stream_id) <= session.receive_window


@ROUND_TRIP
@given(operations=ops, seed=st.integers(0, 2**32), streams=st.integers(1, 2))
def test_honest_peers_deliver_every_byte_in_order(
    operations: list[tuple[object, ...]], seed: int, streams: int
) -> None:
    """Any schedule of opens, writes, consumption, closes and pumps delivers all bytes in order."""
    peers = Peers(seed, streams)
    for op in operations:
        peers.apply(op)
    peers.settle()
    for side in (0, 1):
        for stream_id, sent in peers.sent[side].items():
            if stream_id in peers.reset:
                continue
            assert peers.received[1 - side].get(stream_id, bytearray()) == sent
    for session in peers.sessions:
        assert session.state is SessionState.OPEN
