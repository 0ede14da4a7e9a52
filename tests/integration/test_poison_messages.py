"""Poison messages against a real broker: whatever arrives, the consumer parks what it
cannot apply on the dead-letter topic, with why and where it came from, applies what is
valid around it in order, and stays alive. Redrive puts parked events back once fixed, by
re-reading each from where its dead letter points (never publishing the dead letter's own
content), and skips, with its reason, a dead letter that points at no such record.

The consumer reads two topics: `ticks`, which it owns, and `others`, which another
service owns. A type it has no handler for is parked on the first and skipped (counted,
its offset stored) on the second."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from shared.messaging.consumer import ConsumerWorker
from shared.messaging.deadletter import (
    DEAD_LETTERS,
    H_CONSUMER,
    H_DROPPED,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SOURCE,
    H_TOPIC,
    Reason,
)
from shared.messaging.envelope import H_ID, H_SPECVERSION, H_TYPE, Envelope, KafkaHeaders, dump_json
from shared.messaging.events import Event
from shared.messaging.producer import EventProducer, producer_config
from shared.messaging.redrive import Skip
from shared.messaging.router import EventRouter
from shared.messaging.topics import ensure_topics
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.storage.db import make_engine, make_sessions
from tests.helpers import eventually, read_topic, unique
from tests.schema import Base, Outbox, Processed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS = 3
BACKOFF = 0.1


class Applied(Base):
    """One row per application of a tick: a doubled event shows as two rows."""

    __tablename__ = "poison_applied"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(64))


class Tick(Event, type="tick", topic="ticks", key="seq"):
    seq: int


class Tack(Event, type="tack", topic="others", key="seq"):
    """An event of the topic another service owns, which this consumer also handles."""

    seq: int


class Boom(Tick, type="boom"):
    """A tick whose handler always raises."""


class Flaky(Tick, type="flaky"):
    """A tick whose handler fails its first attempts."""


def tick(key: str, seq: int, event_type: str = "tick") -> Envelope:
    return Envelope(type=event_type, source="/tests", key=key, data=dump_json(Tick(seq=seq)))


@dataclass
class Faults:
    """What the test handlers do wrong, switched by the test."""

    broken: threading.Event = field(default_factory=threading.Event)
    flaky_failures: int = 2
    attempts: dict[str, list[float]] = field(default_factory=dict)

    def attempt(self, event: Envelope) -> int:
        times = self.attempts.setdefault(event.id, [])
        times.append(time.monotonic())
        return len(times)


def build_router(faults: Faults) -> EventRouter:
    router = EventRouter()

    def record(unit: Unit, event: Envelope, payload: Tick | Tack) -> None:
        unit.session.add(Applied(key=event.key, seq=payload.seq, event_id=event.id))

    @router.on
    def on_tick(unit: Unit, event: Envelope, payload: Tick) -> None:
        record(unit, event, payload)
        unit.session.flush()  # the row is written, then the failure rolls it back
        if faults.broken.is_set():
            raise RuntimeError("downstream is broken")

    @router.on
    def on_tack(unit: Unit, event: Envelope, payload: Tack) -> None:
        record(unit, event, payload)

    @router.on
    def on_boom(unit: Unit, event: Envelope, payload: Boom) -> None:
        faults.attempt(event)
        raise RuntimeError(f"boom {payload.seq}")

    @router.on
    def on_flaky(unit: Unit, event: Envelope, payload: Flaky) -> None:
        record(unit, event, payload)
        unit.session.flush()
        if faults.attempt(event) <= faults.flaky_failures:
            raise RuntimeError(f"flaky attempt {len(faults.attempts[event.id])}")

    return router


@dataclass
class Harness:
    bootstrap: str
    prefix: str
    topic: str
    """The topic the consumer owns."""
    foreign: str
    """A topic it reads that another service owns."""
    dead_letters: str
    uow: UnitOfWork
    worker: ConsumerWorker
    faults: Faults
    producer: EventProducer
    raw: Producer

    def publish(self, event: Envelope, topic: str | None = None) -> tuple[int, int]:
        delivery = self.producer.publish(topic or self.topic, event)
        assert delivery.partition is not None and delivery.offset is not None
        return delivery.partition, delivery.offset

    def produce(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: KafkaHeaders,
        partition: int,
        topic: str | None = None,
    ) -> tuple[int, int]:
        """Produce a record as-is to `partition`; return its acknowledged position."""
        reports: list[tuple[KafkaError | None, Message]] = []
        self.raw.produce(
            topic or self.topic,
            value=value,
            key=key,
            headers=headers,
            partition=partition,
            on_delivery=lambda error, message: reports.append((error, message)),
        )
        self.raw.flush(30)
        ((error, message),) = reports
        assert error is None, error
        return message.partition(), message.offset()

    def applied(self, key: str) -> list[int]:
        with self.uow.sessions() as session:
            return list(
                session.scalars(select(Applied.seq).where(Applied.key == key).order_by(Applied.id))
            )

    def parked(self) -> list[Message]:
        """Every record on the dead-letter topic now (read up to its end offsets)."""
        return read_all(self.bootstrap, self.dead_letters)


def read_all(bootstrap: str, topic: str) -> list[Message]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("probe")})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        total = sum(
            high - low
            for low, high in (
                probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in partitions
            )
        )
    finally:
        probe.close()
    if total == 0:
        return []
    messages = read_topic(bootstrap, topic, until=lambda got: len(got) >= total)
    assert len(messages) == total, f"read {len(messages)} of {total} records on {topic}"
    return messages


@pytest.fixture
def harness(kafka_bootstrap: str, database_url: str) -> Iterator[Harness]:
    prefix = unique("poison") + "-"
    topic, foreign, dead_letters = prefix + Tick.topic, prefix + Tack.topic, prefix + DEAD_LETTERS
    ensure_topics(
        kafka_bootstrap, [topic, foreign, dead_letters, prefix + "elsewhere"], partitions=3
    )
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    uow = UnitOfWork(make_sessions(engine), Outbox, "/tests")
    faults = Faults()
    producer = EventProducer(kafka_bootstrap)
    worker = ConsumerWorker(
        name=unique("ticker"),
        bootstrap=kafka_bootstrap,
        topics=[topic, foreign],
        owned_topics=[topic],
        topic_prefix=prefix,
        router=build_router(faults),
        uow=uow,
        processed_model=Processed,
        producer=producer,
        dead_letter_topic=dead_letters,
        max_attempts=MAX_ATTEMPTS,
        backoff=BACKOFF,
    )
    worker.start()
    raw = Producer(producer_config(kafka_bootstrap))
    try:
        yield Harness(
            kafka_bootstrap,
            prefix,
            topic,
            foreign,
            dead_letters,
            uow,
            worker,
            faults,
            producer,
            raw,
        )
    finally:
        worker.stop()
        raw.flush(10)
        producer.close()
        engine.dispose()


def replace_header(headers: KafkaHeaders, name: str, value: bytes | None) -> KafkaHeaders:
    return [(n, value if n == name else v) for n, v in headers]


def without_header(headers: KafkaHeaders, name: str) -> KafkaHeaders:
    return [(n, v) for n, v in headers if n != name]


Record = tuple[bytes | None, bytes | None, KafkaHeaders]
Poison = Callable[[Envelope], Record]
"""Builds the poison record, given the valid event applied just before it."""


def _valid(event: Envelope) -> Record:
    return event.key.encode(), event.data, event.headers()


POISON: dict[str, tuple[Poison, str]] = {
    "not-json": (
        lambda first: (b"k", b'{"seq": 3,', tick("k", 3).headers()),
        Reason.INVALID_ENVELOPE,
    ),
    "missing-ce-id": (
        lambda first: (b"k", b'{"seq": 3}', without_header(tick("k", 3).headers(), H_ID)),
        Reason.INVALID_ENVELOPE,
    ),
    "missing-ce-type": (
        lambda first: (b"k", b'{"seq": 3}', without_header(tick("k", 3).headers(), H_TYPE)),
        Reason.INVALID_ENVELOPE,
    ),
    "wrong-specversion": (
        lambda first: (
            b"k",
            b'{"seq": 3}',
            replace_header(tick("k", 3).headers(), H_SPECVERSION, b"0.3"),
        ),
        Reason.INVALID_ENVELOPE,
    ),
    "no-headers": (lambda first: (b"k", b'{"seq": 3}', []), Reason.INVALID_ENVELOPE),
    "null-value": (lambda first: (b"k", None, tick("k", 3).headers()), Reason.INVALID_ENVELOPE),
    "non-utf8-key": (
        lambda first: (b"\xff\xfek", b'{"seq": 3}', tick("k", 3).headers()),
        Reason.INVALID_ENVELOPE,
    ),
    "non-utf8-header": (
        lambda first: (b"k", b'{"seq": 3}', replace_header(tick("k", 3).headers(), H_ID, b"\xff")),
        Reason.INVALID_ENVELOPE,
    ),
    # on a topic the consumer owns: nobody else will read it
    "unknown-type": (lambda first: _valid(tick("k", 3, "tock")), Reason.UNKNOWN_TYPE),
    "invalid-payload": (
        lambda first: (b"k", b'{"seq": "three"}', tick("k", 3).headers()),
        Reason.INVALID_PAYLOAD,
    ),
    "handler-always-raises": (lambda first: _valid(tick("k", 3, "boom")), Reason.HANDLER_FAILED),
    "conflicting-duplicate": (
        # the id of the event applied just before, with another payload
        lambda first: (b"k", b'{"seq": 99}', first.headers()),
        Reason.CONFLICT,
    ),
}


def header_map(message: Message) -> dict[str, str]:
    return {
        name: value.decode(errors="replace") if isinstance(value, bytes) else ""
        for name, value in message.headers() or []
    }


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_message_is_dead_lettered_and_its_partition_goes_on_in_order(
    harness: Harness, kind: str
):
    build, reason = POISON[kind]
    first = tick("k", 1)
    partition, _ = harness.publish(first)
    key, value, headers = build(first)
    position = harness.produce(key, value, headers, partition)
    assert harness.publish(tick("k", 2))[0] == partition, "same key, same partition"

    eventually(lambda: harness.applied("k") == [1, 2], message="the valid events applied")
    (letter,) = harness.parked()
    parked = header_map(letter)
    assert parked[H_REASON] == reason, parked[H_ERROR]
    assert parked[H_ERROR]
    assert (parked[H_TOPIC], int(parked[H_PARTITION]), int(parked[H_OFFSET])) == (
        harness.topic,
        *position,
    )
    assert parked[H_CONSUMER] == harness.worker.name
    assert letter.key() == key and letter.value() == value
    assert [(n, v) for n, v in letter.headers() or [] if not n.startswith("dlq_")] == headers
    assert harness.worker.alive and harness.worker.dead_lettered == 1
    assert harness.worker.skipped == 0
    if kind == "handler-always-raises":
        (times,) = harness.faults.attempts.values()
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert len(times) == MAX_ATTEMPTS, "bounded retries"
        assert "boom 3" in parked[H_ERROR]
        assert gaps[0] >= BACKOFF * 0.9 and gaps[1] >= 2 * BACKOFF * 0.9, f"backoff {gaps}"


def committed(harness: Harness, topic: str, partition: int) -> int:
    """The consumer group's committed offset of one partition."""
    probe = Consumer({"bootstrap.servers": harness.bootstrap, "group.id": harness.worker.name})
    try:
        (position,) = probe.committed([TopicPartition(topic, partition)], timeout=10)
        return int(position.offset)
    finally:
        probe.close()


