"""The consumer loop without a broker: fake messages, a fake consumer and producer, and
the real SQLite-backed unit of work with a tiny schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import generate_latest
from sqlalchemy import Engine, Integer, String, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column

import shared.messaging.consumer
from shared.messaging import exporters, tracing
from shared.messaging.applying import Rewind
from shared.messaging.consumer import ConsumerWorker
from shared.messaging.deadletter import Reason
from shared.messaging.envelope import Envelope, HeaderValue, KafkaHeaders, dump_json
from shared.messaging.events import Event
from shared.messaging.fetch import rewind
from shared.messaging.outbox import row_to_envelope
from shared.messaging.producer import DeliveryError
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.runtime.metrics import ServiceMetrics
from shared.storage.db import make_sessions
from tests.helpers import ConsumedRecord
from tests.schema import Base, Outbox, Processed

pytestmark = pytest.mark.unit

TOPIC = "ticks"
TOCKS = "tocks"
DLQ = "ticks-dlq"
CONSUMER = "ticker"


class Applied(Base):
    """What the handler wrote: rolled back with its transaction."""

    __tablename__ = "routing_applied"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)


class Tick(Event, type="tick", topic=TOPIC, key="seq"):
    seq: int


class Tock(Event, type="tock", topic=TOCKS, key="seq"):
    seq: int


def tick(seq: int = 1, key: str = "k", event_type: str = "tick") -> Envelope:
    return Envelope(
        type=event_type,
        source="/tests",
        key=key,
        data=dump_json(Tick(seq=seq)),
        correlation_id="saga-1",
    )


@dataclass
class KafkaErrorStub:
    is_fatal: bool = False

    def fatal(self) -> bool:
        return self.is_fatal

    def __str__(self) -> str:
        return "Broker: partition EOF"


@dataclass
class FakeMessage(ConsumedRecord):
    value_: bytes | None
    headers_: KafkaHeaders
    key_: bytes | None = b"k"
    topic_: str = TOPIC
    partition_: int = 0
    offset_: int = 0
    error_: KafkaErrorStub | None = None

    def error(self) -> KafkaErrorStub | None:
        return self.error_


def message(
    event: Envelope, offset: int = 0, partition: int = 0, topic: str = TOPIC
) -> FakeMessage:
    return FakeMessage(
        event.data,
        event.headers(),
        event.key.encode(),
        topic_=topic,
        partition_=partition,
        offset_=offset,
    )


@dataclass
class FakeConsumer:
    stored: list[FakeMessage] = field(default_factory=list)
    seeks: list[tuple[str, int, int]] = field(default_factory=list)

    def store_offsets(self, message: FakeMessage) -> None:
        self.stored.append(message)

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))


@dataclass
class Parked:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: dict[str, str]


@dataclass
class FakeProducer:
    parked: list[Parked] = field(default_factory=list)
    down: bool = False

    def produce_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: KafkaHeaders | None = None,
        timeout: float = 30,
    ) -> None:
        if self.down:
            raise DeliveryError("<raw>", "broker unreachable")
        text = {n: v.decode() if isinstance(v, bytes) else (v or "") for n, v in headers or []}
        self.parked.append(Parked(topic, value, key, text))


class Harness:
    """A worker whose `tick` handler writes a row and then does what `behaviour` says.

    It consumes `ticks`, which by default another service owns (as every service's
    subscriptions are); `owned_topics` makes it the owner."""

    def __init__(
        self, uow: UnitOfWork, owned_topics: Sequence[str] = (), **worker_options: Any
    ) -> None:
        self.uow = uow
        self.calls: list[str] = []
        self.seen: list[Envelope] = []
        self.behaviour: Callable[[int], None] = lambda attempt: None
        self.router = EventRouter()
        self.router.on(self._handle)
        self.consumer = FakeConsumer()
        self.producer = FakeProducer()
        self.worker_options: dict[str, Any] = {
            "name": CONSUMER,
            "bootstrap": "never-dialled:9092",
            "topics": [TOPIC],
            "owned_topics": owned_topics,
            "router": self.router,
            "uow": uow,
            "processed_model": Processed,
            "producer": self.producer,
            "dead_letter_topic": DLQ,
            "backoff": 0,
        } | worker_options
        self.worker = ConsumerWorker(**self.worker_options)

    def _handle(self, unit: Unit, event: Envelope, payload: Tick) -> None:
        self.calls.append(event.id)
        self.seen.append(event)
        unit.session.add(Applied(event_id=event.id, seq=payload.seq))
        unit.outbox.emit(Tock(seq=payload.seq))
        unit.session.flush()
        self.behaviour(len(self.calls))

    def process(self, record: FakeMessage) -> None:
        self.worker.process_batch(self.consumer, [record])  # type: ignore[list-item]

    def applied(self) -> list[int]:
        with self.uow() as unit:
            return list(unit.session.scalars(select(Applied.seq).order_by(Applied.seq)))

    def processed(self) -> int:
        with self.uow() as unit:
            return unit.session.scalar(select(func.count()).select_from(Processed)) or 0

    def emitted(self) -> list[Envelope]:
        with self.uow() as unit:
            return [
                row_to_envelope(row)
                for row in unit.session.scalars(select(Outbox).order_by(Outbox.id))
            ]

    def reasons(self) -> list[str]:
        return [p.headers["dlq_reason"] for p in self.producer.parked]


@pytest.fixture
def uow(sqlite_engine: Engine) -> UnitOfWork:
    Base.metadata.create_all(sqlite_engine)
    return UnitOfWork(make_sessions(sqlite_engine), Outbox, "/tests")


@pytest.fixture
def harness(uow: UnitOfWork) -> Harness:
    exporters.configure("test")
    return Harness(uow)


@pytest.fixture
def owner(uow: UnitOfWork) -> Harness:
    """A worker that owns the topic it consumes: an unknown type there is a bug."""
    exporters.configure("test")
    return Harness(uow, owned_topics=[TOPIC])


def failing_with(error: Exception, times: int | None = None) -> Callable[[int], None]:
    def behaviour(attempt: int) -> None:
        if times is None or attempt <= times:
            raise error

    return behaviour


def database_locked() -> OperationalError:
    return OperationalError("INSERT INTO applied ...", {}, Exception("database is locked"))


# Applying


def test_a_valid_event_is_applied_once_and_its_offset_stored(harness: Harness) -> None:
    record = message(tick(7), offset=3)

    harness.process(record)

    assert harness.applied() == [7]
    assert harness.calls == [Envelope.from_message(record).id]
    assert harness.consumer.stored == [record]
    assert harness.producer.parked == []
    assert (harness.worker.applied, harness.worker.dead_lettered) == (1, 0)


def test_a_handler_gets_the_event_at_its_kafka_position_as_the_cause_of_what_it_emits(
    harness: Harness,
) -> None:
    event = tick(7)

    harness.process(message(event, offset=3, partition=2))

    [seen] = harness.seen
    assert (seen.id, seen.topic, seen.partition, seen.offset) == (event.id, TOPIC, 2, 3)
    [tock] = harness.emitted()
    assert (tock.type, tock.key, tock.causation_id, tock.correlation_id) == (
        "tock",
        "7",  # Tock's key field
        event.id,
        "saga-1",
    )
    with harness.uow() as unit:
        assert list(unit.session.scalars(select(Outbox.topic))) == [TOCKS]
    after = tracing.new_event("tock", "1", Tock(seq=1), source="/tests")
    assert after.causation_id is None, "the event's context ended with its handling"


def test_a_redelivered_event_is_not_applied_again_but_its_offset_is_stored(
    harness: Harness,
) -> None:
    event = tick(7)
    first, redelivered, replayed = message(event, 3), message(event, 3), message(event, 90)

    for record in (first, redelivered, replayed):
        harness.process(record)

    assert harness.applied() == [7]
    assert len(harness.calls) == 1
    assert harness.consumer.stored == [first, redelivered, replayed]
    assert harness.producer.parked == []
    assert harness.worker.applied == 1
    assert len(harness.emitted()) == 1


def test_the_harness_subscribes_to_the_topic_of_its_handler(harness: Harness) -> None:
    assert harness.router.topics == [TOPIC]


@pytest.mark.parametrize("event_type", ["tock", "tack"])
def test_an_unknown_type_on_a_topic_the_service_does_not_own_is_skipped_and_counted(
    harness: Harness, event_type: str
) -> None:
    record = message(tick(7, event_type=event_type), offset=5)

    harness.process(record)

    assert harness.calls == []
    assert harness.consumer.stored == [record]
    assert harness.producer.parked == []
    assert harness.processed() == 0
    assert (harness.worker.skipped, harness.worker.dead_lettered, harness.worker.applied) == (
        1,
        0,
        0,
    )


def test_an_unknown_type_on_a_topic_the_service_owns_is_dead_lettered_not_skipped(
    owner: Harness,
) -> None:
    record = message(tick(7, event_type="tack"), offset=5)

    owner.process(record)

    assert owner.calls == []
    assert owner.reasons() == [Reason.UNKNOWN_TYPE]
    assert owner.consumer.stored == [record]
    assert (owner.worker.skipped, owner.worker.dead_lettered) == (0, 1)


@pytest.mark.parametrize("owned", [[], [TOPIC]], ids=["foreign", "owned"])
def test_a_known_type_is_applied_whoever_owns_its_topic(uow: UnitOfWork, owned: list[str]) -> None:
    harness = Harness(uow, owned_topics=owned)

    harness.process(message(tick(7)))

    assert harness.applied() == [7]
    assert (harness.worker.applied, harness.worker.skipped) == (1, 0)


@pytest.mark.parametrize("owned", [[], [TOCKS]], ids=["foreign", "owned"])
def test_a_known_type_on_another_topic_is_dead_lettered_never_applied(
    uow: UnitOfWork, owned: list[str]
) -> None:
    """Only the owner of `ticks` may write a `tick`: one on `tocks` is somebody passing
    their own record off as it (a stolen password of the topic's writer, say)."""
    harness = Harness(uow, owned_topics=owned, topics=[TOPIC, TOCKS])
    forged, genuine = message(tick(7), offset=3, topic=TOCKS), message(tick(8), offset=4)

    harness.worker.process_batch(harness.consumer, [forged, genuine])  # type: ignore[arg-type]

    assert harness.applied() == [8]
    assert harness.reasons() == [Reason.WRONG_TOPIC]
    assert (
        "'tick' belongs on 'ticks', not 'tocks'" in harness.producer.parked[0].headers["dlq_error"]
    )
    assert harness.consumer.stored == [forged, genuine]


def test_a_known_type_is_taken_from_its_topic_under_the_stacks_prefix(uow: UnitOfWork) -> None:
    harness = Harness(uow, topics=["p-" + TOPIC], topic_prefix="p-")

    harness.process(message(tick(7), topic="p-" + TOPIC))
    harness.process(message(tick(8), offset=1, topic=TOPIC))

    assert harness.applied() == [7]
    assert harness.reasons() == [Reason.WRONG_TOPIC]


def test_skipping_is_decided_by_the_topic_of_each_record_in_a_batch(uow: UnitOfWork) -> None:
    exporters.configure("test")
    harness = Harness(uow, owned_topics=[TOCKS])  # consumes ticks, owns tocks
    batch = [
        message(tick(1), offset=0),
        message(tick(2, event_type="tack"), offset=1),  # on ticks: skipped
        message(tick(3, event_type="tack"), offset=0, topic=TOCKS),  # on tocks: parked
        message(tick(4, event_type="tock"), offset=2),  # no handler here either: skipped
        message(tick(5), offset=3),
    ]

    harness.worker.process_batch(harness.consumer, batch)  # type: ignore[arg-type]

    assert harness.applied() == [1, 5]
    assert harness.consumer.stored == batch
    [parked] = harness.producer.parked
    assert (parked.headers["dlq_reason"], parked.headers["dlq_topic"]) == (
        Reason.UNKNOWN_TYPE,
        TOCKS,
    )
    assert (harness.worker.applied, harness.worker.skipped, harness.worker.dead_lettered) == (
        2,
        2,
        1,
    )


def test_one_batch_is_reported_by_type_as_consumed_applied_skipped_and_dead_lettered(
    uow: UnitOfWork,
) -> None:
    metrics = ServiceMetrics(CONSUMER)
    harness = Harness(uow, observer=metrics)
    first = tick(1)
    bad = message(tick(9), offset=5)
    bad.value_ = b'{"seq": "not a number"}'
    batch = [
        message(first, offset=1),
        *[message(tick(seq, event_type="tack"), offset=seq) for seq in (2, 3, 4)],
        bad,
        message(first, offset=6),  # a redelivery: consumed, not applied again
        message(tick(7), offset=7),
    ]

    harness.worker.process_batch(harness.consumer, batch)  # type: ignore[arg-type]

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"service": CONSUMER, **labels})

    assert value("events_consumed_total", topic=TOPIC, type="tick") == 4
    assert value("events_consumed_total", topic=TOPIC, type="other") == 3
    assert value("events_applied_total", type="tick") == 2
    assert value("events_skipped_total", topic=TOPIC) == 3
    assert value("events_dead_lettered_total", type="tick", reason=Reason.INVALID_PAYLOAD) == 1
    assert value("event_handler_duration_seconds_count", type="tick") == 2
    assert value("event_handler_duration_seconds_bucket", type="tick", le="+Inf") == 2
    assert b"events_skipped_total" in generate_latest(metrics.registry)


