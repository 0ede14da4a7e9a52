"""Dead letters: a message that cannot be applied is parked, with why and where it came from.

The dead-letter record keeps the original key, value and headers, and adds `dlq_*`
headers. A record too large to park whole (the `dlq_*` headers push it over the
producer's size limit) is parked without its key, value and headers, which `dlq_dropped`
names; the original stays readable at `dlq_topic`/`dlq_partition`/`dlq_offset` for as long
as that topic retains it. `shared.messaging.redrive` puts parked records back, re-read
from where they came from, once the cause is fixed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

from shared.clock import utcnow
from shared.messaging.envelope import HeaderValue, KafkaHeaders, KafkaRecord, format_time
from shared.messaging.producer import DeliveryError, EventProducer

log = logging.getLogger(__name__)

DEAD_LETTERS = "dead-letters"
"""The dead-letter topic's name, after the stack's topic prefix."""

H_REASON = "dlq_reason"
H_ERROR = "dlq_error"
H_TOPIC = "dlq_topic"
H_PARTITION = "dlq_partition"
H_OFFSET = "dlq_offset"
H_CONSUMER = "dlq_consumer"
H_TIME = "dlq_time"
H_DROPPED = "dlq_dropped"
"""Set when the record was too large to park whole: what of it was left out."""
H_SIZE = "dlq_size"
"""With `dlq_dropped`, or on a notice of an outbox row too large to publish: the
record's key, value and header bytes."""
H_SOURCE = "dlq_source"
"""Who parked it: `consumer` (or no header) for a consumer's dead letter; `outbox` on an
outbox relay's notice of a parked row (shared.messaging.parking), a notice, not a record
to redrive."""
CONSUMER_SOURCE = "consumer"
OUTBOX_SOURCE = "outbox"

DROPPED = "key,value,headers"


class Reason:
    INVALID_ENVELOPE = "invalid-envelope"
    UNKNOWN_TYPE = "unknown-type"
    WRONG_TOPIC = "wrong-topic"
    """An event type the service handles, on a topic other than its own."""
    INVALID_PAYLOAD = "invalid-payload"
    CONFLICT = "conflicting-duplicate"
    HANDLER_FAILED = "handler-failed"
    UNPUBLISHABLE = "unpublishable"
    """An outbox row the broker refuses for good (a relay's notice)."""
    UNRECORDED = "unrecorded"
    """An outbox row published but not recorded by the relay's hook (a relay's notice)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    error: str


def dead_letter(
    producer: EventProducer, topic: str, message: KafkaRecord, consumer: str, letter: DeadLetter
) -> None:
    """Park `message` on the dead-letter topic; returns once the broker acknowledged it.

    Raises DeliveryError when the broker cannot be reached (the caller retries later)."""
    original = [(n, v) for n, v in _pairs(message.headers()) if not n.startswith("dlq_")]
    parking: KafkaHeaders = [
        (H_REASON, letter.reason.encode()),
        (H_ERROR, letter.error[:2000].encode(errors="replace")),
        (H_TOPIC, (message.topic() or "").encode()),
        (H_PARTITION, str(message.partition()).encode()),
        (H_OFFSET, str(message.offset()).encode()),
        (H_CONSUMER, consumer.encode()),
        (H_TIME, format_time(utcnow()).encode()),
    ]
    key, value = _bytes(message.key()), _bytes(message.value())
    try:
        produce_record(producer, topic, value, key, original + parking)
    except TooLarge:
        size = len(key or b"") + len(value or b"")
        size += sum(len(n) + len(v or b"") for n, v in original)
        parking += [(H_DROPPED, DROPPED.encode()), (H_SIZE, str(size).encode())]
        produce_record(producer, topic, None, None, parking)
    log.warning(
        "dead-lettered %s[%s]@%s for %s: %s",
        message.topic(),
        message.partition(),
        message.offset(),
        consumer,
        letter.error,
    )


class TooLarge(DeliveryError):
    """The record exceeds the producer's or the broker's size limit: no retry will help."""

    def __init__(self, error: KafkaError | str) -> None:
        super().__init__("<raw>", error)


def produce_record(
    producer: EventProducer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: KafkaHeaders,
) -> None:
    """`produce_raw`, with a record over the size limit told apart from a broker outage."""
    try:
        producer.produce_raw(topic, value, key=key, headers=headers)
    except KafkaException as exc:  # refused before it was queued
        error = exc.args[0]
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            raise TooLarge(error) from exc
        raise DeliveryError("<raw>", error) from exc
    except BufferError as exc:  # the producer's local queue is full (it is shared)
        raise DeliveryError("<raw>", str(exc)) from exc
    except DeliveryError as exc:
        error = exc.error
        if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            raise TooLarge(error) from exc
        raise


def _pairs(headers: KafkaHeaders | dict[str, HeaderValue] | None) -> KafkaHeaders:
    return list(headers.items()) if isinstance(headers, dict) else list(headers or [])


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
