"""Abuse limits: token buckets per caller, answered with 429 and `Retry-After`.

Each process keeps its own buckets, so N processes of a service allow N times the rate."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from fastapi import HTTPException

from shared.runtime.http import Responses, errors


class RateLimiter:
    """`rate` requests a second per key, in bursts of up to `burst`; the least recently
    seen keys are forgotten beyond `max_keys` (a forgotten key starts with a full bucket)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`: 0 if there was one, else the seconds until there is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            waited = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                waited = (1 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return waited


def enforce(*checks: tuple[RateLimiter, str]) -> None:
    """Take a token from each (limiter, key), or answer 429 with the longest wait."""
    wait = max((limiter.wait(key) for limiter, key in checks), default=0.0)
    if wait > 0:
        raise HTTPException(
            429, "too many requests: slow down", headers={"Retry-After": str(math.ceil(wait))}
        )


LIMIT_ERRORS: Responses = errors({429: "Too many requests; `Retry-After` says when to retry"})