def test_an_unknown_type_on_a_topic_another_service_owns_is_skipped_and_counted(
    harness: Harness,
):
    foreign = harness.foreign
    partition, _ = harness.publish(tick("k", 1, "tack"), foreign)
    for event_type in ("tock", "tick-v2"):
        harness.produce(*_valid(tick("k", 3, event_type)), partition, topic=foreign)
    last = harness.publish(tick("k", 2, "tack"), foreign)
    assert last[0] == partition, "same key, same partition"

    eventually(lambda: harness.applied("k") == [1, 2], message="the valid events applied")
    eventually(
        lambda: committed(harness, foreign, partition) == last[1] + 1,
        message="every offset committed, the skipped ones' too",
    )
    assert harness.parked() == []
    assert (harness.worker.skipped, harness.worker.dead_lettered) == (2, 0)
    assert harness.worker.alive


def test_an_unknown_type_is_skipped_or_parked_by_the_topic_it_arrives_on(harness: Harness):
    # on each topic, the unknown type and then a valid tick behind it on its partition
    parked = harness.produce(*_valid(tick("own", 3, "tock")), 0)
    skipped = harness.produce(*_valid(tick("other", 4, "tock")), 0, topic=harness.foreign)
    harness.produce(*_valid(tick("own", 1)), 0)
    harness.produce(*_valid(tick("other", 2, "tack")), 0, topic=harness.foreign)

    eventually(
        lambda: (harness.applied("own"), harness.applied("other")) == ([1], [2]),
        message="the valid events behind them applied",
    )
    (letter,) = harness.parked()
    headers = header_map(letter)
    assert headers[H_REASON] == Reason.UNKNOWN_TYPE
    assert (headers[H_TOPIC], int(headers[H_PARTITION]), int(headers[H_OFFSET])) == (
        harness.topic,
        *parked,
    )
    assert (harness.worker.skipped, harness.worker.dead_lettered) == (1, 1)
    eventually(
        lambda: committed(harness, harness.foreign, 0) > skipped[1],
        message="the skipped record's offset committed",
    )


