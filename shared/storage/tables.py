"""The tables every service has, on the service's own `Base`:

    class Base(DeclarativeBase):
        pass

    OutboxMessage, ProcessedEvent, TrustedKey, TrustedKeySet = shared_tables(Base)

`outbox`, `processed_events`, `trusted_keys` and `trusted_key_sets` take their columns
from `OutboxMixin`, `ProcessedEventMixin`, `TrustedKeyMixin` and `TrustedKeySetMixin`
(shared.storage.db), so every service's tables have one shape."""

from __future__ import annotations

from typing import NamedTuple, cast

from sqlalchemy.orm import DeclarativeBase

from shared.storage.db import (
    OutboxMixin,
    ProcessedEventMixin,
    TrustedKeyMixin,
    TrustedKeySetMixin,
)


class SharedTables(NamedTuple):
    outbox: type[OutboxMixin]
    processed: type[ProcessedEventMixin]
    trusted_keys: type[TrustedKeyMixin]
    trusted_key_sets: type[TrustedKeySetMixin]


def shared_tables(base: type[DeclarativeBase]) -> SharedTables:
    """Map `OutboxMessage` (table `outbox`), `ProcessedEvent` (`processed_events`),
    `TrustedKey` (`trusted_keys`) and `TrustedKeySet` (`trusted_key_sets`) on `base`, in the
    module that defines `base`; a second call returns the same classes."""
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
    trusted_sets = type(
        "TrustedKeySet",
        (TrustedKeySetMixin, base),
        {"__tablename__": "trusted_key_sets", "__module__": base.__module__},
    )
    tables = SharedTables(
        cast(type[OutboxMixin], outbox),
        cast(type[ProcessedEventMixin], processed),
        cast(type[TrustedKeyMixin], trusted),
        cast(type[TrustedKeySetMixin], trusted_sets),
    )
    type.__setattr__(base, "__shared_tables__", tables)
    return tables
