"""The tables every service has, on the service's own `Base`:

    class Base(DeclarativeBase):
        pass

    OutboxMessage, ProcessedEvent, TrustedKey = shared_tables(Base)

`outbox`, `processed_events` and `trusted_keys` take their columns from `OutboxMixin`,
`ProcessedEventMixin` and `TrustedKeyMixin` (shared.storage.db), so every service's
tables have one shape."""

from __future__ import annotations

from typing import NamedTuple, cast

from sqlalchemy.orm import DeclarativeBase

from shared.storage.db import OutboxMixin, ProcessedEventMixin, TrustedKeyMixin


class SharedTables(NamedTuple):
    outbox: type[OutboxMixin]
    processed: type[ProcessedEventMixin]
    trusted_keys: type[TrustedKeyMixin]


def shared_tables(base: type[DeclarativeBase]) -> SharedTables:
    """Map `OutboxMessage` (table `outbox`), `ProcessedEvent` (`processed_events`) and
    `TrustedKey` (`trusted_keys`) on `base`, in the module that defines `base`; a second
    call returns the same classes."""
    if (mapped := base.__dict__.get("__shared_tables__")) is not None:
        return cast(SharedTables, mapped)
    outbox = type(
        "OutboxMessage",
        (OutboxMixin, base),
        {"__tablename__": "outbox", "__module__": base.__module__},
    )
    processed = type(
        "ProcessedEvent",
        (ProcessedEventMixin, base),
        {"__tablename__": "processed_events", "__module__": base.__module__},
    )
    trusted = type(
        "TrustedKey",
        (TrustedKeyMixin, base),
        {"__tablename__": "trusted_keys", "__module__": base.__module__},
    )
    tables = SharedTables(
        cast(type[OutboxMixin], outbox),
        cast(type[ProcessedEventMixin], processed),
        cast(type[TrustedKeyMixin], trusted),
    )
    type.__setattr__(base, "__shared_tables__", tables)
    return tables
