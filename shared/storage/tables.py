"""The two tables every service has, on the service's own `Base`:

    class Base(DeclarativeBase):
        pass

    OutboxMessage, ProcessedEvent = shared_tables(Base)

`outbox` and `processed_events` take their columns from `OutboxMixin` and
`ProcessedEventMixin` (shared.storage.db), so every service's pair has one shape."""

from __future__ import annotations

from typing import NamedTuple, cast

from sqlalchemy.orm import DeclarativeBase

from shared.storage.db import OutboxMixin, ProcessedEventMixin


class SharedTables(NamedTuple):
    outbox: type[OutboxMixin]
    processed: type[ProcessedEventMixin]


def shared_tables(base: type[DeclarativeBase]) -> SharedTables:
    """Map `OutboxMessage` (table `outbox`) and `ProcessedEvent` (`processed_events`) on
    `base`, in the module that defines `base`; a second call returns the same pair."""
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
    tables = SharedTables(
        cast(type[OutboxMixin], outbox), cast(type[ProcessedEventMixin], processed)
    )
    type.__setattr__(base, "__shared_tables__", tables)
    return tables
