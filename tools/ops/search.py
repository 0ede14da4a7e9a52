"""Searching the log: the records of a time range that match a key, an event id, a type
or a header value, read without holding a topic in memory. `tools.ops.tail` and the
explorer's search (`GET /api/search`) both call `search`.

How it reads, partition by partition:

- it starts at the first record stamped at or after `since` (`offsets_for_times`), or at
  the oldest record kept, and stops at the end offset each partition had when the search
  began, or earlier at the first record stamped at or after `until`: records arriving
  meanwhile are not waited for, so a search always ends;
- it keeps only the records that match, up to `limit` (and then stops reading), and
  counts the records it read in each partition;
- a key search reads only the key's partition of each topic: the services' producers
  place a keyed record with murmur2 as Java clients do (`partitioner: murmur2_random` in
  shared/messaging/producer.py), so `key_partition` finds it without reading the others.
  A record another producer put elsewhere (with librdkafka's default CRC32 partitioner,
  say) is not found that way.

Every value from outside is checked by the functions below before it reaches the broker;
each raises ValueError with a reason short enough to show."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from shared.messaging.envelope import H_ID, H_TYPE, KafkaRecord

LONGEST_KEY = 256
LONGEST_HEADER_VALUE = 256
MOST = 1000
"""The largest `limit`: a search returns at most this many records."""
EVENT_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
EVENT_TYPE = re.compile(r"[A-Za-z0-9._-]{1,64}")
HEADER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

Place = tuple[str, int]


def _shown(text: str, most: int = 40) -> str:
    return repr(text[:most]) + ("…" if len(text) > most else "")


def key_text(text: str) -> str:
    """A record key: 1 to 256 printable characters."""
    if not 0 < len(text) <= LONGEST_KEY or not text.isprintable():
        raise ValueError(f"a key is 1 to {LONGEST_KEY} printable characters: {_shown(text)}")
    return text


def event_id_text(text: str) -> str:
    """An event id (`ce_id`): 1 to 128 of A-Z a-z 0-9 . _ : / + = -."""
    if not EVENT_ID.fullmatch(text):
        raise ValueError(f"an event id is 1 to 128 of A-Z a-z 0-9 . _ : / + = -: {_shown(text)}")
    return text


def event_type_text(text: str) -> str:
    """An event type (`ce_type`, e.g. `order-created`): 1 to 64 of A-Z a-z 0-9 . _ -."""
    if not EVENT_TYPE.fullmatch(text):
        raise ValueError(f"an event type is 1 to 64 of A-Z a-z 0-9 . _ -: {_shown(text)}")
    return text


def header_pair(text: str) -> tuple[str, str]:
    """`NAME=VALUE`: a header name of 1 to 64 of A-Z a-z 0-9 . _ - and a value of up to
    256 printable characters (empty matches an empty header)."""
    name, equals, value = text.partition("=")
    if not equals or not HEADER_NAME.fullmatch(name):
        raise ValueError(f"a header is NAME=VALUE, NAME of A-Z a-z 0-9 . _ -: {_shown(text)}")
    if len(value) > LONGEST_HEADER_VALUE or not value.isprintable():
        raise ValueError(
            f"a header's value is up to {LONGEST_HEADER_VALUE} printable characters:"
            f" {_shown(value)}"
        )
    return name, value


def limit_number(value: int | str) -> int:
    """How many records at most: 1 to MOST."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"a limit is a whole number of 1 to {MOST}: {_shown(str(value))}"
        ) from None
    if not 0 < number <= MOST:
        raise ValueError(f"a limit is a whole number of 1 to {MOST}: {number}")
    return number


