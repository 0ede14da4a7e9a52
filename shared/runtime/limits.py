"""Abuse limits: token buckets per caller, answered with 429 and `Retry-After`.

Each process keeps its own buckets, so N processes of a service allow N times the rate.
A bucket is one float per key (the generic cell rate algorithm: the time at which the
bucket will be full again), about 125 bytes with a 16-byte key and its slot in the table;
the least recently seen keys are forgotten beyond `max_keys`, so a limiter holds at most
about `max_keys` x 125 bytes (12.5 MB at the default)."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Hashable

from fastapi import HTTPException, Request

from shared.runtime.errors import Responses, errors


class RateLimiter:
    """`rate` requests a second per key, in bursts of up to `burst`; the least recently
    seen keys are forgotten beyond `max_keys` (a forgotten key starts with a full bucket).
    Keys are short: a client address, a user id, or a `digest` of anything longer."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._interval = 1 / rate
        self._tolerance = (burst - 1) / rate
        self._full_at: dict[Hashable, float] = {}
        """Per key: when its bucket holds `burst` tokens again (insertion order = recency)."""
        self._lock = threading.Lock()

    def wait(self, key: Hashable, now: float | None = None) -> float:
        """Take one token for `key`: 0 if there was one, else the seconds until there is
        (and nothing is taken)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            full_at = max(self._full_at.pop(key, now), now)
            waited = full_at - now - self._tolerance
            if waited > 1e-9:
                self._full_at[key] = full_at
                return waited
            self._full_at[key] = full_at + self._interval
            if len(self._full_at) > self._max_keys:
                del self._full_at[next(iter(self._full_at))]
            return 0.0

    def refund(self, key: Hashable, now: float | None = None) -> None:
        """Give back a token taken for `key` (an attempt that, in the end, did not count)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            full_at = self._full_at.get(key)
            if full_at is not None:
                self._full_at[key] = max(now, full_at - self._interval)

    def __len__(self) -> int:
        """How many keys it remembers."""
        return len(self._full_at)


def digest(*parts: str) -> bytes:
    """A 16-byte key for a value of any length (an e-mail, an e-mail and an address)."""
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()


def client_address(request: Request) -> str:
    """The client's address, as the limits key it (behind a trusted proxy, the address the
    proxy names: shared.runtime.proxy)."""
    return request.client.host if request.client else "unknown"


def enforce(*checks: tuple[RateLimiter, Hashable]) -> None:
    """Take a token from each (limiter, key) in turn, or answer 429 at the first that has
    none; the checks after a refusal are not made (and create no bucket)."""
    for limiter, key in checks:
        wait = limiter.wait(key)
        if wait > 0:
            raise HTTPException(
                429, "too many requests: slow down", headers={"Retry-After": str(math.ceil(wait))}
            )


LIMIT_ERRORS: Responses = errors({429: "Too many requests; `Retry-After` says when to retry"})
