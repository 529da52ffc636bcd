"""The output log and its cursors, without processes: bounds, delivery, replay from offsets."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hutch.sessions._log import CHUNK_OVERHEAD, MIN_CAPACITY, Behind, Cursor, OutputLog
from hutch.sessions._types import STREAMS, Stream
from hutch.sessions._utf8 import decode


def fill(log: OutputLog, stream: Stream, data: bytes) -> None:
    """Append like a reader does: reserve a budget, then append at most the read size."""
    while data:
        budget = log.read_budget()
        assert budget, "the log is full"
        size = OutputLog.read_size(budget)
        log.reserve(budget)
        log.release(budget)
        log.append(stream, data[:size])
        data = data[size:]


def drain(cursor: Cursor) -> list[tuple[str, int, str]]:
    out: list[tuple[str, int, str]] = []
    while (event := cursor.next()) is not None:
        out.append((event.stream, event.offset, event.data))
    cursor.ack()
    return out


def test_cursor_starts_mid_chunk_and_beyond_end() -> None:
    """A start offset inside a chunk splits it; one past the end yields nothing of that stream."""
    log = OutputLog()
    log.append("stdout", b"hello")
    log.append("stderr", b"oops")
    log.append("stdout", b" world")
    assert drain(Cursor(log, stdout_offset=3)) == [
        ("stdout", 3, "lo"),
        ("stderr", 0, "oops"),
        ("stdout", 5, " world"),
    ]
    assert drain(Cursor(log, stdout_offset=100, stderr_offset=2)) == [("stderr", 2, "ps")]


def test_full_log_of_undelivered_output_has_no_budget_until_acked() -> None:
    """Undelivered bytes are never dropped: the budget is 0 until a cursor delivers them."""
    log = OutputLog(MIN_CAPACITY)
    cursor = Cursor(log)
    while log.read_budget():
        fill(log, "stdout", b"x" * OutputLog.read_size(log.read_budget()))
    assert log.retained_from["stdout"] == 0
    first = cursor.next()
    assert first is not None
    assert not log.read_budget()  # handed out but not yet acknowledged: still undelivered
    drain(cursor)
    assert log.read_budget() > 0
    assert log.used <= log.capacity


def test_cursor_behind_dropped_bytes_raises_and_late_attach_starts_at_oldest() -> None:
    """A slow cursor whose bytes were dropped is Behind; a new cursor starts at the oldest byte."""
    log = OutputLog(MIN_CAPACITY)
    slow, fast = Cursor(log), Cursor(log)
    for i in range(50):
        fill(log, "stdout", bytes([65 + i % 26]) * 200)
        drain(fast)
    with pytest.raises(Behind):
        slow.next()
    late = Cursor(log, stdout_offset=0)
    events = drain(late)
    assert events[0][1] == log.retained_from["stdout"] > 0
    assert sum(len(e[2]) for e in events) == 50 * 200 - log.retained_from["stdout"]


def test_chunk_overhead_bounds_many_tiny_chunks() -> None:
    """Each chunk is charged its overhead, so tiny chunks cannot exceed the bound either."""
    log = OutputLog(MIN_CAPACITY)
    count = 0
    while log.read_budget():
        fill(log, "stderr", b"z")
        count += 1
    assert count * (1 + CHUNK_OVERHEAD) <= MIN_CAPACITY


class LogMachine(RuleBasedStateMachine):
    """Random appends, attaches and pulls keep the log's promises."""

    @initialize(capacity=st.integers(MIN_CAPACITY, 3 * MIN_CAPACITY))
    def setup(self, capacity: int) -> None:
        self.log = OutputLog(capacity)
        self.model: dict[Stream, bytearray] = {s: bytearray() for s in STREAMS}
        # each cursor with its next expected offset per stream
        self.cursors: list[tuple[Cursor, dict[Stream, int]]] = []

    @rule(stream=st.sampled_from(STREAMS), data=st.binary(min_size=1, max_size=3000))
    def append(self, stream: Stream, data: bytes) -> None:
        budget = self.log.read_budget()
        if not budget:
            return  # a reader would wait here (backpressure)
        self.log.reserve(budget)
        self.log.release(budget)
        data = data[: OutputLog.read_size(budget)]
        self.log.append(stream, data)
        self.model[stream] += data

    @rule(out=st.integers(0, 20_000), err=st.integers(0, 20_000))
    def attach(self, out: int, err: int) -> None:
        cursor = Cursor(self.log, out, err, max_event_bytes=512)
        start = dict(zip(STREAMS, cursor.offsets, strict=True))
        for s, wanted in zip(STREAMS, (out, err), strict=True):
            assert start[s] == max(wanted, self.log.retained_from[s])
        self.cursors.append((cursor, start))

    @precondition(lambda self: self.cursors)
    @rule(index=st.integers(0, 100), ack=st.booleans())
    def pull(self, index: int, ack: bool) -> None:
        cursor, position = self.cursors[index % len(self.cursors)]
        try:
            event = cursor.next()
        except Behind:
            # Justified: some byte it still needed is gone.
            assert any(self.log.retained_from[s] > position[s] for s in STREAMS)
            self.cursors.remove((cursor, position))
            return
        if event is None:
            return
        size = len(event.data.encode())
        # Contiguous from where it was (never a resend, never a gap) and byte-exact.
        assert event.offset == position[event.stream]
        assert event.data == decode(bytes(self.model[event.stream][event.offset :][:size]))
        position[event.stream] = event.offset + size
        if ack:
            cursor.ack()

    @invariant()
    def bounded(self) -> None:
        if hasattr(self, "log"):
            assert self.log.used <= self.log.capacity

    @invariant()
    def only_delivered_bytes_were_dropped(self) -> None:
        if hasattr(self, "log"):
            for s in STREAMS:
                assert self.log.retained_from[s] <= self.log.delivered[s]


TestLogMachine = LogMachine.TestCase
TestLogMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