def test_a_handler_failing_twice_then_succeeding_is_applied_once(harness: Harness):
    flaky = tick("k", 1, "flaky")
    harness.publish(flaky)
    harness.publish(tick("k", 2))

    eventually(lambda: harness.applied("k") == [1, 2], message="both applied")
    assert len(harness.faults.attempts[flaky.id]) == 3
    assert harness.parked() == []
    assert harness.worker.alive and harness.worker.dead_lettered == 0


def test_a_record_too_large_to_park_whole_is_parked_without_its_value(harness: Harness):
    partition, _ = harness.publish(tick("k", 1))
    # fits the producer's limit of 1,000,000 bytes, but not with the dlq_* headers added
    big = b"\xff" + os.urandom(999_700)
    position = harness.produce(b"k", big, tick("k", 3).headers(), partition)
    harness.publish(tick("k", 2))

    eventually(lambda: harness.applied("k") == [1, 2], message="the valid events applied")
    (letter,) = harness.parked()
    parked = header_map(letter)
    assert parked[H_REASON] == Reason.INVALID_ENVELOPE
    assert (int(parked[H_PARTITION]), int(parked[H_OFFSET])) == position
    assert parked[H_DROPPED] == "key,value,headers"
    assert letter.value() is None
    assert harness.worker.alive


