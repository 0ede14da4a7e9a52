"""Dead letters: a message that cannot be applied is parked, with why and where it came from.

The dead-letter record keeps the original key, value and headers, and adds `dlq_*`
headers. `redrive` puts parked records back on their original topic once the cause is
fixed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from shared.envelope import HeaderValue, KafkaHeaders, KafkaRecord, format_time, utcnow
from shared.producer import EventProducer

log = logging.getLogger(__name__)

H_REASON = "dlq_reason"
H_ERROR = "dlq_error"
H_TOPIC = "dlq_topic"
H_PARTITION = "dlq_partition"
H_OFFSET = "dlq_offset"
H_CONSUMER = "dlq_consumer"
H_TIME = "dlq_time"


class Reason:
    INVALID_ENVELOPE = "invalid-envelope"
    UNKNOWN_TYPE = "unknown-type"
    INVALID_PAYLOAD = "invalid-payload"
    CONFLICT = "conflicting-duplicate"
    HANDLER_FAILED = "handler-failed"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    error: str


def dead_letter(
    producer: EventProducer, topic: str, message: KafkaRecord, consumer: str, letter: DeadLetter
) -> None:
    """Park `message` on the dead-letter topic; returns once the broker acknowledged it."""
    headers: KafkaHeaders = [
        (name, value) for name, value in _pairs(message.headers()) if not name.startswith("dlq_")
    ]
    headers += [
        (H_REASON, letter.reason.encode()),
        (H_ERROR, letter.error[:2000].encode(errors="replace")),
        (H_TOPIC, (message.topic() or "").encode()),
        (H_PARTITION, str(message.partition()).encode()),
        (H_OFFSET, str(message.offset()).encode()),
        (H_CONSUMER, consumer.encode()),
        (H_TIME, format_time(utcnow()).encode()),
    ]
    key = message.key()
    value = message.value()
    producer.produce_raw(
        topic,
        value.encode() if isinstance(value, str) else value,
        key=key.encode() if isinstance(key, str) else key,
        headers=headers,
    )
    log.warning(
        "dead-lettered %s[%s]@%s for %s: %s",
        message.topic(),
        message.partition(),
        message.offset(),
        consumer,
        letter.error,
    )


def redrive(
    bootstrap: str,
    dead_letter_topic: str,
    producer: EventProducer,
    *,
    consumer: str | None = None,
    group_id: str = "redrive",
    idle_timeout: float = 5.0,
) -> int:
    """Re-publish parked records (optionally only one consumer's) to their original topic.

    Progress is committed under `group_id`, so each parked record is redriven once."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    reader.subscribe([dead_letter_topic])
    count = 0
    try:
        while True:
            message = reader.poll(idle_timeout)
            if message is None:
                return count
            if message.error():
                continue
            pairs = _pairs(message.headers())
            headers = {name: _text(value) for name, value in pairs}
            if consumer is None or headers.get(H_CONSUMER) == consumer:
                original = [(n, v) for n, v in pairs if not n.startswith("dlq_")]
                producer.produce_raw(
                    headers[H_TOPIC], message.value(), key=message.key(), headers=original
                )
                count += 1
            position = TopicPartition(
                dead_letter_topic, message.partition() or 0, (message.offset() or 0) + 1
            )
            reader.commit(offsets=[position], asynchronous=False)
    finally:
        reader.close()


def _pairs(headers: KafkaHeaders | dict[str, HeaderValue] | None) -> KafkaHeaders:
    return list(headers.items()) if isinstance(headers, dict) else list(headers or [])


def _text(value: HeaderValue) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")
