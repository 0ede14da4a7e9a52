"""Passwords are stored only as Argon2id hashes, with OWASP's recommended cost (19 MiB,
two passes, one lane): about 30 ms of one core per hash.

At most `SLOTS` hashes run at once, so a burst of sign-ups or sign-ins queues instead of
taking all memory. Hashing a new password (registering, the operator's at start-up) may
hold at most `SLOTS - 1` of them, so a flood of registrations always leaves sign-ins a
slot; at most `SLOTS` more registrations wait, for at most `REGISTRATION_WAIT` seconds,
and any other is refused at once (`HashingBusy`: come back in a second), instead of
holding a server thread in a queue without end."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import Busy

SLOTS = max(2, min(4, os.cpu_count() or 2))
"""Hashes that may run at once: one per core, two to four."""
REGISTRATION_WAIT = 1.0
"""How long a registration waits for a hashing slot before it is told to come back."""


class HashingBusy(Busy):
    """Every hashing slot registrations may use is taken, and enough are waiting."""

    def __init__(self) -> None:
        super().__init__("too many sign-ups at once: try again shortly", retry_after=1)


class HashingSlots:
    """`slots` hashes at once; new passwords may take all but one, and at most `slots`
    of them wait, for at most `wait` seconds."""

    def __init__(self, slots: int = SLOTS, wait: float = REGISTRATION_WAIT) -> None:
        if slots < 2:
            raise ValueError("at least two slots: one is kept for sign-ins")
        self.wait = wait
        self._any = threading.BoundedSemaphore(slots)
        self._new = threading.BoundedSemaphore(slots - 1)
        self._admitted = threading.BoundedSemaphore(2 * slots - 1)
        """New passwords hashing or waiting to."""

    @contextmanager
    def checking(self) -> Iterator[None]:
        """A slot for checking a password (a sign-in): waits for any slot."""
        with self._any:
            yield

    @contextmanager
    def hashing_new(self) -> Iterator[None]:
        """A slot for hashing a new password, or HashingBusy."""
        if not self._admitted.acquire(blocking=False):
            raise HashingBusy
        try:
            if not self._new.acquire(timeout=self.wait):
                raise HashingBusy
            try:
                with self._any:
                    yield
            finally:
                self._new.release()
        finally:
            self._admitted.release()


_slots = HashingSlots()


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@cache
def _dummy_hash() -> str:
    """Checked against when no account has the e-mail, so a miss costs what a hit does."""
    with _slots.checking():
        return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """The hash to store for a new password; HashingBusy when registrations already use
    every slot they may."""
    with _slots.hashing_new():
        return _hasher().hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    """Whether `password` is the one hashed in `stored`. With no account (`None`) or an
    account without a password (""), a dummy hash is checked anyway, and it is False."""
    against = stored or _dummy_hash()
    try:
        with _slots.checking():
            verified = _hasher().verify(against, password)
    except (VerificationError, InvalidHashError):
        return False
    return verified and bool(stored)