def run_redrive(harness: Harness, consumer: str) -> int:
    """Run the redrive command as an operator would; return how many it re-published."""
    return redrive_summary(harness, consumer)[0]


def redrive_summary(harness: Harness, consumer: str) -> tuple[int, dict[str, int]]:
    """Run the redrive command; how many it re-published, and how many it skipped why."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.ops.redrive", "--topic-prefix", harness.prefix]
        + ["--consumer", consumer, "--bootstrap", harness.bootstrap],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"re-published (\d+) dead-lettered event", done.stdout)
    assert found, done.stdout
    skipped = {m[1]: int(m[0]) for m in re.findall(r"^skipped (\d+): (\S+)$", done.stdout, re.M)}
    return int(found.group(1)), skipped


def parking(topic: str, position: tuple[int, int], consumer: str) -> KafkaHeaders:
    """The dlq_* headers a consumer's dead letter of `topic`[partition]@offset carries."""
    partition, offset = position
    return [
        (H_REASON, Reason.HANDLER_FAILED.encode()),
        (H_ERROR, b"downstream is broken"),
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_CONSUMER, consumer.encode()),
    ]


def test_redrive_applies_a_dead_lettered_event_exactly_once_after_the_fix(harness: Harness):
    harness.faults.broken.set()
    event = tick("k", 1)
    harness.publish(event)
    eventually(lambda: harness.worker.dead_lettered == 1, message="the event dead-lettered")
    assert harness.applied("k") == [], "every failed attempt rolled back"
    # another consumer's dead letter on the same topic is not ours to redrive
    elsewhere = harness.prefix + "elsewhere"
    other = tick("o", 7)
    position = harness.publish(other, elsewhere)
    harness.produce(
        b"o",
        other.data,
        other.headers() + parking(elsewhere, position, "someone-else"),
        partition=0,
        topic=harness.dead_letters,
    )

    harness.faults.broken.clear()  # the cause is fixed
    assert run_redrive(harness, harness.worker.name) == 1
    eventually(lambda: harness.applied("k") == [1], message="the redriven event applied")
    assert run_redrive(harness, harness.worker.name) == 0, "progress was committed"

    harness.publish(tick("k", 2))  # same partition, after anything redriven
    eventually(lambda: harness.applied("k") == [1, 2], message="a later event applied")
    with harness.uow.sessions() as session:
        assert session.scalars(select(Applied.event_id).where(Applied.seq == 1)).all() == [event.id]
    assert harness.worker.dead_lettered == 1 and harness.worker.alive
    # redriving one consumer did not skip the other's letter
    assert run_redrive(harness, "someone-else") == 1
    original, moved = read_all(harness.bootstrap, elsewhere)
    assert moved.value() == original.value() == other.data
    assert moved.headers() == original.headers() and header_map(moved)[H_ID] == other.id


