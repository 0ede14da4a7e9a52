"""Passwords are stored only as Argon2id hashes (argon2-cffi's defaults: RFC 9106's
low-memory profile)."""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Checked against when no account has the e-mail, so a miss costs what a hit does."""
    return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    """Whether `password` is the one hashed in `stored`. With no account (`None`) or an
    account without a password (""), a dummy hash is checked anyway, and it is False."""
    try:
        verified = _hasher().verify(stored or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return verified and bool(stored)
