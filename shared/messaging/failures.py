"""Which failures to wait out and which to blame on the event being handled."""

from __future__ import annotations

from confluent_kafka import KafkaException
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.messaging.producer import DeliveryError

_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open")
_DEADLOCK = "40P01"


def transient(exc: Exception) -> bool:
    """An outage to wait out (broker, connection, lock), not a bug to dead-letter. SQLite
    reports bugs ("no such table") as OperationalError too, so only its lock and I/O
    errors count."""
    if isinstance(exc, DeliveryError | KafkaException):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        if "sqlite" in type(exc.orig).__module__:
            return any(word in str(exc.orig).lower() for word in _SQLITE_TRANSIENT)
        return True
    return False


def deadlock(exc: Exception) -> bool:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == _DEADLOCK
