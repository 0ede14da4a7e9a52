"""Dead letters: a message that cannot be applied is parked, with why and where it came from.

The dead-letter record keeps the original key, value and headers, and adds `dlq_*`
headers. A record too large to park whole (the `dlq_*` headers push it over the
producer's size limit) is parked without its key, value and headers, which `dlq_dropped`
names; the original stays readable at `dlq_topic`/`dlq_partition`/`dlq_offset` for as long
as that topic retains it. `redrive` puts parked records back on their original topic
once the cause is fixed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.envelope import HeaderValue, KafkaHeaders, KafkaRecord, format_time, utcnow
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
"""`outbox` on an outbox relay's notice of a parked row (shared.messaging.parking): a
notice, not a record to redrive."""
OUTBOX_SOURCE = "outbox"

DROPPED = "key,value,headers"


class Reason:
    INVALID_ENVELOPE = "invalid-envelope"
    UNKNOWN_TYPE = "unknown-type"
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
        _produce(producer, topic, value, key, original + parking)
    except _TooLarge:
        size = len(key or b"") + len(value or b"")
        size += sum(len(n) + len(v or b"") for n, v in original)
        parking += [(H_DROPPED, DROPPED.encode()), (H_SIZE, str(size).encode())]
        _produce(producer, topic, None, None, parking)
    log.warning(
        "dead-lettered %s[%s]@%s for %s: %s",
        message.topic(),
        message.partition(),
        message.offset(),
        consumer,
        letter.error,
    )


def redrive(
    bootstrap: Bootstrap,
    dead_letter_topic: str,
    producer: EventProducer,
    *,
    consumer: str | None = None,
    group_id: str | None = None,
    timeout: float = 60.0,
) -> int:
    """Re-publish the records parked now (optionally only one consumer's) to their original
    topics; return how many were re-published.

    Progress is committed under `group_id` (default `redrive-<consumer>`, so redriving one
    consumer never skips another's records) after each record, so each is redriven once.
    Records parked while this runs (a redriven event failing again) wait for the next run.
    Records parked without their value are skipped with a warning: they cannot be
    re-published whole. An outbox relay's notices (`dlq_source: outbox`) are skipped: what
    they announce waits in its outbox, for `python -m tools.outbox retry`."""
    reader = Consumer(
        {
            **client_config(bootstrap),
            "group.id": group_id or f"redrive-{consumer or 'all'}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    count = 0
    try:
        backlog = _backlog(reader, dead_letter_topic, timeout)
        reader.assign([TopicPartition(dead_letter_topic, p, start) for p, (start, _) in backlog])
        ends = {partition: end for partition, (start, end) in backlog if start < end}
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redrive of {dead_letter_topic} unfinished after {timeout}s")
            message = reader.poll(0.5)
            if message is None or message.error() is not None:
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            if offset >= ends.get(partition, -1):
                continue  # parked after this run began
            count += _redrive_one(producer, message, consumer)
            position = TopicPartition(dead_letter_topic, partition, offset + 1)
            reader.commit(offsets=[position], asynchronous=False)
            if offset + 1 >= ends[partition]:
                del ends[partition]
    finally:
        reader.close()
    return count


def _redrive_one(producer: EventProducer, message: KafkaRecord, consumer: str | None) -> int:
    pairs = _pairs(message.headers())
    headers = {name: _text(value) for name, value in pairs}
    if headers.get(H_SOURCE) == OUTBOX_SOURCE:
        return 0  # a notice: the row waits in its outbox for `python -m tools.outbox retry`
    if consumer is not None and headers.get(H_CONSUMER) != consumer:
        return 0
    where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
    if not headers.get(H_TOPIC):
        log.warning("redrive: %s has no %s header: skipped", where, H_TOPIC)
        return 0
    if H_DROPPED in headers:
        log.warning("redrive: %s was parked without its %s: skipped", where, headers[H_DROPPED])
        return 0
    original = [(n, v) for n, v in pairs if not n.startswith("dlq_")]
    key, value = _bytes(message.key()), _bytes(message.value())
    try:
        _produce(producer, headers[H_TOPIC], value, key, original)
    except _TooLarge as exc:
        log.error("redrive: %s is too large for %s: skipped (%s)", where, headers[H_TOPIC], exc)
        return 0
    return 1


def _backlog(reader: Consumer, topic: str, timeout: float) -> list[tuple[int, tuple[int, int]]]:
    """Per partition of `topic`: the first offset not redriven yet and the end offset."""
    metadata = reader.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise LookupError(f"no topic {topic!r}: {metadata.error if metadata else 'missing'}")
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    backlog = []
    for committed in reader.committed(partitions, timeout=timeout):
        low, high = reader.get_watermark_offsets(committed, timeout=timeout, cached=False)
        start = low if committed.offset == OFFSET_INVALID else max(committed.offset, low)
        backlog.append((committed.partition, (start, high)))
    return backlog


class _TooLarge(DeliveryError):
    """The record exceeds the producer's or the broker's size limit: no retry will help."""

    def __init__(self, error: KafkaError | str) -> None:
        super().__init__("<raw>", error)


def _produce(
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
            raise _TooLarge(error) from exc
        raise DeliveryError("<raw>", error) from exc
    except BufferError as exc:  # the producer's local queue is full (it is shared)
        raise DeliveryError("<raw>", str(exc)) from exc
    except DeliveryError as exc:
        error = exc.error
        if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            raise _TooLarge(error) from exc
        raise


def _pairs(headers: KafkaHeaders | dict[str, HeaderValue] | None) -> KafkaHeaders:
    return list(headers.items()) if isinstance(headers, dict) else list(headers or [])


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _text(value: HeaderValue) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")