def test_an_unknown_type_is_reported_as_other_so_labels_stay_bounded(owner: Harness) -> None:
    metrics = ServiceMetrics(CONSUMER)
    worker = ConsumerWorker(**{**owner.worker_options, "observer": metrics})
    for seq in range(5):
        record = message(tick(seq, event_type=f"made-up-{seq}"))
        worker.process_batch(owner.consumer, [record])  # type: ignore[arg-type, list-item]

    labels = {"service": CONSUMER, "type": "other", "reason": Reason.UNKNOWN_TYPE}
    assert metrics.registry.get_sample_value("events_dead_lettered_total", labels) == 5
    types = {
        sample.labels["type"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if "type" in sample.labels
    }
    assert types == {"other"}


def test_a_kafka_error_that_is_not_fatal_is_skipped_without_storing_an_offset(
    harness: Harness,
) -> None:
    record = FakeMessage(None, [], error_=KafkaErrorStub(is_fatal=False))

    harness.process(record)

    assert harness.consumer.stored == []
    assert harness.producer.parked == []


def test_a_fatal_kafka_error_stops_the_loop(harness: Harness) -> None:
    with pytest.raises(KafkaException):
        harness.process(FakeMessage(None, [], error_=KafkaErrorStub(is_fatal=True)))
    assert harness.consumer.stored == []


# Dead letters


def headers_without(event: Envelope, name: str) -> KafkaHeaders:
    return [(n, v) for n, v in event.headers() if n != name]


def bad_records() -> dict[str, tuple[FakeMessage, str]]:
    event = tick(7)
    headers = event.headers()
    return {
        "unknown-type": (message(tick(7, event_type="tack")), Reason.UNKNOWN_TYPE),
        "invalid-json": (FakeMessage(b"{seq: 7", headers), Reason.INVALID_ENVELOPE),
        "no-value": (FakeMessage(None, headers), Reason.INVALID_ENVELOPE),
        "missing-header": (
            FakeMessage(event.data, headers_without(event, "ce_id")),
            Reason.INVALID_ENVELOPE,
        ),
        "wrong-specversion": (
            FakeMessage(
                event.data, [*headers_without(event, "ce_specversion"), ("ce_specversion", b"0.3")]
            ),
            Reason.INVALID_ENVELOPE,
        ),
        "invalid-payload": (FakeMessage(b'{"seq": "seven"}', headers), Reason.INVALID_PAYLOAD),
        "missing-field": (FakeMessage(b"{}", headers), Reason.INVALID_PAYLOAD),
    }


@pytest.mark.parametrize("case", list(bad_records()))
def test_a_poison_message_is_dead_lettered_with_its_reason_and_its_offset_stored(
    owner: Harness, case: str
) -> None:
    harness = owner
    record, reason = bad_records()[case]
    record = replace(record, partition_=2, offset_=41)

    harness.process(record)

    assert harness.calls == []
    assert harness.consumer.stored == [record]
    [parked] = harness.producer.parked
    assert parked.topic == DLQ
    assert parked.headers["dlq_reason"] == reason
    assert (parked.headers["dlq_topic"], parked.headers["dlq_partition"]) == (TOPIC, "2")
    assert (parked.headers["dlq_offset"], parked.headers["dlq_consumer"]) == ("41", CONSUMER)
    assert parked.headers["dlq_error"]
    assert (parked.value, parked.key) == (record.value_, record.key_)
    original: dict[str, HeaderValue] = dict(record.headers_)
    assert {n: v for n, v in parked.headers.items() if not n.startswith("dlq_")} == {
        n: v.decode() if isinstance(v, bytes) else v for n, v in original.items()
    }
    assert harness.worker.dead_lettered == 1
    assert harness.worker.skipped == 0
    assert harness.processed() == 0


@pytest.mark.parametrize("case", [case for case in bad_records() if case != "unknown-type"])
def test_a_poison_message_on_a_topic_the_service_does_not_own_is_dead_lettered_too(
    harness: Harness, case: str
) -> None:
    record, reason = bad_records()[case]

    harness.process(record)

    assert harness.calls == []
    assert harness.reasons() == [reason]
    assert harness.consumer.stored == [record]
    assert (harness.worker.dead_lettered, harness.worker.skipped) == (1, 0)


def test_an_unknown_type_names_the_type_in_the_dead_letter(owner: Harness) -> None:
    owner.process(message(tick(7, event_type="tack")))

    [parked] = owner.producer.parked
    assert "tack" in parked.headers["dlq_error"]


def test_a_conflicting_duplicate_is_dead_lettered_and_never_applied(harness: Harness) -> None:
    event = tick(7)
    impostor = replace(event, data=dump_json(Tick(seq=8)))
    first, second = message(event, 3), message(impostor, 4)

    harness.process(first)
    harness.process(second)

    assert harness.applied() == [7]
    assert len(harness.calls) == 1
    assert harness.reasons() == [Reason.CONFLICT]
    assert event.id in harness.producer.parked[0].headers["dlq_error"]
    assert harness.producer.parked[0].value == impostor.data
    assert harness.consumer.stored == [first, second]


def test_a_handler_failing_twice_then_succeeding_is_applied_once(harness: Harness) -> None:
    harness.behaviour = failing_with(RuntimeError("flaky"), times=2)
    record = message(tick(7))

    harness.process(record)

    assert len(harness.calls) == 3
    assert harness.applied() == [7]
    assert len(harness.emitted()) == 1, "the failed attempts' events were rolled back"
    assert harness.processed() == 1
    assert harness.producer.parked == []
    assert harness.consumer.stored == [record]
    assert harness.worker.applied == 1


@pytest.mark.parametrize("max_attempts", [1, 3, 4])
def test_a_handler_that_always_fails_is_dead_lettered_after_max_attempts(
    uow: UnitOfWork, max_attempts: int
) -> None:
    harness = Harness(uow, max_attempts=max_attempts)
    harness.behaviour = failing_with(ValueError("bad data"))
    record = message(tick(7))

    harness.process(record)

    assert len(harness.calls) == max_attempts
    assert harness.reasons() == [Reason.HANDLER_FAILED]
    assert "ValueError('bad data')" in harness.producer.parked[0].headers["dlq_error"]
    assert harness.consumer.stored == [record]
    assert harness.applied() == []
    assert harness.emitted() == []
    assert harness.processed() == 0, "unclaimed, so a redrive after the fix applies it"
    assert (harness.worker.applied, harness.worker.dead_lettered) == (0, 1)


def test_a_dead_lettered_event_redriven_after_the_fix_is_applied(harness: Harness) -> None:
    harness.behaviour = failing_with(ValueError("bad data"))
    event = tick(7)
    harness.process(message(event, 3))

    harness.behaviour = lambda _: None
    harness.process(message(event, 99))

    assert harness.applied() == [7]
    assert harness.reasons() == [Reason.HANDLER_FAILED]


def test_an_integrity_error_in_the_handler_is_bad_data_not_an_outage(harness: Harness) -> None:
    harness.behaviour = failing_with(IntegrityError("INSERT", {}, Exception("UNIQUE failed")))

    harness.process(message(tick(7)))

    assert harness.reasons() == [Reason.HANDLER_FAILED]
    assert len(harness.consumer.stored) == 1


# Outages rewind


@pytest.mark.parametrize(
    "outage",
    [
        database_locked(),
        DBAPIError("SELECT 1", {}, Exception("server closed"), connection_invalidated=True),
        DeliveryError("e-1", "broker unreachable"),
    ],
    ids=["operational-error", "connection-invalidated", "delivery-error"],
)
def test_a_transient_failure_rewinds_without_storing_the_offset(
    harness: Harness, outage: Exception
) -> None:
    harness.behaviour = failing_with(outage, times=1)
    record = message(tick(7))

    with pytest.raises(Rewind) as caught:
        harness.process(record)

    assert caught.value.__cause__ is outage
    assert len(harness.calls) == 1, "no retry in place: the loop pauses and re-consumes"
    assert harness.consumer.stored == []
    assert harness.producer.parked == []
    assert harness.applied() == [] and harness.processed() == 0

    harness.process(record)  # consumed again once the database is back

    assert harness.applied() == [7]
    assert harness.consumer.stored == [record]


def test_an_unreachable_dead_letter_topic_rewinds_without_storing_the_offset(
    harness: Harness,
) -> None:
    harness.producer.down = True
    record = FakeMessage(b"{not json", tick(7).headers())

    with pytest.raises(Rewind):
        harness.process(record)

    assert harness.consumer.stored == []
    assert harness.worker.dead_lettered == 0


def test_rewind_seeks_each_partition_to_its_first_unapplied_message() -> None:
    consumer = FakeConsumer()
    batch = [
        message(tick(1), offset=11, partition=0),
        FakeMessage(None, [], error_=KafkaErrorStub()),
        message(tick(2), offset=5, partition=1),
        message(tick(3), offset=12, partition=0),
        message(tick(4), offset=6, partition=1),
    ]

    rewind(consumer, batch)  # type: ignore[arg-type]

    assert sorted(consumer.seeks) == [(TOPIC, 0, 11), (TOPIC, 1, 5)]


@dataclass
class LoopConsumer(FakeConsumer):
    """What `ConsumerWorker._run` builds instead of a confluent_kafka.Consumer."""

    fetched: list[FakeMessage] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    closed: bool = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = topics

    def poll(self, timeout: float) -> FakeMessage | None:
        return self.fetched.pop(0) if self.fetched else None

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        batch, self.fetched = self.fetched[:num_messages], self.fetched[num_messages:]
        return batch

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def loop_consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopConsumer]:
    consumer = LoopConsumer()
    monkeypatch.setattr(shared.messaging.consumer, "Consumer", lambda config: consumer)
    yield consumer


