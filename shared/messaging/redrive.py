"""Redrive by reference: put dead-lettered records back, as their publishers wrote them.

A dead letter names the record it parked (`dlq_topic`, `dlq_partition`, `dlq_offset`).
Redrive re-reads that record from its topic and re-publishes exactly its key, value and
headers there; nothing of the dead letter's own key, value or headers is ever published.
Every service may write `dead-letters`: this way redrive can only repeat a record already
on a topic of the stack, never turn a forged dead letter into an event its publisher did
not publish.

A dead letter's headers are hostile input. It is skipped (counted, logged, never
published) when no consumer parked it (`dlq_source` other than `consumer`), its reference
is missing, repeated or malformed, names a topic outside the stack's prefix (or the
dead-letter topic, or one that does not exist) or an offset the topic does not retain,
or the record there is another event than the one parked (their `ce_id`s differ)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from shared.messaging import deadletter
from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.deadletter import (
    DEAD_LETTERS,
    H_CONSUMER,
    H_OFFSET,
    H_PARTITION,
    H_TOPIC,
    TooLarge,
    produce_record,
)
from shared.messaging.envelope import H_ID, KafkaHeaders
from shared.messaging.producer import EventProducer

log = logging.getLogger(__name__)

CONSUMER_SOURCE = deadletter.CONSUMER_SOURCE.encode()
_TOPIC = re.compile(rb"[A-Za-z0-9._-]{1,249}")
_NUMBER = re.compile(rb"[0-9]{1,19}")
"""Both matched whole (`fullmatch`): `$` would let a trailing newline through."""
MAX_OFFSET = 2**63 - 1
READ_TIMEOUT = 15.0
"""Seconds to wait for one referenced record that the topic still retains."""


class Skip:
    """Why a dead letter was not redriven."""

    NO_RECORD = "no-consumed-record"
    """A notice no consumer parked (another `dlq_source`, or no `dlq_consumer`)."""
    MALFORMED = "malformed-reference"
    FOREIGN_TOPIC = "foreign-topic"
    OUT_OF_RANGE = "out-of-range"
    GONE = "no-record-at-offset"
    OTHER_EVENT = "id-mismatch"
    TOO_LARGE = "too-large"


@dataclass
class RedriveSummary:
    redriven: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def count(self, where: str, skip: str | None) -> None:
        """One dead letter redriven (`skip` None) or skipped for the reason `skip`."""
        if skip is None:
            self.redriven += 1
            return
        self.skipped[skip] += 1
        log.warning("redrive: %s skipped, never published: %s", where, skip)

    def __str__(self) -> str:
        if not self.skipped:
            return f"re-published {self.redriven}, skipped none"
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        return f"re-published {self.redriven}, skipped {self.skipped.total()} ({reasons})"


@dataclass(frozen=True, slots=True)
class Reference:
    """Where a dead letter says its record is, and which event it was."""

    topic: str
    partition: int
    offset: int
    event_id: bytes | None


def redrive(
    bootstrap: Bootstrap,
    producer: EventProducer,
    *,
    topic_prefix: str = "",
    consumer: str | None = None,
    group_id: str | None = None,
    timeout: float = 60.0,
) -> RedriveSummary:
    """Redrive the records parked on `<topic_prefix>dead-letters` now (only `consumer`'s,
    if named): each re-read from where its dead letter points and re-published there.

    Progress is committed under `group_id` (default `redrive-<consumer>`, so redriving one
    consumer never skips another's records) after each record, so each is redriven once.
    Records parked while this runs (a redriven event failing again) wait for the next run."""
    dead_letters = topic_prefix + DEAD_LETTERS
    group = group_id or f"redrive-{consumer or 'all'}"
    config = {"enable.auto.commit": False, "enable.auto.offset.store": False}
    reader = Consumer(client_config(bootstrap, **{"group.id": group, **config}))
    source = Consumer(  # assigned, never committing: it only reads the referenced records
        client_config(
            bootstrap, **{"group.id": f"{group}-source", "auto.offset.reset": "error", **config}
        )
    )
    summary = RedriveSummary()
    try:
        backlog = _backlog(reader, dead_letters, timeout)
        topics = {
            name: len(meta.partitions)
            for name, meta in source.list_topics(timeout=timeout).topics.items()
            if meta.error is None
        }
        reader.assign([TopicPartition(dead_letters, p, start) for p, (start, _) in backlog])
        ends = {partition: end for partition, (start, end) in backlog if start < end}
        deadline = time.monotonic() + timeout
        wanted = consumer.encode() if consumer is not None else None
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redrive of {dead_letters} unfinished after {timeout}s")
            message = reader.poll(0.5)
            if message is None or message.error() is not None:
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            if offset >= ends.get(partition, -1):
                continue  # parked after this run began
            headers = _headers(message)
            if wanted is None or _single(headers, H_CONSUMER) == wanted:
                found: Reference | str | None = reference(headers, topic_prefix, topics)
                if isinstance(found, Reference):
                    found = _redrive_one(source, producer, found, deadline)
                summary.count(f"{dead_letters}[{partition}]@{offset}", found)
            position = TopicPartition(dead_letters, partition, offset + 1)
            reader.commit(offsets=[position], asynchronous=False)
            if offset + 1 >= ends[partition]:
                del ends[partition]
    finally:
        reader.close()
        source.close()
    return summary


def reference(headers: KafkaHeaders, prefix: str, topics: dict[str, int]) -> Reference | str:
    """The record a dead letter references, or the Skip reason it has none to redrive.
    `topics` are the topics the redrive may see, with their partition counts."""
    source = _single(headers, deadletter.H_SOURCE)
    if source is not None and source != CONSUMER_SOURCE:
        return Skip.NO_RECORD
    if not _single(headers, H_CONSUMER):
        return Skip.NO_RECORD
    raw_topic, raw_partition, raw_offset = (
        _single(headers, name) for name in (H_TOPIC, H_PARTITION, H_OFFSET)
    )
    event_id = _single(headers, H_ID)
    if any(value is None or value is _REPEATED for value in (raw_topic, raw_partition, raw_offset)):
        return Skip.MALFORMED
    if event_id is _REPEATED:
        return Skip.MALFORMED
    assert raw_topic is not None and raw_partition is not None and raw_offset is not None
    numbers = _NUMBER.fullmatch(raw_partition) and _NUMBER.fullmatch(raw_offset)
    if not (_TOPIC.fullmatch(raw_topic) and numbers):
        return Skip.MALFORMED
    topic, partition, offset = raw_topic.decode(), int(raw_partition), int(raw_offset)
    if offset > MAX_OFFSET:
        return Skip.MALFORMED
    if (
        not topic.startswith(prefix)
        or topic.startswith("__")
        or topic == prefix + DEAD_LETTERS
        or topic not in topics
    ):
        return Skip.FOREIGN_TOPIC
    if partition >= topics[topic]:
        return Skip.OUT_OF_RANGE
    return Reference(topic, partition, offset, event_id)


def _redrive_one(
    source: Consumer, producer: EventProducer, ref: Reference, deadline: float
) -> str | None:
    """Re-publish the referenced record as it is; None once done, else the Skip reason."""
    position = TopicPartition(ref.topic, ref.partition, ref.offset)
    low, high = source.get_watermark_offsets(position, timeout=READ_TIMEOUT, cached=False)
    if not low <= ref.offset < high:
        return Skip.OUT_OF_RANGE
    record = _read(source, position, min(deadline, time.monotonic() + READ_TIMEOUT))
    if record is None:
        return Skip.OUT_OF_RANGE
    if record.offset() != ref.offset:
        return Skip.GONE
    headers = _headers(record)
    if ref.event_id is not None and _single(headers, H_ID) != ref.event_id:
        return Skip.OTHER_EVENT
    try:
        produce_record(producer, ref.topic, _bytes(record.value()), _bytes(record.key()), headers)
    except TooLarge:
        return Skip.TOO_LARGE
    return None


def _read(source: Consumer, position: TopicPartition, until: float) -> Message | None:
    """The first record at or after `position`; None if the offset is out of range.
    Raises TimeoutError if a retained record does not arrive in time (a broker outage:
    the run stops there and the next one starts from this dead letter), KafkaException if
    the principal may not read the topic."""
    source.assign([position])
    try:
        while time.monotonic() < until:
            message = source.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return message
            if error.code() in _OUT_OF_RANGE:
                return None
            if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise KafkaException(error)  # this principal may not read it: no run will
        raise TimeoutError(
            f"{position.topic}[{position.partition}]@{position.offset} unread after {READ_TIMEOUT}s"
        )
    finally:
        source.unassign()


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


_OUT_OF_RANGE = (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET)
_REPEATED = b"\x00repeated"
"""`_single`'s answer for a header that occurs more than once: ambiguous, never trusted."""


def _single(headers: KafkaHeaders, name: str) -> bytes | None:
    """The value of the header `name` (b"" for a null one), None if absent, _REPEATED if
    it occurs more than once."""
    values = [value for key, value in headers if key == name]
    if not values:
        return None
    if len(values) > 1:
        return _REPEATED
    value = values[0]
    return value.encode() if isinstance(value, str) else (value or b"")


def _headers(message: Message) -> KafkaHeaders:
    return cast(KafkaHeaders, list(message.headers() or []))


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
