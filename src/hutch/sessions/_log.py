"""The bounded output log of one command and the cursors that read it: no I/O, no asyncio.

One log holds the chunks of both streams in arrival order, ``(seq, stream, offset, bytes)``.
Its bound (``capacity``, default 16 MiB) is in bytes: each chunk is charged its length plus
:data:`CHUNK_OVERHEAD`, so many tiny chunks cannot grow bookkeeping without bound either.

**No silent loss.** A chunk may be dropped (oldest first, and only to make room for new
output) once it is *delivered*: some subscriber has finished sending it, or a client attached
from an offset past it (the client says it already has those bytes). Delivery is tracked as a
per-stream watermark: every byte of a stream below ``delivered[stream]`` was sent or claimed.
When undelivered chunks fill the log, :meth:`OutputLog.read_budget` answers 0 and the reader
stops reading the process, so the pipe pushes back on the writer.

**Replay history.** "Delivered" means a server finished *sending* a chunk, not that the client
got it: what is in flight in socket buffers when a connection dies comes back on a reconnect
from the client's offsets, so it must still be in the log. Undelivered output (read ahead of
every client) may fill at most :data:`MAX_AHEAD` bytes, or half the capacity if that is less
(:attr:`OutputLog.max_ahead`); the reader then waits, and the rest of the capacity keeps the
most recently delivered history (about 15 MiB of the default 16 MiB). A connection that dies with
more than that in flight (a slow client whose socket buffers hold megabytes) still loses the
difference: the reconnect starts at the oldest retained byte.

**Cursors** (:class:`Cursor`) are positions, not copies: memory is bounded by the log alone.
A cursor whose next bytes were dropped (another client already got them) is *behind*
(:class:`Behind`); the session turns that into ``SlowConsumer``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from hutch.sessions._types import STREAMS, Output, RawOutput, Stream
from hutch.sessions._utf8 import decode, piece_end

#: Default log capacity in bytes. With at most ``MAX_AHEAD`` read ahead, ~15 MiB of sent output
#: stays for replays: more than one connection can hold in flight under Linux's default TCP
#: buffer limits (``tcp_wmem`` max 4 MiB on the server + ``tcp_rmem`` max 6 MiB on the client)
#: plus the SDK's own receive queue, so a dropped connection always resumes without a gap there.
DEFAULT_CAPACITY = 16 * 1024 * 1024
#: Smallest accepted capacity in bytes.
MIN_CAPACITY = 4096
#: Most undelivered output (read ahead of every client) a log holds; the rest is history.
MAX_AHEAD = 1024 * 1024
#: Bytes charged per chunk on top of its data, for the chunk object and deque slot.
CHUNK_OVERHEAD = 64
#: Most bytes one read of a pipe takes; also the most bytes of data in one output event.
MAX_READ = 64 * 1024
MAX_EVENT_BYTES = 64 * 1024
#: A reader may hold back up to 3 bytes of an unfinished character and append them later.
_HELD = 3


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    stream: Stream
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class Behind(Exception):
    """Bytes the cursor still had to send were dropped from the log."""


class OutputLog:
    """Bounded, delivery-aware log of both streams of one command (see the module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < MIN_CAPACITY:
            raise ValueError(f"log capacity must be at least {MIN_CAPACITY} bytes")
        self.capacity = capacity
        self._chunks: deque[Chunk] = deque()
        self._used = 0
        self._reserved = 0
        self.first_seq = 0
        self.next_seq = 0
        #: Bytes appended per stream (the offset the next chunk of that stream starts at).
        self.total: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
        #: Offset of the oldest retained byte per stream (all before it were dropped).
        self.retained_from: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
        #: Per stream: every byte below this offset was delivered (or claimed) by some client.
        self.delivered: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
        # Resume reading when this much is free: bigger reads, fewer wake-ups; ≤ capacity/4 so
        # that the half-split in read_budget always leaves a reader enough to make progress.
        self._low_water = min(capacity // 4, 2 * (MAX_READ + CHUNK_OVERHEAD + _HELD))
        #: Most bytes (data, plus reservations) of undelivered output; the rest of the capacity
        #: is kept for delivered history a reconnect may need (see the module docstring).
        self.max_ahead = min(capacity // 2, MAX_AHEAD)

    # -- accounting ----------------------------------------------------------------------------

    @property
    def used(self) -> int:
        """Bytes charged for retained chunks (data plus per-chunk overhead)."""
        return self._used

    @property
    def free(self) -> int:
        return self.capacity - self._used - self._reserved

    def __len__(self) -> int:
        return len(self._chunks)

    def chunk(self, seq: int) -> Chunk:
        return self._chunks[seq - self.first_seq]

    @property
    def undelivered(self) -> int:
        """Bytes of output no client has been sent yet (both streams)."""
        return sum(self.total[s] - self.delivered[s] for s in STREAMS)

    def is_delivered(self, chunk: Chunk) -> bool:
        return chunk.end <= self.delivered[chunk.stream]

    def mark_delivered(self, stream: Stream, end: int) -> bool:
        """Record that ``stream`` bytes below ``end`` reached a client; True if that was news."""
        end = min(end, self.total[stream])
        if end <= self.delivered[stream]:
            return False
        self.delivered[stream] = end
        return True

    def make_room(self, want: int) -> int:
        """Drop delivered chunks, oldest first, until ``want`` bytes are free; return free bytes.

        Stops at the first undelivered chunk: order is kept, and undelivered bytes never go.
        """
        while self.free < want and self._chunks and self.is_delivered(self._chunks[0]):
            gone = self._chunks.popleft()
            self.first_seq += 1
            self._used -= len(gone.data) + CHUNK_OVERHEAD
            self.retained_from[gone.stream] = gone.end
        return self.free

    # -- writing -------------------------------------------------------------------------------

    def restore(self, stream: Stream, start: int, data: bytes) -> None:
        """Start ``stream`` at offset ``start`` with ``data`` as history already delivered (a
        command taken over after a server restart); only into a log with nothing of it yet."""
        if self.total[stream] or any(c.stream == stream for c in self._chunks):
            raise ValueError(f"{stream} already has output")
        self.total[stream] = self.retained_from[stream] = start
        for i in range(0, len(data), MAX_READ):
            self.append(stream, data[i : i + MAX_READ])
        self.delivered[stream] = self.total[stream]

    def read_budget(self) -> int:
        """Bytes a reader may :meth:`reserve` before its next read, or 0: wait for deliveries.

        A reader reserves at most half of what is free: two streams are read concurrently, and
        a reader blocked on a silent pipe must not hold the room the other stream needs. Free
        room beyond :attr:`max_ahead` of undelivered output is not offered: it keeps history.
        """
        free = self.make_room(self._low_water)
        room = min(free, self.max_ahead - self.undelivered - self._reserved)
        if room < self._low_water:
            return 0
        return min(room // 2, MAX_READ + CHUNK_OVERHEAD + _HELD)

    @staticmethod
    def read_size(budget: int) -> int:
        """How many bytes to read from a pipe with a reservation of ``budget``."""
        return max(1, budget - CHUNK_OVERHEAD - _HELD)

    def reserve(self, n: int) -> None:
        if n > self.free:
            raise ValueError(f"cannot reserve {n} bytes, {self.free} free")
        self._reserved += n

    def release(self, n: int) -> None:
        self._reserved -= n

    def append(self, stream: Stream, data: bytes) -> Chunk:
        """Add a chunk; the caller has made room for it (released its reservation first)."""
        cost = len(data) + CHUNK_OVERHEAD
        if cost > self.free:
            raise ValueError(f"chunk of {len(data)} bytes does not fit, {self.free} free")
        chunk = Chunk(self.next_seq, stream, self.total[stream], data)
        self._chunks.append(chunk)
        self.next_seq += 1
        self._used += cost
        self.total[stream] = chunk.end
        return chunk


class Cursor:
    """One subscriber's position in an :class:`OutputLog`.

    Yields output in arrival order from per-stream start offsets. Never yields a byte before
    the requested offset of its stream (a chunk is split when the offset falls inside it); an
    offset older than the oldest retained byte starts there instead.

    **Delivery rule (mark on pull):** the output returned by :meth:`next` counts as delivered
    when :meth:`next` is called again (the consumer finished sending it and came back for more)
    or when :meth:`ack` is called. Output handed out last, when a consumer stops, is not.
    """

    def __init__(
        self,
        log: OutputLog,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        if stdout_offset < 0 or stderr_offset < 0:
            raise ValueError("offsets must be non-negative")
        self._log = log
        self._max = max_event_bytes
        wanted: dict[Stream, int] = {"stdout": stdout_offset, "stderr": stderr_offset}
        self._next = {s: max(wanted[s], log.retained_from[s]) for s in STREAMS}
        self._seq = log.first_seq
        self._pending: tuple[Stream, int] | None = None

    @property
    def offsets(self) -> tuple[int, int]:
        """Next ``(stdout, stderr)`` offsets: where a re-attach would continue."""
        return self._next["stdout"], self._next["stderr"]

    @property
    def caught_up(self) -> bool:
        """Every chunk in the log has been handed out or skipped."""
        return max(self._seq, self._log.first_seq) >= self._log.next_seq

    def ack(self) -> bool:
        """Mark the output handed out last as delivered; True if the log learned something."""
        if self._pending is None:
            return False
        stream, end = self._pending
        self._pending = None
        return self._log.mark_delivered(stream, end)

    def next(self) -> Output | None:
        """The next output (acknowledging the previous one), or None when caught up.

        Raises :class:`Behind` if bytes this cursor still had to yield were dropped.
        """
        raw = self.next_raw()
        return None if raw is None else Output(raw.stream, decode(raw.data), raw.offset)

    def next_raw(self) -> RawOutput | None:
        """:meth:`next` with the bytes as the log holds them (no decoding, nothing lost)."""
        self.ack()
        log = self._log
        for stream in STREAMS:
            if log.retained_from[stream] > self._next[stream]:
                raise Behind(stream)
        seq = max(self._seq, log.first_seq)
        while seq < log.next_seq:
            chunk = log.chunk(seq)
            position = self._next[chunk.stream]
            if position > chunk.offset:
                # Bytes below this cursor's position were yielded (and acknowledged above) or
                # skipped because the client asked to start later: either way a client has them.
                log.mark_delivered(chunk.stream, position)
            if position >= chunk.end:
                seq += 1
                continue
            start = max(position, chunk.offset) - chunk.offset
            stop = piece_end(chunk.data, start, self._max)
            self._next[chunk.stream] = chunk.offset + stop
            self._pending = (chunk.stream, chunk.offset + stop)
            self._seq = seq + 1 if stop == len(chunk.data) else seq
            return RawOutput(chunk.stream, chunk.data[start:stop], chunk.offset + start)
        self._seq = seq
        return None
