"""All command sessions of a server, by owner (sandbox id) and command id."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from hutch.runtime._interface import Process
from hutch.sessions._clock import AsyncioClock, Clock
from hutch.sessions._errors import (
    CommandNotFound,
    SessionError,
    SessionExpired,
    ShuttingDown,
    TooManySessions,
)
from hutch.sessions._log import CHUNK_OVERHEAD, DEFAULT_CAPACITY, MAX_READ, MIN_CAPACITY
from hutch.sessions._session import CommandSession
from hutch.sessions._types import SessionOptions, SessionState, Stream

log = logging.getLogger("hutch.sessions")

#: Running commands one owner may have at once.
DEFAULT_MAX_RUNNING = 256
#: Finished sessions one owner keeps for reconnects; past it the oldest expire early.
DEFAULT_MAX_FINISHED = 32
#: How many expired ids (all owners) are remembered to answer ``SessionExpired``; older ones
#: answer ``CommandNotFound``.
DEFAULT_REMEMBERED_EXPIRED = 10_000
#: Longest accepted client-supplied command id (0.15.1 sends 32 hex digits).
MAX_COMMAND_ID = 128

_Key = tuple[str, str]


@dataclass
class Recovered:
    """A command an earlier server started, to become a session again (same id)."""

    command_id: str
    process: Process
    options: SessionOptions
    #: Per stream: the offset ``data`` starts at, and the most recent output (see
    #: :meth:`SessionManager.recover`).
    history: dict[Stream, tuple[int, bytes]]


async def _discard(process: Process) -> None:
    try:
        await process.kill()
    finally:
        await process.close()


class SessionManager:
    """Get-or-create and look-up of :class:`CommandSession` s; one per server.

    Owners (sandbox ids) are separate namespaces: an id of another owner is ``CommandNotFound``.
    Memory is bounded per owner by ``max_running_per_owner`` running and
    ``max_finished_per_owner`` finished sessions, each with a log of ``log_capacity`` bytes,
    and for all owners together by ``log_budget`` bytes of logs: when a session starts or
    exits with more than that held, finished sessions (of any owner) are forgotten, the one
    that finished first first, until the total fits (a client still reading one keeps it
    until it detaches). Running sessions are never cut short: their logs are what their
    clients have not received yet.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        log_capacity: int = DEFAULT_CAPACITY,
        max_running_per_owner: int = DEFAULT_MAX_RUNNING,
        max_finished_per_owner: int = DEFAULT_MAX_FINISHED,
        remembered_expired: int = DEFAULT_REMEMBERED_EXPIRED,
        log_budget: int | None = None,
    ) -> None:
        if log_capacity < MIN_CAPACITY:
            raise ValueError(f"log_capacity must be at least {MIN_CAPACITY} bytes")
        if max_running_per_owner < 1 or max_finished_per_owner < 0 or remembered_expired < 0:
            raise ValueError("session limits must be positive")
        if log_budget is not None and log_budget < 0:
            raise ValueError("log_budget must not be negative")
        self._clock: Clock = clock or AsyncioClock()
        self._log_capacity = log_capacity
        self._max_running = max_running_per_owner
        self._max_finished = max_finished_per_owner
        self._remembered = remembered_expired
        self._log_budget = log_budget
        #: Finished sessions of every owner, in the order they finished (oldest first).
        self._finished: OrderedDict[CommandSession, None] = OrderedDict()
        self._sessions: dict[str, dict[str, CommandSession]] = {}
        self._starting: dict[_Key, asyncio.Event] = {}
        self._expired: OrderedDict[_Key, None] = OrderedDict()
        self._retired: set[CommandSession] = set()  # expired; their task may still be finishing
        self._generation: dict[str, int] = {}  # bumped by close_owner
        #: Per owner, the one take-over of an earlier server's commands (see recover).
        self._recovering: dict[str, asyncio.Future[None]] = {}
        self._closed = False

    @property
    def history_bytes(self) -> int:
        """Most bytes of history a recovered session's log takes (both streams together):
        what the log keeps beside its read-ahead, less the chunks' bookkeeping."""
        room = self._log_capacity - min(self._log_capacity // 2, 1024 * 1024)
        # Less a read per stream: room for the first reads after the take-over.
        return max(0, room * MAX_READ // (MAX_READ + CHUNK_OVERHEAD) - 2 * MAX_READ)

    async def recover(
        self, owner: str, load: Callable[[int], Awaitable[Iterable[Recovered]]]
    ) -> None:
        """Once per owner (later calls wait for the first): make sessions again of the commands
        an earlier server left running (or finished, not yet expired), as ``load`` returns them
        given :attr:`history_bytes`. A failure is logged; the owner counts as recovered."""
        attempt = self._recovering.get(owner)
        if attempt is None:
            attempt = asyncio.ensure_future(self._recover(owner, load))
            self._recovering[owner] = attempt
        await asyncio.shield(attempt)

    async def _recover(
        self, owner: str, load: Callable[[int], Awaitable[Iterable[Recovered]]]
    ) -> None:
        try:
            found = list(await load(self.history_bytes))
        except Exception:
            log.exception("sandbox %s: cannot take over its earlier commands", owner)
            return
        for r in found:
            if self._closed or r.command_id in self._sessions.get(owner, {}):
                await _discard(r.process)
                continue
            try:
                session = CommandSession(
                    r.command_id,
                    owner,
                    r.process,
                    r.options,
                    clock=self._clock,
                    log_capacity=self._log_capacity,
                    on_expired=self._on_expired,
                    on_exited=self._on_exited,
                    history=r.history,
                )
            except Exception:
                log.exception("sandbox %s: cannot take over command %s", owner, r.command_id)
                await _discard(r.process)
                continue
            self._sessions.setdefault(owner, {})[r.command_id] = session
            log.info("sandbox %s: took over command %s", owner, r.command_id)
        self._trim_finished(owner)
        self._keep_to_budget()

    async def start(
        self,
        owner: str,
        spawn: Callable[[], Awaitable[Process]],
        options: SessionOptions,
        command_id: str | None = None,
    ) -> tuple[CommandSession, bool]:
        """Get or create the session ``command_id`` of ``owner``; returns ``(session, created)``.

        A known id returns its session without spawning (spec §9.1: clients re-send the same
        ``execute``); concurrent calls with one id spawn once. Without an id, a fresh 32-hex id
        is generated. Raises :class:`SessionExpired` for an id whose session expired,
        :class:`TooManySessions` past the running limit, and whatever ``spawn`` raises.
        """
        if self._closed:
            raise ShuttingDown()
        if command_id is None:
            command_id = uuid.uuid4().hex
        elif not command_id or len(command_id) > MAX_COMMAND_ID:
            raise ValueError(f"command_id must be 1 to {MAX_COMMAND_ID} characters")
        key = (owner, command_id)
        while True:
            existing = self._sessions.get(owner, {}).get(command_id)
            if existing is not None:
                return existing, False
            if key in self._expired:
                raise SessionExpired(command_id)
            pending = self._starting.get(key)
            if pending is None:
                break
            await pending.wait()  # then look again: it exists now, or that spawn failed
        running = sum(1 for s in self._sessions.get(owner, {}).values() if s.running)
        running += sum(1 for o, _ in self._starting if o == owner)
        if running >= self._max_running:
            raise TooManySessions(owner, self._max_running)
        started = asyncio.Event()
        self._starting[key] = started
        generation = self._generation.get(owner, 0)
        try:
            process = await spawn()
            if self._closed or self._generation.get(owner, 0) != generation:
                await _discard(process)
                if self._closed:
                    raise ShuttingDown()
                raise SessionError(f"Sandbox {owner} was deleted while the command was starting")
            try:
                session = CommandSession(
                    command_id,
                    owner,
                    process,
                    options,
                    clock=self._clock,
                    log_capacity=self._log_capacity,
                    on_expired=self._on_expired,
                    on_exited=self._on_exited,
                )
            except BaseException:
                await _discard(process)
                raise
            self._sessions.setdefault(owner, {})[command_id] = session
        finally:
            del self._starting[key]
            started.set()
        self._trim_finished(owner)
        self._keep_to_budget()
        return session, True

    def get(self, owner: str, command_id: str) -> CommandSession:
        """The live session, or :class:`SessionExpired` / :class:`CommandNotFound`."""
        session = self._sessions.get(owner, {}).get(command_id)
        if session is not None:
            return session
        key = (owner, command_id)
        if key in self._expired:
            self._expired.move_to_end(key)
            raise SessionExpired(command_id)
        raise CommandNotFound(command_id)

    def list(self, owner: str) -> list[CommandSession]:
        """Sessions of ``owner`` that have not expired, oldest first."""
        return list(self._sessions.get(owner, {}).values())

    async def close_owner(self, owner: str) -> None:
        """Kill and forget every session of ``owner`` (its sandbox is being deleted)."""
        self._generation[owner] = self._generation.get(owner, 0) + 1
        sessions = self._sessions.pop(owner, {})
        for session in sessions.values():
            self._finished.pop(session, None)
        for key in [k for k in self._expired if k[0] == owner]:
            del self._expired[key]
        await self._close_all(sessions.values())

    async def aclose(self) -> None:
        """Kill every session (but let go of those whose command survives a restart: see
        :meth:`CommandSession.abandon`) and wait for all their tasks; later starts raise
        ShuttingDown."""
        self._closed = True
        for attempt in self._recovering.values():
            attempt.cancel()
        await asyncio.gather(*self._recovering.values(), return_exceptions=True)
        sessions = [s for by_id in self._sessions.values() for s in by_id.values()]
        self._sessions.clear()
        self._finished.clear()
        async with asyncio.TaskGroup() as tg:
            for session in sessions:
                tg.create_task(session.abandon(), name=f"abandon-{session.command_id}")
        for session in list(self._retired):
            await session.wait_closed()
        self._retired.clear()

    @staticmethod
    async def _close_all(sessions: Iterable[CommandSession]) -> None:
        async with asyncio.TaskGroup() as tg:
            for session in sessions:
                tg.create_task(session.aclose(), name=f"close-{session.command_id}")

    def _on_expired(self, session: CommandSession) -> None:
        """Called by a session when it expires (TTL or trimming)."""
        self._finished.pop(session, None)
        by_id = self._sessions.get(session.owner, {})
        if by_id.get(session.command_id) is not session:
            return  # already dropped by close_owner/aclose
        del by_id[session.command_id]
        if not by_id:
            self._sessions.pop(session.owner, None)
        self._expired[(session.owner, session.command_id)] = None
        while len(self._expired) > self._remembered:
            self._expired.popitem(last=False)
        # Its task is still releasing the process: keep it owned until it is done.
        self._retired = {s for s in self._retired if not s.closed}
        self._retired.add(session)

    def _on_exited(self, session: CommandSession) -> None:
        """Called by a session when its command exits."""
        if self._sessions.get(session.owner, {}).get(session.command_id) is session:
            self._finished[session] = None
            self._keep_to_budget()

    @property
    def log_bytes(self) -> int:
        """Bytes held by the logs of every session not yet expired."""
        return sum(s.log_bytes for by_id in self._sessions.values() for s in by_id.values())

    def _keep_to_budget(self) -> None:
        if self._log_budget is None:
            return
        total = self.log_bytes
        while total > self._log_budget and self._finished:
            session, _ = self._finished.popitem(last=False)
            total -= session.log_bytes
            if session.state is SessionState.EXITED:
                session.expire()

    def _trim_finished(self, owner: str) -> None:
        finished = [
            s for s in self._sessions.get(owner, {}).values() if s.state is SessionState.EXITED
        ]
        for session in finished[: max(0, len(finished) - self._max_finished)]:
            session.expire()
