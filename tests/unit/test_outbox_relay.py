"""The outbox relay with a fake producer and a real SQLite database: no broker."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import DeclarativeBase

from shared.messaging import tracing
from shared.messaging.envelope import Envelope, KafkaHeaders, utcnow
from shared.messaging.events import Event
from shared.messaging.outbox import OutboxRelay, add_rows, outbox_row, row_to_envelope
from shared.messaging.producer import DeliveryError, Placed
from shared.messaging.unit_of_work import UnitOfWork
from shared.storage.db import OutboxMixin, make_sessions
from tests.helpers import eventually

pytestmark = pytest.mark.unit


class Base(DeclarativeBase):
    pass


class Outbox(OutboxMixin, Base):
    __tablename__ = "outbox"


class Tick(Event, type="tick", topic="orders", key="key"):
    key: str
    seq: int


class StockTick(Tick, topic="stock"):
    pass


class UserTick(Tick, topic="users"):
    pass


TICKS: dict[str, type[Tick]] = {"orders": Tick, "stock": StockTick, "users": UserTick}
"""A tick for each topic the tests emit to."""


def tick(topic: str, seq: int) -> Tick:
    return TICKS[topic](key=f"key-{seq}", seq=seq)


@dataclass
class FakeProducer:
    """Acknowledges every record at the next offset of its partition, except `failing`."""

    failing: set[str] = field(default_factory=set)
    down: bool = False
    calls: list[list[tuple[str, Envelope]]] = field(default_factory=list)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def send_records(
        self, records: Sequence[tuple[str, str, bytes, KafkaHeaders]], timeout: float = 60
    ) -> list[Placed]:
        events = [(t, Envelope.from_headers(h, k, v)) for t, k, v, h in records]
        if self.down:
            raise DeliveryError(events[-1][1].id, "no delivery report before timeout")
        self.calls.append(events)
        placed = []
        for topic, event in events:
            slot = Placed()
            slot.done = True
            placed.append(slot)
            if event.id in self.failing:
                slot.error = KafkaError(KafkaError._MSG_TIMED_OUT)
                continue
            partition = zlib.crc32(event.key.encode()) % 3
            slot.partition, slot.offset = partition, self.ends.get((topic, partition), 0)
            self.ends[(topic, partition)] = slot.offset + 1
        return placed

    @property
    def sent(self) -> list[tuple[str, Envelope]]:
        return [record for call in self.calls for record in call]


@pytest.fixture
def uow(sqlite_engine: Engine) -> UnitOfWork:
    Base.metadata.create_all(sqlite_engine)
    return UnitOfWork(make_sessions(sqlite_engine), Outbox, "/tests")


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def relay(uow: UnitOfWork, producer: FakeProducer) -> Iterator[OutboxRelay]:
    relay = OutboxRelay(uow.sessions, Outbox, producer, poll_interval=60)  # type: ignore[arg-type]
    yield relay
    relay.stop()


def emit(uow: UnitOfWork, *records: tuple[str, int]) -> list[tuple[str, Envelope]]:
    """Emit `(topic, seq)` events in one transaction, keyed `key-<seq>`."""
    with uow() as unit:
        return [(topic, unit.outbox.emit(tick(topic, seq))) for topic, seq in records]


def rows(uow: UnitOfWork) -> list[Outbox]:
    with uow() as unit:
        return list(unit.session.scalars(select(Outbox).order_by(Outbox.id)))


def unsent(uow: UnitOfWork) -> list[str]:
    return [row.event_id for row in rows(uow) if row.sent_at is None]


# Publishing


def test_relay_once_publishes_unsent_rows_in_id_order_across_topics(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    emitted = emit(uow, ("orders", 1))
    emitted += emit(uow, ("stock", 2), ("orders", 3))
    emitted += emit(uow, ("users", 4))

    assert relay.relay_once() == 4

    assert producer.sent == emitted
    assert producer.calls == [emitted], "one batch"
    assert relay.published == 4
    assert relay.pending() == 0


def test_published_rows_are_marked_sent_with_their_partition_and_offset(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    emit(uow, ("orders", 1), ("orders", 1), ("stock", 2))
    before = utcnow()

    relay.relay_once()

    marked = [(row.topic, row.partition, row.offset) for row in rows(uow)]
    partition = {seq: zlib.crc32(f"key-{seq}".encode()) % 3 for seq in (1, 2)}
    assert marked == [
        ("orders", partition[1], 0),
        ("orders", partition[1], 1),
        ("stock", partition[2], 0),
    ]
    for row in rows(uow):
        assert row.sent_at is not None and before <= row.sent_at <= utcnow()


def test_a_second_relay_publishes_nothing_more(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    emit(uow, ("orders", 1))
    relay.relay_once()

    assert relay.relay_once() == 0
    assert len(producer.calls) == 1


def test_an_empty_outbox_calls_no_producer(producer: FakeProducer, relay: OutboxRelay) -> None:
    assert relay.relay_once() == 0
    assert producer.calls == []


def test_the_relay_publishes_at_most_a_batch_at_a_time_oldest_first(
    uow: UnitOfWork, producer: FakeProducer
) -> None:
    emitted = emit(uow, *[("orders", seq) for seq in range(5)])
    relay = OutboxRelay(uow.sessions, Outbox, producer, batch_size=2)  # type: ignore[arg-type]

    counts = [relay.relay_once() for _ in range(4)]

    assert counts == [2, 2, 1, 0]
    assert producer.calls == [emitted[0:2], emitted[2:4], emitted[4:5]]
    relay.stop()


def test_topics_take_the_unit_of_works_prefix(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    prefixed = UnitOfWork(uow.sessions, Outbox, "/tests", topic_prefix="run-7.")
    with prefixed() as unit:
        unit.outbox.emit(tick("orders", 1))

    relay.relay_once()

    assert [topic for topic, _ in producer.sent] == ["run-7.orders"]


def test_publish_gets_the_batch_before_the_broker_does(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_publish` is the seam where the crash tests' fault injection (tests/faults.py)
    stops a relay after the commit and before the broker has the batch."""
    emitted = emit(uow, ("orders", 1), ("stock", 2))
    seen: list[tuple[list[Envelope], int]] = []
    publish = OutboxRelay._publish

    def watched(self: OutboxRelay, rows: Any) -> Any:
        seen.append(([row_to_envelope(row) for row in rows], len(producer.calls)))
        return publish(self, rows)

    monkeypatch.setattr(OutboxRelay, "_publish", watched)

    relay.relay_once()

    assert seen == [([event for _, event in emitted], 0)], "the whole batch, before sending"
    assert producer.sent == emitted