def test_an_outage_rolls_back_the_whole_run_and_seeks_back_to_its_start(
    harness: Harness, loop_consumer: LoopConsumer
) -> None:
    ok, outage, later, other = (
        message(tick(1), offset=10, partition=0),
        message(tick(2), offset=11, partition=0),
        message(tick(3), offset=12, partition=0),
        message(tick(4), offset=7, partition=1),
    )
    loop_consumer.fetched = [ok, outage, later, other]

    def behaviour(attempt: int) -> None:
        if attempt == 2:
            harness.worker.stop()  # shut down during the outage: no pause before exiting
            raise database_locked()

    harness.behaviour = behaviour

    harness.worker._run()

    assert loop_consumer.subscribed == [TOPIC]
    # The four events were one run, one transaction: none of it is applied or stored.
    assert harness.applied() == []
    assert loop_consumer.stored == []
    assert sorted(loop_consumer.seeks) == [(TOPIC, 0, 10), (TOPIC, 1, 7)]
    assert loop_consumer.closed
    assert harness.worker.last_error is not None and "locked" in harness.worker.last_error


def test_one_fetched_batch_applies_good_events_once_and_sends_the_rest_where_they_belong(
    harness: Harness,
) -> None:
    first, second, third = tick(1), tick(2), tick(3)
    reused = replace(second, data=dump_json(Tick(seq=99)))
    batch = [
        message(first, offset=0),
        FakeMessage(b"{not json", tick(4).headers(), offset_=1),
        message(second, offset=2),
        message(first, offset=3),  # an exact redelivery
        message(reused, offset=4),  # the same id with another payload
        message(third, offset=5),
    ]

    harness.worker.process_batch(harness.consumer, batch)  # type: ignore[arg-type]

    assert harness.applied() == [1, 2, 3]
    assert harness.calls == [first.id, second.id, third.id]
    assert harness.reasons() == [Reason.INVALID_ENVELOPE, Reason.CONFLICT]
    assert harness.consumer.stored == batch
    assert harness.processed() == 3
    assert [e.json() for e in harness.emitted()] == [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    assert (harness.worker.applied, harness.worker.dead_lettered) == (3, 2)


def test_records_skipped_among_a_runs_events_leave_it_one_transaction_and_store_in_order(
    uow: UnitOfWork,
) -> None:
    """As inventory's order-created share `orders` with the order-confirmed it skips: a
    run cut at every skipped record would cost a transaction per event."""
    exporters.configure("test")
    runs: list[list[int]] = []
    router = EventRouter()

    @router.on
    def ticks(unit: Unit, received: Sequence[Tick]) -> None:
        runs.append([tick.seq for tick in received])

    harness = Harness(uow, router=router)
    batch = [
        message(tick(1), offset=0),
        message(tick(90, event_type="tack"), offset=1),
        message(tick(2), offset=2, partition=1),
        message(tick(91, event_type="tack"), offset=3, partition=1),
        message(tick(92, event_type="tack"), offset=4),
        message(tick(3), offset=5),
        message(tick(93, event_type="tack"), offset=6),
    ]

    harness.worker.process_batch(harness.consumer, batch)  # type: ignore[arg-type]

    assert runs == [[1, 2, 3]]
    assert harness.consumer.stored == batch
    assert (harness.worker.applied, harness.worker.skipped) == (3, 4)


def test_a_failing_event_among_skipped_records_fails_alone_and_every_offset_follows_in_order(
    harness: Harness,
) -> None:
    first, second, third = tick(1), tick(2), tick(3)

    def fail_on_second(_: int) -> None:
        if harness.seen[-1].id == second.id:
            raise ValueError("bad data")

    harness.behaviour = fail_on_second
    batch = [
        message(first, offset=0),
        message(tick(90, event_type="tack"), offset=1),
        message(second, offset=2),
        message(tick(91, event_type="tack"), offset=3),
        message(third, offset=4),
        message(tick(92, event_type="tack"), offset=5),
    ]

    harness.worker.process_batch(harness.consumer, batch)  # type: ignore[arg-type]

    assert harness.applied() == [1, 3]
    assert harness.reasons() == [Reason.HANDLER_FAILED]
    assert harness.consumer.stored == batch


def test_a_batch_handler_gets_each_run_of_its_type_in_order(uow: UnitOfWork) -> None:
    calls: list[tuple[str, list[int]]] = []
    router = EventRouter()

    @router.on
    def ticks(unit: Unit, received: Sequence[Tick]) -> None:
        calls.append(("tick", [tick.seq for tick in received]))

    @router.on
    def tock(unit: Unit, event: Envelope, payload: Tock) -> None:
        calls.append(("tock", [payload.seq]))

    events = [tick(1), tick(2), tick(3, event_type="tock"), tick(4), tick(5)]
    received = [Received(e, (Tock if e.type == "tock" else Tick).model_validate_json(e.data))
                for e in events]  # fmt: skip
    with uow() as unit:
        router.dispatch(unit, received)

    assert calls == [("tick", [1, 2]), ("tock", [3]), ("tick", [4, 5])]
