"""Outbox rows the relay parks: one the broker refuses for good (`unpublishable`), and one
published but not recorded, because the relay's `on_published` hook failed on its values
(`unrecorded`).

A parked row stays in its outbox with `parked_at` and `parked_reason`; the relay passes
over it, counts it (`outbox_parked_total`, `outbox_parked_events`), logs it and announces
it with a notice on the dead-letter topic, so that the explorer lists it without reading
any database. `unpark` (`python -m tools.ops.outbox SERVICE retry`) hands it back: the relay
publishes it, or, when it is on Kafka already (it kept its partition and offset), only
records it. Broker outages and timeouts are never a reason to park: those rows wait."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.messaging.deadletter import (
    H_CONSUMER,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SIZE,
    H_SOURCE,
    H_TIME,
    H_TOPIC,
    OUTBOX_SOURCE,
    Reason,
)
from shared.messaging.envelope import H_ID, H_TYPE, KafkaHeaders, format_time
from shared.messaging.producer import EventProducer
from shared.storage.db import OutboxMixin
from shared.storage.notify import notify

log = logging.getLogger(__name__)

PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError._INVALID_ARG,
    }
)
"""Errors about the record itself, which no retry can change. Anything else (the broker
away, a timeout, a leader moving, the topic missing or not authorised) waits."""

REASON_LIMIT = 1000
"""Characters kept of a reason, in the row and the notice."""
NOTICE_TIMEOUT = 10.0
"""Seconds the relay gives the notices of one batch's parked rows."""


def permanent(error: KafkaError) -> bool:
    return error.code() in PERMANENT


@dataclass(frozen=True, slots=True)
class Parking:
    """One row to park, and why."""

    row_id: int
    event_id: str
    event_type: str
    topic: str
    key: str
    reason: str
    """`Reason.UNPUBLISHABLE` or `Reason.UNRECORDED`: what a metric label can hold."""
    error: str
    """What `parked_reason` says."""
    partition: int | None = None
    offset: int | None = None
    size: int | None = None


def describe(exc: BaseException) -> str:
    """A failure in one line, fit for a text column and a header: a database error's own
    message without its statement and parameters (which may hold the very value at
    fault), NULs escaped, at most REASON_LIMIT characters."""
    cause = getattr(exc, "orig", None)
    shown = cause if isinstance(cause, BaseException) else exc
    return clean(f"{type(shown).__name__}: {shown}")


def clean(text: str) -> str:
    return " ".join(text.replace("\x00", "\\x00").split())[:REASON_LIMIT]


def record_size(row: Any) -> int:
    """The bytes of a row's record: key, value and headers."""
    parts = [row.key, *(str(part) for header in row.headers for part in header)]
    return len(row.payload) + sum(len(part.encode(errors="replace")) for part in parts)


def unpublishable(row: Any, error: KafkaError) -> Parking:
    size = record_size(row)
    return Parking(
        row.id,
        row.event_id,
        row.event_type,
        row.topic,
        row.key,
        Reason.UNPUBLISHABLE,
        clean(f"refused by Kafka: {error.name()} ({error.str()}); record of {size} bytes"),
        size=size,
    )


def unrecorded(row: Any, partition: int, offset: int, exc: BaseException) -> Parking:
    where = f"{row.topic}[{partition}]@{offset}"
    return Parking(
        row.id,
        row.event_id,
        row.event_type,
        row.topic,
        row.key,
        Reason.UNRECORDED,
        clean(f"published at {where}, not recorded: {describe(exc)}"),
        partition,
        offset,
    )


def notice(parking: Parking, source: str) -> KafkaHeaders:
    """The dead-letter headers announcing a parked row; the record has no value."""
    text = [
        (H_REASON, parking.reason),
        (H_ERROR, parking.error),
        (H_TOPIC, parking.topic),
        (H_CONSUMER, source),
        (H_SOURCE, OUTBOX_SOURCE),
        (H_TIME, format_time(utcnow())),
        (H_ID, parking.event_id[:255]),
        (H_TYPE, parking.event_type[:255]),
    ]
    if parking.offset is not None:
        text += [(H_PARTITION, str(parking.partition)), (H_OFFSET, str(parking.offset))]
    if parking.size is not None:
        text.append((H_SIZE, str(parking.size)))
    return [(name, value.encode(errors="replace")) for name, value in text]


def announce(producer: EventProducer, topic: str, parked: Sequence[Parking], source: str) -> None:
    """Send the notices of a batch's parked rows, together and best effort (for at most
    NOTICE_TIMEOUT seconds): the rows are parked whatever happens here."""
    records = [(topic, p.key[:255], None, notice(p, source)) for p in parked]
    try:
        placed = producer.send_records(records, timeout=NOTICE_TIMEOUT)
    except Exception as exc:  # the broker is away: the rows are parked all the same
        log.warning("outbox: no notice of %d parked row(s) on %s: %s", len(parked), topic, exc)
        return
    for p, where in zip(parked, placed, strict=True):
        if where.error is not None:
            log.warning("outbox: no notice of parked event %s: %s", p.event_id, where.error)


# -- the operator's side (tools.ops.outbox) ---------------------------------------------------


def parked(session: Session, model: type[OutboxMixin]) -> list[OutboxMixin]:
    """Every parked row, oldest first."""
    return list(
        session.scalars(select(model).where(model.parked_at.is_not(None)).order_by(model.id))
    )


def unpark(
    session: Session, model: type[OutboxMixin], event_ids: Sequence[str] | None = None
) -> list[str]:
    """Hand parked rows back to the relay (all of them when `event_ids` is None); return
    the event ids un-parked. A row published before keeps its partition and offset, so
    the relay records it without publishing it again."""
    chosen = [model.parked_at.is_not(None)]
    if event_ids is not None:
        chosen.append(model.event_id.in_(event_ids))
    ids = list(session.scalars(select(model.event_id).where(*chosen).order_by(model.id)))
    if ids:
        session.execute(
            update(model)
            .where(model.parked_at.is_not(None), model.event_id.in_(ids))
            .values(parked_at=None, parked_reason=None, sent_at=None)
        )
        notify(session, model.waiting_channel())
    return ids
