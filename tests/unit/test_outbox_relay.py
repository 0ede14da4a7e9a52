"""The outbox relay with a fake producer and a real SQLite database: no broker. It
publishes in order and marks what the broker acknowledged; a row it cannot publish or
record is parked alone, and nothing acknowledged is ever sent twice."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import generate_latest
from sqlalchemy import CheckConstraint, Engine, Integer, String, insert, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.clock import utcnow
from shared.messaging import parking, tracing
from shared.messaging.deadletter import (
    H_CONSUMER,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SIZE,
    H_SOURCE,
    H_TOPIC,
    OUTBOX_SOURCE,
)
from shared.messaging.envelope import H_ID, H_TYPE, Envelope, KafkaHeaders, dump_json
from shared.messaging.events import Event
from shared.messaging.outbox import OutboxRelay, add_rows, outbox_row, row_to_envelope
from shared.messaging.producer import Delivery, DeliveryError, EventProducer, Placed
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.metrics import OutboxCollector, ServiceMetrics
from shared.storage.db import OutboxMixin, make_sessions
from tests.helpers import eventually, metric_total

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
    """Acknowledges every record at the next offset of its partition, except `failing`
    (timed out), those `refused` (with their error) and those `refused_in_batches` (with
    their error, unless sent alone). Notices of parked rows land in `notices`."""

    failing: set[str] = field(default_factory=set)
    refused: dict[str, KafkaError] = field(default_factory=dict)
    refused_in_batches: dict[str, KafkaError] = field(default_factory=dict)
    down: bool = False
    notices_fail: bool = False
    calls: list[list[tuple[str, Envelope]]] = field(default_factory=list)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    notices: list[tuple[str, str, bytes | None, dict[str, str]]] = field(default_factory=list)

    def send_records(
        self, records: Sequence[tuple[str, str, bytes | None, KafkaHeaders]], timeout: float = 60
    ) -> list[Placed]:
        if records and records[0][0] == "dead-letters":
            return self._notices(records)
        events = [(t, Envelope.from_headers(h, k, v or b"")) for t, k, v, h in records]
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
            if event.id in self.refused:
                slot.error = self.refused[event.id]
                continue
            if event.id in self.refused_in_batches and len(events) > 1:
                slot.error = self.refused_in_batches[event.id]
                continue
            partition = zlib.crc32(event.key.encode()) % 3
            slot.partition, slot.offset = partition, self.ends.get((topic, partition), 0)
            self.ends[(topic, partition)] = slot.offset + 1
        return placed

    def _notices(
        self, records: Sequence[tuple[str, str, bytes | None, KafkaHeaders]]
    ) -> list[Placed]:
        if self.notices_fail:
            raise DeliveryError("<batch>", "no delivery report before timeout")
        placed = []
        for topic, key, value, headers in records:
            text = {n: v.decode() if isinstance(v, bytes) else str(v) for n, v in headers}
            self.notices.append((topic, key, value, text))
            slot = Placed()
            slot.done, slot.partition, slot.offset = True, 0, len(self.notices) - 1
            placed.append(slot)
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


# A poison row: parked alone, the rest goes on


class Recorded(Base):
    """What a relay's hook records of each published event, as the order service files
    its own events: a cause longer than 64 characters is refused, as PostgreSQL's
    varchar(64) would refuse it."""

    __tablename__ = "recorded"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cause: Mapped[str | None] = mapped_column(String(64))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(Integer)
    __table_args__ = (CheckConstraint("length(cause) <= 64", name="cause_fits"),)


@dataclass
class Hook:
    """`on_published`: records each delivery; `broken` makes it fail as a database
    outage does, `python_error` raise on one event id as buggy code would."""

    calls: list[list[str]] = field(default_factory=list)
    broken: bool = False
    python_error: str | None = None

    def __call__(self, session: Session, deliveries: list[Delivery]) -> None:
        self.calls.append([d.event.id for d in deliveries])
        if self.broken:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
        if any(d.event.id == self.python_error for d in deliveries):
            raise ValueError(f"cannot record {self.python_error}\x00")
        session.execute(
            insert(Recorded),
            [
                {
                    "event_id": d.event.id,
                    "cause": d.event.causation_id,
                    "partition": d.partition,
                    "offset": d.offset,
                }
                for d in deliveries
            ],
        )


def event(seq: int, cause: str = "request-1") -> Envelope:
    return Envelope(
        type="tick",
        source="/tests",
        key=f"key-{seq}",
        data=dump_json(Tick(key=f"key-{seq}", seq=seq)),
        causation_id=cause,
    )


def store(uow: UnitOfWork, *events: Envelope) -> list[Envelope]:
    """Commit outbox rows for `events` on `orders`, in one transaction."""
    with uow() as unit:
        add_rows(unit.session, Outbox, [outbox_row("orders", e) for e in events])
    return list(events)


def row_of(uow: UnitOfWork, event: Envelope) -> Outbox:
    (row,) = [row for row in rows(uow) if row.event_id == event.id]
    return row


def recorded(uow: UnitOfWork) -> set[str]:
    with uow() as unit:
        return set(unit.session.scalars(select(Recorded.event_id)))


@pytest.fixture
def hook() -> Hook:
    return Hook()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("tests")


@pytest.fixture
def hooked(
    uow: UnitOfWork, producer: FakeProducer, hook: Hook, metrics: ServiceMetrics
) -> Iterator[OutboxRelay]:
    """A relay with a hook, metrics and notices, as a service runs it."""
    relay = OutboxRelay(
        uow.sessions,
        Outbox,
        producer,  # type: ignore[arg-type]
        poll_interval=60,
        on_published=hook,
        observer=metrics,
        dead_letter_topic="dead-letters",
        name="tests-outbox",
    )
    metrics.watch(OutboxCollector("tests", lambda: relay))
    yield relay
    relay.stop()


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metric_total(generate_latest(metrics.registry).decode(), name, **labels)


PERMANENT = [
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError._INVALID_ARG,
]
TRANSIENT = [
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
]


@pytest.mark.parametrize("code", PERMANENT, ids=lambda code: KafkaError(code).name())
def test_a_record_the_broker_refuses_for_good_is_parked_alone_and_the_batch_goes_on(
    uow: UnitOfWork,
    producer: FakeProducer,
    hook: Hook,
    hooked: OutboxRelay,
    metrics: ServiceMetrics,
    code: int,
) -> None:
    first, bad, last = store(uow, event(1), event(2), event(3))
    producer.refused = {bad.id: KafkaError(code)}

    assert hooked.relay_once() == 3, "all three finished: two sent, one parked"

    assert [e.id for _, e in producer.sent] == [first.id, bad.id, last.id, bad.id]
    assert producer.calls[-1] == [("orders", bad)], "tried alone before it was parked"
    assert unsent(uow) == [bad.id]
    assert recorded(uow) == {first.id, last.id}
    parked = row_of(uow, bad)
    assert parked.parked_at is not None and KafkaError(code).name() in (parked.parked_reason or "")
    assert (parked.partition, parked.offset) == (None, None)
    assert (hooked.published, hooked.parked, hooked.pending()) == (2, 1, 0)
    assert hooked.relay_once() == 0 and len(producer.calls) == 2, "never tried again"
    assert sample(metrics, "outbox_parked_total", topic="orders", reason="unpublishable") == 1
    assert sample(metrics, "outbox_parked_events") == 1
    assert sample(metrics, "outbox_unsent_events") == 0
    ((topic, key, value, headers),) = producer.notices
    assert (topic, key, value) == ("dead-letters", "key-2", None)
    assert headers[H_SOURCE] == OUTBOX_SOURCE and headers[H_REASON] == "unpublishable"
    assert (headers[H_ID], headers[H_TYPE], headers[H_TOPIC]) == (bad.id, "tick", "orders")
    assert headers[H_CONSUMER] == "tests-outbox" and headers[H_ERROR] == parked.parked_reason
    assert H_OFFSET not in headers and int(headers[H_SIZE]) > len(bad.data)


def test_a_record_refused_only_within_its_batch_is_sent_alone_and_not_parked(
    uow: UnitOfWork, producer: FakeProducer, hooked: OutboxRelay
) -> None:
    """A broker rejects a whole request for one record in it: the others are innocent."""
    first, innocent = store(uow, event(1), event(2))
    producer.refused_in_batches = {innocent.id: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)}

    assert hooked.relay_once() == 2

    assert unsent(uow) == [] and hooked.parked == 0
    assert producer.calls[-1] == [("orders", innocent)]
    assert producer.notices == []


@pytest.mark.parametrize("code", TRANSIENT, ids=lambda code: KafkaError(code).name())
def test_a_transient_error_never_parks_and_only_the_failed_row_is_sent_again(
    uow: UnitOfWork, producer: FakeProducer, hooked: OutboxRelay, code: int
) -> None:
    first, waiting, last = store(uow, event(1), event(2), event(3))
    producer.refused = {waiting.id: KafkaError(code)}

    with pytest.raises(RuntimeError, match="1 event"):
        hooked.relay_once()

    assert unsent(uow) == [waiting.id]
    assert row_of(uow, waiting).parked_at is None and hooked.parked == 0
    assert recorded(uow) == {first.id, last.id}, "the acknowledged rows were marked"
    producer.refused = {}
    assert hooked.relay_once() == 1
    assert producer.calls[-1] == [("orders", waiting)]
    assert producer.notices == []


@pytest.mark.parametrize("failure", ["database", "python"])
def test_a_row_the_hook_cannot_record_is_parked_alone_and_nothing_is_sent_twice(
    uow: UnitOfWork,
    producer: FakeProducer,
    hook: Hook,
    hooked: OutboxRelay,
    metrics: ServiceMetrics,
    failure: str,
) -> None:
    bad = event(2, cause="r" * 200) if failure == "database" else event(2)
    if failure == "python":
        hook.python_error = bad.id
    first, _, last = store(uow, event(1), bad, event(3))

    assert hooked.relay_once() == 3

    assert len(producer.calls) == 1, "published once"
    assert unsent(uow) == [], "on Kafka, so marked sent"
    assert recorded(uow) == {first.id, last.id}
    assert hook.calls[0] == [first.id, bad.id, last.id], "the fast path first"
    assert hook.calls[1:] == [[first.id], [bad.id], [last.id]], "then one by one"
    parked = row_of(uow, bad)
    where = f"orders[{parked.partition}]@{parked.offset}"
    assert (parked.parked_reason or "").startswith(f"published at {where}, not recorded: ")
    if failure == "database":
        assert "CHECK constraint failed" in (parked.parked_reason or "")
    else:
        assert "\x00" not in (parked.parked_reason or ""), "fit for any text column"
    assert hooked.relay_once() == 0 and len(producer.calls) == 1
    assert (hooked.published, hooked.parked) == (3, 1)
    assert sample(metrics, "outbox_parked_total", topic="orders", reason="unrecorded") == 1
    assert sample(metrics, "events_published_total", topic="orders", type="tick") == 3
    ((_, _, _, headers),) = producer.notices
    assert headers[H_REASON] == "unrecorded" and headers[H_ID] == bad.id
    assert (int(headers[H_PARTITION]), int(headers[H_OFFSET])) == (parked.partition, parked.offset)


def test_a_database_outage_while_marking_holds_the_acknowledged_rows_and_never_resends(
    uow: UnitOfWork, producer: FakeProducer, hook: Hook, hooked: OutboxRelay
) -> None:
    emitted = store(uow, event(1), event(2))
    hook.broken = True

    with pytest.raises(OperationalError, match="locked"):
        hooked.relay_once()
    assert unsent(uow) == [e.id for e in emitted] and hooked.parked == 0
    with pytest.raises(OperationalError, match="locked"):
        hooked.relay_once()

    hook.broken = False
    later = store(uow, event(3))
    assert hooked.relay_once() == 1, "the held rows marked, then the next batch"
    assert [e.id for _, e in producer.sent] == [e.id for e in emitted + later], "each once"
    assert unsent(uow) == [] and recorded(uow) == {e.id for e in emitted + later}
    assert hooked.published == 3


def test_retrying_an_unrecorded_row_records_it_without_publishing_it_again(
    uow: UnitOfWork, producer: FakeProducer, hook: Hook, hooked: OutboxRelay
) -> None:
    (bad,) = store(uow, event(1))
    hook.python_error = bad.id
    hooked.relay_once()
    parked = row_of(uow, bad)
    assert parked.parked_at is not None

    hook.python_error = None  # the fix
    with uow() as unit:
        assert parking.unpark(unit.session, Outbox, [bad.id]) == [bad.id]
    assert hooked.pending() == 1

    assert hooked.relay_once() == 1

    assert len(producer.calls) == 1, "not published again"
    again = row_of(uow, bad)
    assert again.parked_at is None and again.parked_reason is None and again.sent_at
    assert (again.partition, again.offset) == (parked.partition, parked.offset)
    with uow() as unit:
        filed = unit.session.get(Recorded, bad.id)
        assert filed is not None and (filed.partition, filed.offset) == (
            parked.partition,
            parked.offset,
        )
    assert hooked.published == 1, "counted once, when it was published"


def test_a_row_still_refused_after_a_retry_is_parked_again_with_its_new_reason(
    uow: UnitOfWork, producer: FakeProducer, hooked: OutboxRelay
) -> None:
    (bad,) = store(uow, event(1))
    producer.refused = {bad.id: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)}
    hooked.relay_once()
    producer.refused = {bad.id: KafkaError(KafkaError.INVALID_RECORD)}
    with uow() as unit:
        parking.unpark(unit.session, Outbox)

    hooked.relay_once()

    assert "INVALID_RECORD" in (row_of(uow, bad).parked_reason or "")
    assert hooked.parked == 2 and len(producer.notices) == 2


def test_a_parked_row_is_parked_even_when_its_notice_cannot_be_sent(
    uow: UnitOfWork, producer: FakeProducer, hooked: OutboxRelay
) -> None:
    (bad,) = store(uow, event(1))
    producer.refused = {bad.id: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)}
    producer.notices_fail = True

    assert hooked.relay_once() == 1

    assert row_of(uow, bad).parked_at is not None and hooked.parked == 1
    assert producer.notices == []


def test_purge_keeps_parked_rows_however_old(uow: UnitOfWork, relay: OutboxRelay) -> None:
    (sent, unrecorded) = store(uow, event(1), event(2))
    long_ago = utcnow() - timedelta(days=30)
    with uow() as unit:
        unit.session.execute(update(Outbox).values(sent_at=long_ago, partition=0, offset=0))
        unit.session.execute(
            update(Outbox)
            .where(Outbox.event_id == unrecorded.id)
            .values(parked_at=long_ago, parked_reason="not recorded")
        )

    assert relay.purge(timedelta(hours=24)) == 1

    assert [row.event_id for row in rows(uow)] == [unrecorded.id]


def test_send_records_gives_a_record_refused_before_queueing_its_error_and_sends_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Queue:
        """librdkafka's producer, refusing records as it does before queueing them."""

        def __init__(self) -> None:
            self.queued: list[bytes] = []

        def produce(self, topic: str, value: bytes, key: str, headers: Any, on_delivery: Any):
            if value == b"too-large":
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            if value == b"bad-header":
                raise TypeError("expected header value to be None, binary, or unicode string")
            self.queued.append(value)
            on_delivery(None, FakeMessage(len(self.queued)))

        def poll(self, timeout: float) -> int:
            return 0

        def flush(self, timeout: float) -> int:
            return 0

    @dataclass
    class FakeMessage:
        offset_: int

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self.offset_

    producer = EventProducer.__new__(EventProducer)
    queue = Queue()
    monkeypatch.setattr(producer, "_producer", queue, raising=False)
    values = [b"one", b"too-large", b"bad-header", b"two"]

    placed = producer.send_records([("orders", "k", value, []) for value in values])

    assert queue.queued == [b"one", b"two"]
    assert [p.error.code() if p.error else None for p in placed] == [
        None,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError._INVALID_ARG,
        None,
    ]
    assert [p.offset for p in placed if p.error is None] == [1, 2]
