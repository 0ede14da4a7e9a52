"""The Kafka side of consuming: the client's settings, fetching a batch, storing an
applied record's offset, and rewinding to what was not applied."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from shared.messaging.connection import Bootstrap, client_config

log = logging.getLogger(__name__)


def consumer_config(bootstrap: Bootstrap, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **client_config(bootstrap),
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # store only after the DB transaction commits
        "auto.commit.interval.ms": 1000,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        # Notice a subscribed topic created after start within seconds, not minutes.
        "topic.metadata.refresh.interval.ms": 5_000,
        # A long poll: the broker answers a fetch as soon as it has a record, or after
        # 500 ms with none. (A short wait with a large fetch.min.bytes made every idle
        # consumer send each broker a fetch every few ms: over TLS to three brokers that
        # was most of the cluster's CPU, and the services' librdkafka threads', while
        # nothing happened.) Under load, records gather during each round trip.
        "fetch.wait.max.ms": 500,
        "fetch.min.bytes": 1,
    }
    config.update(overrides)
    return config


def index_of(batch: Sequence[Message], message: Message) -> int:
    return next(i for i, candidate in enumerate(batch) if candidate is message)


def store(consumer: Consumer, message: Message) -> None:
    try:
        consumer.store_offsets(message=message)
    except KafkaException as exc:  # the partition was revoked meanwhile: its new owner
        log.info("offset not stored: %s", exc)  # re-reads; claims make that harmless


def next_batch(
    consumer: Consumer, size: int, wait: float = 0.5, linger: float = 0.0
) -> list[Message]:
    """Wait up to `wait` for one message; then take what else arrives within `linger`
    seconds, up to `size` in all: under load, a batch gathers several commits' events
    for one transaction, at the price of `linger` more latency per batch.

    (Waiting for `size` messages from the start, `consume(n, timeout)`, would add the
    whole timeout to the latency of every quiet moment.)"""
    first = consumer.poll(wait)
    if first is None:
        return []
    if size == 1:
        return [first]
    batch = [first, *consumer.consume(size - 1, 0)]
    if linger > 0 and len(batch) < size:
        batch += consumer.consume(size - len(batch), linger)
    return batch


def rewind(consumer: Consumer, unprocessed: Sequence[Message]) -> None:
    """Seek every partition in `unprocessed` back to its first message not yet applied."""
    first: dict[tuple[str, int], int] = {}
    for message in unprocessed:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if message.error() is None and topic is not None and partition is not None:
            first.setdefault((topic, partition), offset or 0)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:  # revoked meanwhile: the next owner starts there anyway
            log.info("seek %s[%d] failed: %s", topic, partition, exc)
