"""Yamux session state machine: two sessions wired back to back, and hand-made frames."""

from __future__ import annotations

import pytest

from hutch.protocol._yamux import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    DataReceived,
    Event,
    Flag,
    FrameType,
    GoAway,
    GoAwayCode,
    PingReceived,
    PongReceived,
    ProtocolError,
    Session,
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
    encode_header,
    encode_stream_header,
    parse_header,
    parse_stream_header,
)

DATA, WINDOW_UPDATE, PING, GO_AWAY = (
    FrameType.DATA,
    FrameType.WINDOW_UPDATE,
    FrameType.PING,
    FrameType.GO_AWAY,
)
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST


class Pair:
    """A client and a server session wired back to back, with the events each has seen."""

    def __init__(self, chunk: int | None = None, **options: int) -> None:
        self.client = Session(True, **options)
        self.server = Session(False, **options)
        self.chunk = chunk
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything to send."""
        while True:
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            self._feed(self.server, to_server)
            self.server_events += self.server.events()
            self._feed(self.client, to_client)
            self.client_events += self.client.events()

    def _feed(self, session: Session, data: bytes) -> None:
        step = self.chunk or max(len(data), 1)
        for start in range(0, len(data), step):
            session.receive_data(data[start : start + step])

    def take_client(self) -> list[Event]:
        events, self.client_events = self.client_events, []
        return events

    def take_server(self) -> list[Event]:
        events, self.server_events = self.server_events, []
        return events


def joined(events: list[Event], stream_id: int) -> bytes:
    """All data delivered for ``stream_id``, concatenated."""
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def frame(
    frame_type: int, flags: int, stream_id: int, length: int, payload: bytes = b"", version: int = 0
) -> bytes:
    return encode_header(frame_type, flags, stream_id, length, version=version) + payload


def server_with_stream() -> Session:
    """A server session on which the client opened stream 1 (its ACK already drained)."""
    server = Session(False)
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0))
    assert server.events() == [StreamOpened(1)]
    server.data_to_send()
    return server


def assert_protocol_error(session: Session) -> None:
    events = session.events()
    assert isinstance(events[-1], ProtocolError)
    assert session.state is SessionState.CLOSED
    assert session.data_to_send().endswith(frame(GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
    assert session.stream_ids == ()


# ------------------------------------------------------------------------------ wire format


def test_spec_example_bytes() -> None:
    """The bytes match the §6.4 example: SYN, connect header, ACK, status OK, FIN, GO_AWAY."""
    client, server = Session(True), Session(False)
    stream_id = client.open_stream()
    assert stream_id == 1
    assert client.send(stream_id, encode_stream_header(5432)) == 3
    sent = client.data_to_send()
    assert sent.hex() == "000100010000000100000000" + "00000000000000010000000301" + "1538"
    server.receive_data(sent)
    assert server.events() == [StreamOpened(1), DataReceived(1, b"\x01\x15\x38")]
    assert server.send(1, bytes([StreamStatus.OK])) == 1
    assert server.data_to_send().hex() == "000100020000000100000000" + "00000000000000010000000100"
    client.close_stream(1)
    client.go_away()
    assert client.data_to_send().hex() == "000000040000000100000000" + "000300000000000000000000"


def test_header_round_trip() -> None:
    """encode_header and parse_header are inverse; a short buffer is refused."""
    header = parse_header(encode_header(DATA, SYN | FIN, 7, 99))
    assert header == (0, DATA, SYN | FIN, 7, 99)
    with pytest.raises(ValueError, match="12 bytes"):
        parse_header(b"\x00" * 11)


def test_stream_header_encode_and_parse() -> None:
    """The connect header is [1][port_hi][port_lo] and parses back to the port."""
    assert encode_stream_header(5432) == b"\x01\x15\x38"
    assert parse_stream_header(b"\x01\x15\x38") == 5432
    assert parse_stream_header(b"\x01\xff\xffextra") == 65535
    assert parse_stream_header(bytearray(encode_stream_header(1))) == 1


def test_stream_header_errors() -> None:
    """Bad version and port 0 carry the status to answer; short input and bad ports raise."""
    with pytest.raises(StreamHeaderError) as bad_version:
        parse_stream_header(b"\x02\x00\x50")
    assert bad_version.value.status is StreamStatus.BAD_VERSION
    with pytest.raises(StreamHeaderError) as port_zero:
        parse_stream_header(b"\x01\x00\x00")
    assert port_zero.value.status is StreamStatus.NOT_ALLOWED
    with pytest.raises(ValueError, match="buffer more"):
        parse_stream_header(b"\x01\x00")
    for port in (0, -1, 65536):
        with pytest.raises(ValueError, match="between 1 and 65535"):
            encode_stream_header(port)
    assert [int(s) for s in StreamStatus] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ streams


def test_open_and_accept() -> None:
    """Client ids are odd, the server answers SYN with ACK, and the client sees StreamAccepted."""
    pair = Pair()
    assert [pair.client.open_stream() for _ in range(3)] == [1, 3, 5]
    pair.pump()
    assert pair.take_server() == [StreamOpened(1), StreamOpened(3), StreamOpened(5)]
    assert pair.take_client() == [StreamAccepted(1), StreamAccepted(3), StreamAccepted(5)]
    assert pair.server.open_stream() == 2
    pair.pump()
    assert pair.take_client() == [StreamOpened(2)]
    assert pair.take_server() == [StreamAccepted(2)]
    assert pair.client.stream_ids == pair.server.stream_ids == (1, 3, 5, 2)


def test_data_both_ways() -> None:
    """Bytes flow in order in both directions, also when frames arrive one byte at a time."""
    for chunk in (None, 1, 5):
        pair = Pair(chunk=chunk)
        stream_id = pair.client.open_stream()
        assert pair.client.send(stream_id, b"hello ") == 6
        assert pair.client.send(stream_id, b"world") == 5
        pair.pump()
        assert joined(pair.take_server(), stream_id) == b"hello world"
        assert pair.server.send(stream_id, b"back") == 4
        pair.pump()
        assert joined(pair.take_client(), stream_id) == b"back"
        assert pair.client.buffered_bytes == pair.server.buffered_bytes == 0


def test_half_close() -> None:
    """FIN closes one direction; the other keeps flowing; the stream is gone after both FINs."""
    pair = Pair()
    stream_id = pair.client.open_stream()
    pair.client.send(stream_id, b"request")
    pair.client.close_stream(stream_id)
    assert pair.client.stream_state(stream_id) is StreamState.LOCAL_CLOSED
    pair.pump()
    events = pair.take_server()
    assert events[-2:] == [DataReceived(stream_id, b"request"), StreamEOF(stream_id)]
    assert pair.server.stream_state(stream_id) is StreamState.REMOTE_CLOSED
    pair.server.send(stream_id, b"response")
    pair.server.close_stream(stream_id)
    assert pair.server.stream_state(stream_id) is StreamState.CLOSED
    pair.pump()
    assert pair.take_client()[-2:] == [DataReceived(stream_id, b"response"), StreamEOF(stream_id)]
    assert pair.client.stream_state(stream_id) is StreamState.CLOSED
    assert pair.client.stream_ids == pair.server.stream_ids == ()


def test_fin_on_data_frame_with_payload() -> None:
    """A DATA frame with FIN delivers its payload first, then the EOF."""
    server = server_with_stream()
    server.receive_data(frame(DATA, FIN, 1, 3, b"end"))
    assert server.events() == [DataReceived(1, b"end"), StreamEOF(1)]
    server.receive_data(frame(DATA, FIN, 1, 0))
    assert server.events() == []
    assert server.state is SessionState.OPEN


def test_reset() -> None:
    """RST removes the stream on both sides; late frames for it are dropped quietly."""
    pair = Pair()
    stream_id = pair.client.open_stream()
    pair.pump()
    assert pair.take_client() == [StreamAccepted(stream_id)]
    pair.take_server()
    pair.server.send(stream_id, b"in flight")
    pair.client.reset_stream(stream_id)
    pair.client.reset_stream(stream_id)  # idempotent
    pair.pump()
    assert pair.take_server() == [StreamReset(stream_id)]
    assert pair.take_client() == []  # the late DATA was dropped, with no RST back
    assert pair.client.stream_ids == pair.server.stream_ids == ()
    with pytest.raises(StreamStateError):
        pair.server.send(stream_id, b"x")


def test_rst_on_data_frame_after_payload() -> None:
    """A DATA frame with RST delivers its payload, then the reset."""
    server = server_with_stream()
    server.receive_data(frame(DATA, RST, 1, 2, b"ab"))
    assert server.events() == [DataReceived(1, b"ab"), StreamReset(1)]
    assert server.data_to_send() == b""


def test_local_reset_mid_frame_discards_rest() -> None:
    """Resetting a stream while a DATA payload is arriving drops the rest of that payload."""
    server = server_with_stream()
    server.receive_data(frame(DATA, 0, 1, 10, b"abcd"))
    assert server.events() == [DataReceived(1, b"abcd")]
    server.reset_stream(1)
    server.receive_data(b"efghij" + frame(PING, SYN, 0, 9))
    assert server.events() == [PingReceived(9)]
    assert server.state is SessionState.OPEN


# ------------------------------------------------------------------------------ flow control


def test_window_exhaustion_and_resume() -> None:
    """1 MiB crosses a 256 KiB window: sends stop at the window and resume on WINDOW_UPDATE."""
    pair = Pair()
    stream_id = pair.client.open_stream()
    payload = bytes(range(256)) * 4096  # 1 MiB
    sent = 0
    received = bytearray()
    window_events = 0
    for _ in range(100):  # about a dozen rounds are needed; a stall fails instead of hanging
        if len(received) == len(payload):
            break
        sent += pair.client.send(stream_id, payload[sent:])
        assert sent - len(received) <= INITIAL_WINDOW
        pair.pump()
        for event in pair.take_server():
            if isinstance(event, DataReceived):
                received += event.data
        # The reader takes its data in 48 KiB steps, pumping after each.
        while pair.server.unconsumed_bytes(stream_id):
            step = min(48 * 1024, pair.server.unconsumed_bytes(stream_id))
            pair.server.consumed(stream_id, step)
            pair.pump()
        window_events += sum(isinstance(e, WindowUpdated) for e in pair.take_client())
    assert bytes(received) == payload
    assert window_events >= 6  # at least one update per half window after the first
    assert pair.client.send_window(stream_id) > 0


def test_reader_that_does_not_read_stalls_the_writer() -> None:
    """Without consumed(), the writer can never put more than the window in flight."""
    pair = Pair()
    stream_id = pair.client.open_stream()
    total = 0
    for _ in range(10):
        total += pair.client.send(stream_id, b"x" * 100_000)
        pair.pump()
    assert total == INITIAL_WINDOW
    assert pair.client.send_window(stream_id) == 0
    assert pair.client.send(stream_id, b"more") == 0
    assert pair.server.unconsumed_bytes(stream_id) == INITIAL_WINDOW
    pair.server.consumed(stream_id, INITIAL_WINDOW // 2 - 1)
    pair.pump()
    assert pair.client.send_window(stream_id) == 0  # below the threshold: no update yet
    pair.server.consumed(stream_id, 1)
    pair.pump()
    assert pair.client.send_window(stream_id) == INITIAL_WINDOW // 2


def test_window_update_threshold_is_configurable() -> None:
    """A lower threshold returns credit sooner."""
    pair = Pair(window_update_threshold=1000)
    stream_id = pair.client.open_stream()
    pair.client.send(stream_id, b"x" * 5000)
    pair.pump()
    pair.server.consumed(stream_id, 1000)
    pair.pump()
    assert pair.client.send_window(stream_id) == INITIAL_WINDOW - 5000 + 1000


def test_larger_receive_window_is_granted_in_syn_and_ack() -> None:
    """A window above 256 KiB is granted in the SYN (and in the ACK) itself."""
    pair = Pair(receive_window=1024 * 1024, max_output_buffer=4 * 1024 * 1024)
    stream_id = pair.client.open_stream()
    pair.pump()
    assert pair.server.send_window(stream_id) == 1024 * 1024
    assert pair.client.send_window(stream_id) == 1024 * 1024
    assert pair.client.send(stream_id, b"y" * 2_000_000) == 1024 * 1024


def test_consumed_contract() -> None:
    """consumed() refuses more than was received or a negative count, and ignores gone streams."""
    server = server_with_stream()
    server.receive_data(frame(DATA, 0, 1, 3, b"abc"))
    with pytest.raises(ValueError, match="exceeds the 3 bytes"):
        server.consumed(1, 4)
    with pytest.raises(ValueError, match="at least 0"):
        server.consumed(1, -1)
    server.consumed(1, 3)
    assert server.unconsumed_bytes(1) == 0
    server.consumed(99, 5)  # no such stream: nothing to credit


def test_send_is_bounded_by_max_output_buffer() -> None:
    """send() stops accepting data while undrained output would exceed max_output_buffer."""
    session = Session(True, max_output_buffer=1000)
    stream_id = session.open_stream()
    accepted = session.send(stream_id, b"z" * 5000)
    assert session.pending_output_bytes <= 1000
    assert accepted == 1000 - 2 * HEADER_SIZE
    assert session.send(stream_id, b"z") == 0
    session.data_to_send()
    assert session.send(stream_id, b"z" * 5000) == 1000 - HEADER_SIZE


def test_data_to_send_max_bytes() -> None:
    """data_to_send(max_bytes) hands out the queue in pieces that concatenate to the whole."""
    session = Session(True)
    stream_id = session.open_stream()
    session.send(stream_id, b"q" * 100)
    pieces = [session.data_to_send(50) for _ in range(3)]
    assert [len(p) for p in pieces] == [50, 50, 24]
    assert b"".join(pieces)[24:] == b"q" * 100
    assert session.data_to_send(10) == b""
    session.ping()
    with pytest.raises(ValueError, match="positive"):
        session.data_to_send(0)


# ------------------------------------------------------------------------------ session control


def test_ping_pong() -> None:
    """ping() is answered with the same opaque value, and the answering side reports the ping."""
    pair = Pair()
    assert pair.client.ping() == 1
    assert pair.client.ping() == 2
    pair.pump()
    assert pair.take_server() == [PingReceived(1), PingReceived(2)]
    assert pair.take_client() == [PongReceived(1), PongReceived(2)]


def test_ping_syn_answered_with_ack() -> None:
    """PING with SYN gets PING ACK carrying the same opaque (§6.4 step 10)."""
    server = Session(False)
    server.receive_data(frame(PING, SYN, 0, 0xDEADBEEF))
    assert server.data_to_send() == frame(PING, ACK, 0, 0xDEADBEEF)
    assert server.events() == [PingReceived(0xDEADBEEF)]


def test_go_away() -> None:
    """GO_AWAY stops new streams both ways; open streams keep working."""
    pair = Pair()
    stream_id = pair.client.open_stream()
    pair.pump()
    pair.take_server()
    pair.server.go_away()
    pair.server.go_away()  # sent once only
    assert pair.server.data_to_send() == frame(GO_AWAY, 0, 0, 0)
    pair.client.receive_data(frame(GO_AWAY, 0, 0, 0))
    assert pair.client.events() == [GoAway(0)]
    assert pair.client.state is SessionState.DRAINING
    assert pair.client.remote_go_away == 0
    with pytest.raises(SessionStateError, match="needs the session to be OPEN, but it is DRAINING"):
        pair.client.open_stream()
    with pytest.raises(SessionStateError):
        pair.server.open_stream()
    with pytest.raises(ValueError, match="u32"):
        pair.client.go_away(-1)
    pair.client.send(stream_id, b"still fine")
    pair.pump()
    assert joined(pair.take_server(), stream_id) == b"still fine"


def test_syn_after_local_go_away_is_refused() -> None:
    """A SYN arriving after this side sent GO_AWAY is answered with RST."""
    server = Session(False)
    server.go_away()
    server.data_to_send()
    server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0))
    assert server.data_to_send() == frame(WINDOW_UPDATE, RST, 1, 0)
    assert server.events() == []
    assert server.stream_ids == ()


def test_max_streams_refuses_with_rst() -> None:
    """Beyond max_streams a SYN is answered with RST and the session lives on."""
    pair = Pair()
    pair.server = Session(False, max_streams=2)
    ids = [pair.client.open_stream() for _ in range(3)]
    pair.pump()
    assert pair.take_server() == [StreamOpened(1), StreamOpened(3)]
    assert StreamReset(ids[2]) in pair.take_client()
    assert pair.client.stream_ids == (1, 3)
    pair.client.send(1, b"ok")
    pair.pump()
    assert joined(pair.take_server(), 1) == b"ok"
    assert pair.server.state is SessionState.OPEN


def test_thousands_of_syns_stay_bounded() -> None:
    """A SYN flood keeps at most max_streams streams and a bounded set of remembered ids."""
    server = Session(False, max_streams=8, recently_closed_limit=100)
    flood = b"".join(frame(DATA, SYN, 2 * n + 1, 4, b"boom") for n in range(5000))
    server.receive_data(flood)
    assert len(server.stream_ids) == 8
    assert server.recently_closed_count == 100
    out = server.data_to_send()
    assert len(out) == 5000 * HEADER_SIZE  # one ACK or RST per SYN, nothing more
    assert out.count(frame(WINDOW_UPDATE, RST, 17, 0)) == 1  # ids 1..15 were admitted
    assert sum(isinstance(e, StreamOpened) for e in server.events()) == 8
    assert server.state is SessionState.OPEN


def test_unknown_stream_gets_rst_not_session_death() -> None:
    """DATA for a stream never opened is answered with one RST; the session survives."""
    server = Session(False)
    server.receive_data(frame(DATA, 0, 7, 3, b"abc") + frame(WINDOW_UPDATE, 0, 7, 10))
    assert server.data_to_send() == frame(WINDOW_UPDATE, RST, 7, 0)
    assert server.events() == []
    server.receive_data(frame(WINDOW_UPDATE, RST, 9, 0))  # never answer an RST with an RST
    assert server.data_to_send() == b""
    assert server.state is SessionState.OPEN


def test_ack_for_unopened_server_stream_gets_rst() -> None:
    """An ACK for an id of this side's parity that it never opened is answered with RST."""
    server = Session(False)
    server.receive_data(frame(WINDOW_UPDATE, ACK, 2, 0))
    assert server.data_to_send() == frame(WINDOW_UPDATE, RST, 2, 0)
    assert server.state is SessionState.OPEN


