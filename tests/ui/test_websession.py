"""Sign-in sessions kept by the server: opaque tokens, expiry, a bound, sign-out."""

from __future__ import annotations

from hutch.server._websession import WebSessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_maps_to_its_key_until_it_expires() -> None:
    """A token names the key it was made for, until ``lifetime`` seconds have passed."""
    clock = Clock()
    sessions = WebSessions(lifetime=60, clock=clock)
    token = sessions.create("hash-a")
    assert len(token) >= 40
    assert sessions.key_hash(token) == "hash-a"
    clock.now += 59
    assert sessions.key_hash(token) == "hash-a"
    clock.now += 1
    assert sessions.key_hash(token) is None
    assert len(sessions) == 0


def test_tokens_are_random_and_only_their_digest_is_kept() -> None:
    """Two sign-ins get different tokens; the store holds no token in the clear."""
    sessions = WebSessions()
    one, two = sessions.create("h"), sessions.create("h")
    assert one != two
    assert sessions.key_hash("forged") is None
    assert one not in repr(vars(sessions)) and two not in repr(vars(sessions))


def test_sign_out_deletes_the_session() -> None:
    """After delete, the token is unknown; deleting twice is harmless."""
    sessions = WebSessions()
    token = sessions.create("h")
    sessions.delete(token)
    sessions.delete(token)
    assert sessions.key_hash(token) is None


def test_the_store_is_bounded_oldest_first() -> None:
    """Past ``limit`` sessions the oldest sign-in ends; expired ones go first."""
    clock = Clock()
    sessions = WebSessions(lifetime=100, limit=3, clock=clock)
    old = sessions.create("old")
    clock.now += 50
    a, b = sessions.create("a"), sessions.create("b")
    c = sessions.create("c")
    assert sessions.key_hash(old) is None
    assert [sessions.key_hash(t) for t in (a, b, c)] == ["a", "b", "c"]
    clock.now += 60  # a, b, c have 40 s left; a new one replaces nothing live but the oldest
    d = sessions.create("d")
    assert sessions.key_hash(a) is None
    assert [sessions.key_hash(t) for t in (b, c, d)] == ["b", "c", "d"]
