"""What the rules say when they refuse: plain exceptions that know no protocol.

A service subclasses them with the ids its refusals carry (`OrderNotFound(order_id)`).
The HTTP edge answers each family from one table (shared.runtime.errors); a consumer's
handler that raises one fails like any other, and its event is retried and then
dead-lettered."""

from __future__ import annotations


class DomainError(Exception):
    """A rule said no; `message` says why, for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """What was asked for does not exist, or is not the caller's to see."""


class Conflict(DomainError):
    """The request contradicts what it meets: a key used for another request, an e-mail
    taken, an order past changing."""


class Invalid(DomainError):
    """The request is well formed, but names what the rules refuse (an unknown product)."""


class NotAuthenticated(DomainError):
    """Who is asking could not be established. `credential_problem`, when given, is what
    was wrong with the credential presented (a token naming nobody known here); without
    it, the credentials were simply wrong or missing."""

    def __init__(self, message: str, credential_problem: str | None = None) -> None:
        super().__init__(message)
        self.credential_problem = credential_problem


class Busy(DomainError):
    """Too much is under way to take this on now; it may succeed after `retry_after`
    seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
