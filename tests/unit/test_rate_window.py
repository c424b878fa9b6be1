"""The API's moving-window rate limit (libs/http/ratelimit.py, ADR 0028) on a clock the test
moves: at most `amount` hits in any window, the wait until the oldest hit leaves it, one
window per identity and kind, idle identities forgotten."""

from __future__ import annotations

import pytest

from libs.http.ratelimit import MovingWindow, SessionKeys, parse_limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_amount_hits_in_any_window_then_the_wait_for_the_oldest() -> None:
    clock = Clock()
    window = MovingWindow(clock)
    [limit] = parse_limits("3/minute")
    assert (limit.amount, limit.seconds, limit.text) == (3, 60.0, "3 per 1 minute")
    for step in (0.0, 10.0, 20.0):
        clock.now += step
        assert window.hit(limit, "key", "a") == 0
    assert window.hit(limit, "key", "a") == pytest.approx(30.0)  # first hit at +0, now +30
    clock.now += 30.5  # the first hit has left the window: one more, and no more
    assert window.hit(limit, "key", "a") == 0
    assert window.hit(limit, "key", "a") == pytest.approx(9.5)  # until the +10 hit leaves
    # A refused hit is not counted: only the allowed ones fill the window.
    clock.now += 9.6
    assert window.hit(limit, "key", "a") == 0


def test_each_identity_and_kind_has_its_own_window() -> None:
    window = MovingWindow(Clock())
    [limit] = parse_limits("1/second")
    assert window.hit(limit, "key", "a") == 0
    assert window.hit(limit, "key", "a") > 0
    assert window.hit(limit, "key", "b") == 0
    assert window.hit(limit, "address", "a") == 0


def test_several_limits_in_one_notation() -> None:
    clock = Clock()
    window = MovingWindow(clock)
    per_second, per_minute = parse_limits("2/second;3/minute")
    for _ in range(2):
        assert window.hit(per_second, "key", "a") == 0 and window.hit(per_minute, "key", "a") == 0
    assert window.hit(per_second, "key", "a") > 0
    clock.now += 1.5
    assert window.hit(per_second, "key", "a") == 0 and window.hit(per_minute, "key", "a") == 0
    clock.now += 1.5
    assert window.hit(per_second, "key", "a") == 0
    assert window.hit(per_minute, "key", "a") == pytest.approx(57.0)


def test_bad_notation_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_limits("lots")


def test_idle_identities_are_forgotten() -> None:
    clock = Clock()
    window = MovingWindow(clock, sweep_seconds=60.0)
    [limit] = parse_limits("5/minute")
    for n in range(100):
        window.hit(limit, "address", f"10.0.0.{n}")
    assert len(window) == 100
    clock.now += 30.0
    window.hit(limit, "address", "10.0.0.1")  # before the sweep is due: all kept
    assert len(window) == 100
    clock.now += 31.0  # a sweep is due; only 10.0.0.1 hit within the last minute
    window.hit(limit, "address", "10.0.0.200")
    assert len(window) == 2


async def test_a_session_is_looked_up_once_per_ttl_and_the_cache_is_bounded() -> None:
    clock = Clock()
    looked: list[str] = []

    async def lookup(token: str) -> str | None:
        looked.append(token)
        return {"s1": "digest-a"}.get(token)

    sessions = SessionKeys(lookup, ttl_seconds=60, max_entries=2, clock=clock)
    assert await sessions.digest("s1") == "digest-a"
    assert await sessions.digest("s1") == "digest-a"
    assert await sessions.digest("nope") is None
    assert await sessions.digest("nope") is None  # a miss is remembered too
    assert looked == ["s1", "nope"]
    clock.now += 61  # expired: looked up again
    assert await sessions.digest("s1") == "digest-a"
    assert looked == ["s1", "nope", "s1"]
    await sessions.digest("s3")  # a third token: the oldest ("nope") is forgotten
    await sessions.digest("nope")
    assert looked[-1] == "nope" and len(looked) == 5
