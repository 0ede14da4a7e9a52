"""Which failures to wait out and which to blame on the event being handled."""

from __future__ import annotations

from confluent_kafka import KafkaException
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.messaging.producer import DeliveryError

_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open")
_DEADLOCK = "40P01"
_PROGRAM_LIMIT = "54"
"""PostgreSQL's class 54, program limit exceeded (e.g. "index row size exceeds
maximum"): a value too large for the schema, which the driver reports as an
OperationalError all the same."""


def transient(exc: Exception) -> bool:
    """An outage to wait out (broker, connection, lock), not a bug to dead-letter. A value
    the database refuses (DataError, IntegrityError, a program limit) is no outage: waiting
    would only meet it again. SQLite reports bugs ("no such table") as OperationalError
    too, so only its lock and I/O errors count."""
    if isinstance(exc, DeliveryError | KafkaException):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        if "sqlite" in type(exc.orig).__module__:
            return any(word in str(exc.orig).lower() for word in _SQLITE_TRANSIENT)
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return not sqlstate.startswith(_PROGRAM_LIMIT)
    return False


def deadlock(exc: Exception) -> bool:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == _DEADLOCK
