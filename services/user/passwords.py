"""Passwords are stored only as Argon2id hashes, with OWASP's recommended cost (19 MiB,
two passes, one lane): about 30 ms of one core per hash. At most `CONCURRENT` hashes run
at once, so a burst of sign-ups or sign-ins queues instead of taking all memory."""

from __future__ import annotations

import secrets
import threading
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

CONCURRENT = 2
_slots = threading.BoundedSemaphore(CONCURRENT)


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@cache
def _dummy_hash() -> str:
    """Checked against when no account has the e-mail, so a miss costs what a hit does."""
    return hash_password(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    with _slots:
        return _hasher().hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    """Whether `password` is the one hashed in `stored`. With no account (`None`) or an
    account without a password (""), a dummy hash is checked anyway, and it is False."""
    against = stored or _dummy_hash()
    try:
        with _slots:
            verified = _hasher().verify(against, password)
    except (VerificationError, InvalidHashError):
        return False
    return verified and bool(stored)