def topic_text(text: str) -> str:
    if not TOPIC_NAME.fullmatch(text):
        raise ValueError(f"not a topic name (A-Z a-z 0-9 . _ -): {_shown(text)}")
    return text


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`, librdkafka's
    `rd_murmur2`), as an unsigned 32-bit number."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the services' producers put a record with this key on."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Query:
    """What to look for; each given field must match (all of them, together)."""

    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None
    event_id: str | None = None
    type: str | None = None
    header: tuple[str, str] | None = None
    limit: int = 100

    @property
    def filters(self) -> bool:
        """Whether anything but the time range is asked for."""
        return any(v is not None for v in (self.key, self.event_id, self.type, self.header))

    def matches(self, record: KafkaRecord) -> bool:
        """Whether a record matches, judged on its key, headers and timestamp alone (the
        value is never decoded)."""
        if self.key is not None and record.key() != self.key.encode():
            return False
        if self.since is not None or self.until is not None:
            stamp = _millis(record)
            if stamp is not None:
                if self.since is not None and stamp < _to_millis(self.since):
                    return False
                if self.until is not None and stamp >= _to_millis(self.until):
                    return False
        wanted = [
            (name, value.encode())
            for name, value in (
                (H_ID, self.event_id),
                (H_TYPE, self.type),
                self.header or (None, None),
            )
            if name is not None and value is not None
        ]
        if not wanted:
            return True
        headers = record.headers() or []
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
        held = {
            (name, value if isinstance(value, bytes) else (value or "").encode())
            for name, value in pairs
        }
        return all(pair in held for pair in wanted)

    def describe(self) -> str:
        parts = []
        if self.since is not None:
            parts.append(f"from {self.since.isoformat()}")
        if self.until is not None:
            parts.append(f"until {self.until.isoformat()}")
        for name, value in (("key", self.key), ("id", self.event_id), ("type", self.type)):
            if value is not None:
                parts.append(f"{name} {value!r}")
        if self.header is not None:
            parts.append(f"header {self.header[0]}={self.header[1]!r}")
        return ", ".join(parts) or "every record"


@dataclass
class Found:
    """What a search found, and how much it read to find it."""

    records: list[Message] = field(default_factory=list)
    """The matching records (at most the query's limit), by timestamp."""
    read: dict[Place, int] = field(default_factory=dict)
    """Records read in each partition searched (0 for one with nothing in range)."""
    ranges: dict[Place, tuple[int, int]] = field(default_factory=dict)
    """Each partition's offsets searched: from, up to (not including)."""
    by_key: bool = False
    """Whether only the key's partition of each topic was read."""
    complete: bool = True
    """False when it stopped at the limit: more records in range may match."""

    @property
    def total(self) -> int:
        return sum(self.read.values())

    def summary(self) -> str:
        """One line: what it read, per partition, and what it found."""
        where = ", ".join(f"{t}[{p}] {n:,}" for (t, p), n in sorted(self.read.items()))
        scope = " (only the key's partition of each topic)" if self.by_key else ""
        line = (
            f"searched {len(self.read)} partition(s){scope}: read {self.total:,} record(s)"
            f"{' (' + where + ')' if where else ''}; found {len(self.records):,}"
        )
        if not self.complete:
            line += "; stopped at the limit: more may match"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.total,
            "partitions": [
                {
                    "topic": t,
                    "partition": p,
                    "read": n,
                    "from": self.ranges.get((t, p), (0, 0))[0],
                    "to": self.ranges.get((t, p), (0, 0))[1],
                }
                for (t, p), n in sorted(self.read.items())
            ],
            "by_key": self.by_key,
            "complete": self.complete,
            "found": len(self.records),
        }


def _to_millis(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _millis(record: KafkaRecord) -> int | None:
    stamp = getattr(record, "timestamp", None)
    if stamp is None:
        return None
    kind, millis = stamp()
    return int(millis) if kind else None


def failed(message: Message) -> bool:
    """Whether the message is an error rather than a record; raises when it is fatal. (The
    end of a partition is reported too, and counts as no error.)"""
    error = message.error()
    if error is None or error.code() == KafkaError._PARTITION_EOF:
        return False
    if error.fatal():
        raise KafkaException(error)
    return True


def batches(consumer: Consumer, left: set[Place], timeout: float) -> Iterator[list[Message]]:
    """The consumer's records, a batch at a time, while `left` (which the caller empties as
    partitions reach their ends) holds any; errors that are not fatal are left out, the
    end of a partition is kept. Raises TimeoutError when nothing arrives for `timeout`
    seconds while partitions remain."""
    deadline = time.monotonic() + timeout
    while left:
        batch = consumer.consume(1000, 0.2)
        if batch:
            deadline = time.monotonic() + timeout
        elif time.monotonic() > deadline:
            unfinished = ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(left))
            raise TimeoutError(f"nothing read for {timeout}s; unfinished: {unfinished}")
        yield [message for message in batch if not failed(message)]


def places(
    consumer: Consumer, topics: list[str], query: Query, timeout: float, every: bool = False
) -> list[Place]:
    """The partitions to read: every one of the topics on the broker, or with a key only
    the key's partition of each. Raises LookupError when none of the topics exists, or
    when one is missing and `every` says each must be there."""
    metadata = consumer.list_topics(timeout=timeout).topics
    present = [t for t in topics if t in metadata and metadata[t].error is None]
    missing = [t for t in topics if t not in present]
    if every and missing:
        raise LookupError(f"no topic {', '.join(map(repr, missing))} on the broker")
    if not present:
        raise LookupError(f"none of these topics is on the broker: {', '.join(topics)}")
    chosen: list[Place] = []
    for topic in present:
        count = len(metadata[topic].partitions)
        if query.key is not None:
            chosen.append((topic, key_partition(query.key.encode(), count)))
        else:
            chosen.extend((topic, p) for p in sorted(metadata[topic].partitions))
    return chosen


def bounds(
    consumer: Consumer, chosen: list[Place], query: Query, timeout: float
) -> dict[Place, tuple[int, int]]:
    """Each partition's range of offsets: from the first record at or after `since` (or
    the oldest kept) up to the end offset now, or to the first record at or after
    `until`."""

    def at(when: datetime) -> dict[Place, int]:
        asked = [TopicPartition(t, p, _to_millis(when)) for t, p in chosen]
        answers = consumer.offsets_for_times(asked, timeout=timeout)
        for answer in answers:
            if answer.error is not None:
                raise KafkaException(answer.error)
        return {(a.topic, a.partition): a.offset for a in answers}  # -1: none since then

    starts = at(query.since) if query.since is not None else {}
    stops = at(query.until) if query.until is not None else {}
    ranges = {}
    for place in chosen:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(*place), timeout=timeout, cached=False
        )
        first = starts.get(place, low)
        first = high if first < 0 else max(low, first)
        stop = stops.get(place, high)
        last = high if stop < 0 else min(high, stop)
        ranges[place] = (first, max(first, last))
    return ranges


def search(
    consumer: Consumer, topics: list[str], query: Query, *, timeout: float, every: bool = False
) -> Found:
    """The records of `topics` that match `query` (see the module's docstring). The
    consumer is assigned here; it must join no group. Raises LookupError when no topic
    exists and TimeoutError when nothing arrives for `timeout` seconds while records
    remain to be read."""
    chosen = places(consumer, topics, query, timeout, every)
    ranges = bounds(consumer, chosen, query, timeout)
    found = Found(ranges=ranges, read=dict.fromkeys(chosen, 0), by_key=query.key is not None)
    left = {place for place, (first, last) in ranges.items() if last > first}
    if not left:
        return found
    consumer.assign([TopicPartition(t, p, ranges[t, p][0]) for t, p in sorted(left)])
    try:
        for batch in batches(consumer, left, timeout):
            for message in batch:
                place = (message.topic() or "", message.partition() or 0)
                if place not in left:
                    continue
                offset, end = message.offset() or 0, ranges[place][1]
                if message.error() is not None:  # the end of the partition, at `offset`
                    if offset >= end:
                        left.discard(place)
                    continue
                if offset >= end:
                    left.discard(place)
                    continue
                found.read[place] += 1
                if query.matches(message):
                    found.records.append(message)
                    if len(found.records) >= query.limit:
                        found.complete = not (left - {place}) and offset + 1 >= end
                        left.clear()
                        break
                if offset + 1 >= end:
                    left.discard(place)
    finally:
        consumer.unassign()
    found.records.sort(
        key=lambda m: (_millis(m) or 0, m.topic() or "", m.partition() or 0, m.offset() or 0)
    )
    return found
