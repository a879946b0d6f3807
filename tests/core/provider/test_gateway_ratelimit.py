"""The token bucket on virtual time: rate, burst, Retry-After hold, bounded waits, header parsing."""

from __future__ import annotations

import datetime as dt
import email.utils
import threading

import pytest

from regularization_pipeline.core.provider.ratelimit import (
    RateLimiter,
    RateLimitWaitTooLong,
    parse_retry_after,
)


class VirtualTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def starts(limiter: RateLimiter, vt: VirtualTime, n: int) -> list[float]:
    out = []
    for _ in range(n):
        limiter.acquire()
        out.append(round(vt.now - 1000.0, 6))
    return out


def test_burst_then_the_steady_rate():
    vt = VirtualTime()
    limiter = RateLimiter(5, burst=3, clock=vt.clock, sleeper=vt.sleep)
    assert starts(limiter, vt, 6) == [0, 0, 0, 0.2, 0.4, 0.6]


def test_idle_time_refills_up_to_the_burst_only():
    vt = VirtualTime()
    limiter = RateLimiter(2, burst=2, clock=vt.clock, sleeper=vt.sleep)
    starts(limiter, vt, 2)
    vt.now += 60  # a long pause earns no more than the burst
    assert starts(limiter, vt, 3) == [60, 60, 60.5]


def test_back_off_holds_every_call_until_retry_after_then_resumes_at_the_rate():
    vt = VirtualTime()
    limiter = RateLimiter(5, burst=5, clock=vt.clock, sleeper=vt.sleep)
    limiter.acquire()
    limiter.back_off(2.0)
    assert limiter.seconds_until_permitted() == pytest.approx(2.0)
    assert starts(limiter, vt, 3) == [2.0, 2.2, 2.4]  # no burst right after a 429


def test_a_shorter_back_off_never_shortens_a_longer_hold():
    vt = VirtualTime()
    limiter = RateLimiter(10, clock=vt.clock, sleeper=vt.sleep)
    limiter.back_off(5)
    limiter.back_off(1)
    assert starts(limiter, vt, 1) == [5.0]


def test_max_wait_raises_without_sleeping():
    vt = VirtualTime()
    limiter = RateLimiter(1, clock=vt.clock, sleeper=vt.sleep)
    limiter.back_off(30)
    with pytest.raises(RateLimitWaitTooLong) as info:
        limiter.acquire(max_wait=10)
    assert info.value.wait_seconds == pytest.approx(30) and vt.slept == []
    vt.now += 30
    assert limiter.acquire(max_wait=0) == 0


def test_threads_share_one_budget():
    vt = VirtualTime()
    lock = threading.Lock()

    def sleep(seconds):
        with lock:
            vt.now += seconds

    limiter = RateLimiter(10, clock=vt.clock, sleeper=sleep)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert vt.now - 1000.0 == pytest.approx(1.9)  # 20 calls at 10/s with a burst of 1


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_rate_must_be_positive(bad):
    with pytest.raises(ValueError):
        RateLimiter(bad)
    with pytest.raises(ValueError):
        RateLimiter(1, burst=0)


def test_parse_retry_after():
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-3", now) == 0.0
    date = email.utils.format_datetime(now + dt.timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(date, now) == 90.0
    assert (
        parse_retry_after(
            email.utils.format_datetime(now - dt.timedelta(hours=1), usegmt=True), now
        )
        == 0.0
    )
    for junk in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(junk, now) is None