def test_redrive_publishes_the_record_it_rereads_never_the_dead_letters_content(
    harness: Harness,
):
    """Every service may write dead letters: the one parked here claims to be the event at
    a genuine position but carries another payload. The genuine record is what goes back."""
    harness.faults.broken.set()
    event = tick("k", 1)
    position = harness.publish(event)
    eventually(lambda: harness.worker.dead_lettered == 1, message="the event dead-lettered")
    harness.faults.broken.clear()
    forged = tick("k", 99)
    same_id = [(n, event.id.encode() if n == H_ID else v) for n, v in forged.headers()]
    harness.produce(
        b"k",
        forged.data,
        same_id + parking(harness.topic, position, harness.worker.name),
        partition=0,
        topic=harness.dead_letters,
    )

    assert redrive_summary(harness, harness.worker.name) == (2, {})

    eventually(lambda: harness.applied("k") == [1], message="the genuine event applied")
    records = read_all(harness.bootstrap, harness.topic)
    assert [m.value() for m in records] == [event.data] * 3, "the original, then twice again"
    assert all(m.headers() == records[0].headers() for m in records)


def test_dead_letters_that_reference_no_record_to_redrive_are_skipped_with_their_reason(
    harness: Harness,
):
    event = tick("k", 1)
    position = harness.publish(event)
    eventually(lambda: harness.applied("k") == [1], message="the event applied")
    name, topic = harness.worker.name, harness.topic
    partition, offset = position
    hostile: list[tuple[bytes | None, KafkaHeaders]] = [
        # another event's id at that position: a forgery
        (tick("k", 99).data, tick("k", 99).headers() + parking(topic, position, name)),
        # a notice of the outbox relay: it parked no consumed record
        (None, [(H_SOURCE, b"outbox"), *parking(topic, position, name)]),
        # references that are no reference
        (event.data, without_header(parking(topic, position, name), H_OFFSET)),
        (event.data, replace_header(parking(topic, position, name), H_OFFSET, b"1\x00")),
        (event.data, replace_header(parking(topic, position, name), H_OFFSET, b"9" * 100_000)),
        (event.data, replace_header(parking(topic, position, name), H_PARTITION, b"-1")),
        (event.data, parking(topic, position, name) + [(H_TOPIC, topic.encode())]),
        (event.data, parking(harness.prefix + "nowhere", position, name)),
        (event.data, parking(harness.dead_letters, (0, 0), name)),
        (event.data, parking("elsewhere", position, name)),  # outside the stack's prefix
        (event.data, parking(topic, (partition, offset + 1000), name)),
        (event.data, parking(topic, (99, offset), name)),
    ]
    for value, headers in hostile:
        harness.produce(b"k", value, headers, partition=0, topic=harness.dead_letters)

    assert redrive_summary(harness, name) == (
        0,
        {
            Skip.OTHER_EVENT: 1,
            Skip.NO_RECORD: 1,
            Skip.MALFORMED: 5,
            Skip.FOREIGN_TOPIC: 3,
            Skip.OUT_OF_RANGE: 2,
        },
    )
    assert [m.value() for m in read_all(harness.bootstrap, topic)] == [event.data]
    assert harness.applied("k") == [1]
