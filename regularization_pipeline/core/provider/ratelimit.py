"""Rate limiting for calls to the payment provider: a token bucket that also honours Retry-After.

A provider's API has a quota; going over it gets 429s and, with some
providers, a temporary ban. :class:`RateLimiter` spaces calls to at most
``max_requests_per_second`` with an allowance of ``burst`` back-to-back calls
(in any window of T seconds at most ``burst + rate * T`` calls start), and
after a 429 it lets no call start before the provider's ``Retry-After`` time.

The clock and the sleeper are injected so tests can run it on virtual time;
the measured tests use the real ones against a real HTTP server.

Written here rather than taken from a library: pyrate-limiter sleeps with its
own clock and has no notion of "not before this instant"; ``limits`` only
answers yes/no on wall time; aiolimiter is asyncio-only. See docs/decisions.md.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# Read off a header like any other time; named here too, where the limiter's callers look.
from regularization_pipeline.core.clock import parse_retry_after as parse_retry_after

_EPSILON = 1e-9


class RateLimitWaitTooLong(Exception):  # noqa: N818 - reads as the condition it reports
    """The next permitted call is further away than the caller is willing to wait."""

    def __init__(self, wait_seconds: float):
        super().__init__(
            f"next request permitted in {wait_seconds:.1f}s, more than the allowed wait"
        )
        self.wait_seconds = wait_seconds


class RateLimiter:
    """Thread-safe token bucket with a Retry-After hold; ``acquire()`` blocks until a call may start."""

    def __init__(
        self,
        max_requests_per_second: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleeper: Callable[[float], None] = time.sleep,
    ):
        if not max_requests_per_second > 0 or math.isinf(max_requests_per_second):
            raise ValueError("max_requests_per_second must be a positive number")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(max_requests_per_second)
        self.burst = int(burst)
        self.clock = clock
        self.sleeper = sleeper
        self._tokens = float(burst)
        self._stamp = clock()
        self._hold_until = self._stamp
        # Held while sleeping on purpose: waiting callers queue behind the one
        # about to go, so concurrent threads share one budget in arrival order.
        self._lock = threading.Lock()
        self.waited_seconds = 0.0

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def acquire(self, max_wait: float | None = None) -> float:
        """Take one token, sleeping as needed; returns the seconds waited.

        Raises :class:`RateLimitWaitTooLong` (without waiting) when the call
        could not start within ``max_wait`` seconds.
        """
        waited = 0.0
        with self._lock:
            while True:
                now = self.clock()
                self._refill(now)
                if now < self._hold_until:
                    wait = self._hold_until - now
                elif self._tokens >= 1 - _EPSILON:  # float refills land a hair under 1
                    self._tokens = max(self._tokens - 1, 0.0)
                    self.waited_seconds += waited
                    return waited
                else:
                    wait = (1 - self._tokens) / self.rate
                if max_wait is not None and waited + wait > max_wait + 1e-9:
                    self.waited_seconds += waited
                    raise RateLimitWaitTooLong(waited + wait)
                self.sleeper(wait)
                waited += wait

    def back_off(self, seconds: float) -> None:
        """No call starts in the next ``seconds`` (a 429's Retry-After); the bucket is emptied too,
        so the calls after the hold resume at the steady rate instead of bursting again."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            self._hold_until = max(self._hold_until, now + max(seconds, 0.0))
            # One token is back exactly when the hold ends, none before.
            self._tokens = 0.0
            self._stamp = self._hold_until - 1.0 / self.rate

    def seconds_until_permitted(self) -> float:
        """How long a call made now would wait (0 when one may start at once)."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            if now < self._hold_until:
                return self._hold_until - now
            return 0.0 if self._tokens >= 1 - _EPSILON else (1 - self._tokens) / self.rate