# Failures


def test_failed_deliveries_stay_unsent_and_are_retried_next_time(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    emitted = emit(uow, ("orders", 1), ("orders", 2), ("stock", 3))
    lost = emitted[1][1]
    producer.failing = {lost.id}

    with pytest.raises(RuntimeError, match="1 event"):
        relay.relay_once()

    assert unsent(uow) == [lost.id]
    assert relay.published == 2
    assert relay.pending() == 1

    producer.failing = set()
    assert relay.relay_once() == 1
    assert producer.calls[-1] == [("orders", lost)]
    assert unsent(uow) == []


def test_a_producer_that_raises_marks_nothing_sent(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    emitted = emit(uow, ("orders", 1), ("stock", 2))
    producer.down = True

    with pytest.raises(DeliveryError):
        relay.relay_once()

    assert unsent(uow) == [event.id for _, event in emitted]
    producer.down = False
    assert relay.relay_once() == 2


def test_a_rolled_back_transaction_adds_nothing_to_the_outbox(
    uow: UnitOfWork, producer: FakeProducer, relay: OutboxRelay
) -> None:
    with pytest.raises(RuntimeError, match="business rule"), uow() as unit:
        unit.outbox.emit(tick("orders", 1))
        unit.session.flush()
        raise RuntimeError("business rule said no")

    assert rows(uow) == []
    assert relay.relay_once() == 0
    assert producer.calls == []


# Waking


def test_a_commit_that_adds_events_wakes_the_running_relay(
    uow: UnitOfWork, producer: FakeProducer
) -> None:
    relay = OutboxRelay(uow.sessions, Outbox, producer, poll_interval=60)  # type: ignore[arg-type]
    relay.start()  # polls only every 60 s: only the commit can wake it in time
    try:
        assert relay.alive
        emitted = emit(uow, ("orders", 1))

        eventually(lambda: producer.sent == emitted, timeout=5, interval=0.005, message="woken")
    finally:
        relay.stop()
    assert not relay.alive
    assert unsent(uow) == []


def test_stopping_the_relay_publishes_what_is_left_first(
    uow: UnitOfWork, producer: FakeProducer
) -> None:
    relay = OutboxRelay(uow.sessions, Outbox, producer, poll_interval=60)  # type: ignore[arg-type]
    relay.start()
    try:
        first = emit(uow, ("orders", 1))
        eventually(lambda: producer.sent == first, timeout=5, interval=0.005, message="woken")
        # A row no commit of this process announces (another process's, say): without
        # a wake, the relay would find it only at its next poll, a minute away.
        late = tracing.new_event("tick", "key-2", tick("orders", 2), source="/tests")
        with make_sessions(uow.sessions.kw["bind"]).begin() as session:
            add_rows(session, Outbox, [outbox_row("orders", late)])
    finally:
        relay.stop()

    assert [event.id for _, event in producer.sent] == [first[0][1].id, late.id]
    assert unsent(uow) == []


def test_stopping_the_relay_twice_is_harmless(uow: UnitOfWork, producer: FakeProducer) -> None:
    relay = OutboxRelay(uow.sessions, Outbox, producer)  # type: ignore[arg-type]
    relay.stop()

    relay.stop()


# Purging


def test_purge_deletes_only_sent_rows_older_than_the_age(
    uow: UnitOfWork, relay: OutboxRelay
) -> None:
    old, recent, never = (event.id for _, event in emit(uow, *[("orders", n) for n in (1, 2, 3)]))
    now = utcnow()
    with uow() as unit:
        for event_id, sent_at in ((old, now - timedelta(hours=25)), (recent, now)):
            unit.session.execute(
                update(Outbox).where(Outbox.event_id == event_id).values(sent_at=sent_at)
            )
        unit.session.execute(
            update(Outbox)
            .where(Outbox.event_id == never)
            .values(created_at=now - timedelta(days=30))
        )

    assert relay.purge(timedelta(hours=24)) == 1

    assert [row.event_id for row in rows(uow)] == [recent, never]
    assert relay.purge(timedelta(hours=24)) == 0
