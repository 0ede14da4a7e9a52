"""A Kafka record of the stack decoded as far as it goes, and a reader of the stack's
topics that joins no group: what `tools.ops.tail` prints and the explorer's search
answers (tools.ops.search finds the records)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import Consumer

from services import registry
from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.envelope import Envelope, HeaderValue, KafkaRecord


class TimedRecord(KafkaRecord, Protocol):
    """A consumed record with its Kafka timestamp, as `confluent_kafka.Message` has it."""

    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class Row:
    """One record, decoded as far as it goes: `event` is None when it could not be, and
    `error` says why; `dead_letter` holds a parked record's `dlq_*` headers, unprefixed."""

    topic: str
    partition: int
    offset: int
    time: datetime | None
    key: str
    event: Envelope | None = None
    error: str | None = None
    dead_letter: dict[str, str] | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @property
    def trace_id(self) -> str | None:
        parts = (self.event.traceparent or "").split("-") if self.event else []
        return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None

    def sort_key(self) -> tuple[datetime, str, int, int]:
        return (self.time or _EPOCH, self.topic, self.partition, self.offset)


_EPOCH = datetime.fromtimestamp(0, UTC)


def decode(record: TimedRecord) -> Row:
    """Whatever the record holds, a Row (this never raises). Its time is the event's
    `ce_time`, a dead letter's `dlq_time`, or else the record's Kafka timestamp."""
    headers = record.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    parked = {name[4:]: _text(value) for name, value in pairs if name.startswith("dlq_")}
    raw_key = record.key()
    key = raw_key.decode(errors="replace") if isinstance(raw_key, bytes) else (raw_key or "")
    event: Envelope | None = None
    error: str | None = None
    try:
        event = Envelope.from_message(record)
    except Exception as exc:  # InvalidEnvelope, or anything else odd about the record
        error = str(exc) or repr(exc)
    letter = parked if "reason" in parked else None
    when = _parse_time(parked.get("time", "")) if letter else None
    return Row(
        topic=record.topic() or "",
        partition=record.partition() or 0,
        offset=record.offset() or 0,
        time=when or (event.time if event else _timestamp(record)),
        key=key,
        event=event,
        error=error,
        dead_letter=letter,
    )


def as_dict(row: Row) -> dict[str, Any]:
    """Every field of a row, None where the record has none (`--json`, the explorer's
    search)."""
    event = row.event
    return {
        "time": format_time(row.time) if row.time else None,
        "topic": row.topic,
        "partition": row.partition,
        "offset": row.offset,
        "type": event.type if event else None,
        "key": row.key,
        "id": event.id if event else None,
        "source": event.source if event else None,
        "correlation_id": event.correlation_id if event else None,
        "causation_id": event.causation_id if event else None,
        "trace_id": row.trace_id,
        "traceparent": event.traceparent if event else None,
        "data": event.json() if event else None,
        "undecodable": row.error,
        "dead_letter": row.dead_letter,
    }


def format_time(value: datetime) -> str:
    """UTC to the millisecond: `2026-11-30T16:58:36.123Z`."""
    utc = value.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _timestamp(record: TimedRecord) -> datetime | None:
    kind, millis = record.timestamp()
    return datetime.fromtimestamp(millis / 1000, UTC) if kind else None


def _text(value: HeaderValue) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def stack_topics(prefix: str) -> list[str]:
    """The stack's topics: those the registered services publish, and dead-letters."""
    names = {DEAD_LETTERS}
    for service in registry.SERVICES:
        names.update(event.topic for event in registry.load(f"{service.package}.events:PUBLISHES"))
    return sorted(prefix + name for name in names)


def reader(kafka: Bootstrap, prefix: str = "") -> Consumer:
    """A consumer for `assign()` only: its group id is its own and it never commits."""
    return Consumer(
        client_config(
            kafka,
            **{
                # an observer's group (its ACL allows `<prefix>observer*`), never joined
                "group.id": f"{prefix}observer-tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "log_level": 0,  # a broker that does not answer is said once, by main
            },
        )
    )