# ------------------------------------------------------------------------------ protocol errors


def test_window_overrun_is_protocol_error() -> None:
    """DATA beyond the window granted ends the session with GO_AWAY(protocol error)."""
    server = server_with_stream()
    server.receive_data(frame(DATA, 0, 1, INITIAL_WINDOW - 10, b"a" * (INITIAL_WINDOW - 10)))
    server.receive_data(frame(DATA, 0, 1, 11))
    assert_protocol_error(server)


def test_input_after_protocol_error_is_ignored() -> None:
    """After a ProtocolError the session takes no more input and queues nothing."""
    server = Session(False)
    server.receive_data(frame(DATA, 0, 1, 0, version=1))
    assert_protocol_error(server)
    server.receive_data(frame(PING, SYN, 0, 1) + frame(WINDOW_UPDATE, SYN, 1, 0))
    assert server.events() == []
    assert server.data_to_send() == b""
    server.go_away()
    server.reset_stream(1)
    assert server.data_to_send() == b""
    with pytest.raises(SessionStateError, match="CLOSED"):
        server.ping()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(DATA, SYN, 1, 0, version=1), "version"),
        (frame(7, 0, 0, 0), "unknown frame type"),
        (frame(DATA, 0, 0, 0), "stream 0"),
        (frame(WINDOW_UPDATE, 0, 0, 5), "stream 0"),
        (frame(PING, SYN, 3, 1), "PING on stream 3"),
        (frame(PING, 0, 0, 1), "without SYN or ACK"),
        (frame(GO_AWAY, 0, 1, 0), "GO_AWAY on stream 1"),
        (frame(WINDOW_UPDATE, SYN, 2, 0), "parity"),
        (frame(WINDOW_UPDATE, SYN, 3, 0) + frame(WINDOW_UPDATE, SYN, 1, 0), "reuses"),
        (frame(WINDOW_UPDATE, SYN, 1, 0) + frame(WINDOW_UPDATE, SYN, 1, 0), "reuses"),
        (frame(DATA, 0, 5, INITIAL_WINDOW + 1), "exceeds the receive window"),
        (frame(WINDOW_UPDATE, SYN, 1, 2**32 - 1), "overflows"),
        (frame(WINDOW_UPDATE, SYN, 1, 0) + frame(WINDOW_UPDATE, 0, 1, 2**32 - 1), "overflows"),
        (frame(DATA, SYN | FIN, 1, 0) + frame(DATA, 0, 1, 1, b"x"), "after the peer's FIN"),
    ],
)
def test_protocol_errors(data: bytes, reason: str) -> None:
    """Each violation becomes a ProtocolError event naming it, with GO_AWAY(1) queued."""
    server = Session(False)
    server.receive_data(data)
    events = server.events()
    assert isinstance(events[-1], ProtocolError)
    assert reason in events[-1].message
    assert server.data_to_send().endswith(frame(GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
    assert server.state is SessionState.CLOSED


# ------------------------------------------------------------------------------ state errors


def test_stream_state_errors_name_states() -> None:
    """Illegal stream calls raise StreamStateError naming the current and the allowed states."""
    session = Session(True)
    stream_id = session.open_stream()
    session.close_stream(stream_id)
    with pytest.raises(StreamStateError) as error:
        session.send(stream_id, b"x")
    assert error.value.state is StreamState.LOCAL_CLOSED
    assert error.value.expected == (StreamState.OPEN, StreamState.REMOTE_CLOSED)
    assert "needs state OPEN or REMOTE_CLOSED, but it is LOCAL_CLOSED" in str(error.value)
    with pytest.raises(StreamStateError, match="LOCAL_CLOSED"):
        session.close_stream(stream_id)
    with pytest.raises(StreamStateError, match=r"stream 41 needs .* but it is CLOSED"):
        session.send(41, b"x")
    assert session.send_window(41) == 0
    assert session.stream_state(41) is StreamState.CLOSED


def test_too_many_local_streams() -> None:
    """open_stream() beyond max_streams raises TooManyStreamsError with the limit."""
    session = Session(True, max_streams=2)
    session.open_stream()
    session.open_stream()
    with pytest.raises(TooManyStreamsError) as error:
        session.open_stream()
    assert error.value.limit == 2


def test_send_nothing_and_events_api() -> None:
    """Sending b'' queues nothing; next_event() returns events one by one, then None."""
    session = Session(True)
    stream_id = session.open_stream()
    session.data_to_send()
    assert session.send(stream_id, b"") == 0
    assert session.data_to_send() == b""
    session.receive_data(frame(PING, SYN, 0, 1) + frame(PING, ACK, 0, 2))
    assert session.pending_events == 2
    assert session.next_event() == PingReceived(1)
    assert session.next_event() == PongReceived(2)
    assert session.next_event() is None


@pytest.mark.parametrize(
    "options",
    [
        {"max_streams": 0},
        {"receive_window": INITIAL_WINDOW - 1},
        {"receive_window": 2**32},
        {"window_update_threshold": 0},
        {"window_update_threshold": INITIAL_WINDOW + 1},
        {"max_output_buffer": HEADER_SIZE},
        {"recently_closed_limit": -1},
    ],
)
def test_invalid_options(options: dict[str, int]) -> None:
    """Out-of-range options are refused at construction."""
    with pytest.raises(ValueError):
        Session(True, **options)
