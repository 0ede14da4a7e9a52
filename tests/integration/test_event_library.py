"""The shared event library against a real broker and a real database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudevents.v1.kafka import KafkaMessage, from_binary
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import select

from shared.messaging.consumer import ConsumerWorker
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.events import Event
from shared.messaging.producer import DeliveryError, EventProducer
from shared.messaging.router import EventRouter
from shared.messaging.topics import ensure_topics
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.storage.db import make_engine, make_sessions
from tests.conftest import free_port
from tests.helpers import eventually, read_topic, unique
from tests.schema import Base, Outbox, Processed
from tools.local.kafka import LocalBroker

pytestmark = pytest.mark.integration


class Tick(Event, type="tick", topic="ticks", key="seq"):
    seq: int


def tick(key: str, seq: int) -> Envelope:
    return Envelope(type="tick", source="/tests", key=key, data=dump_json(Tick(seq=seq)))


@pytest.fixture
def uow(database_url: str) -> Iterator[UnitOfWork]:
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    yield UnitOfWork(make_sessions(engine), Outbox, "/tests")
    engine.dispose()


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    """Tick's topic under a prefix of its own, as a service's settings prefix topics."""
    name = unique("lib") + "-" + Tick.topic
    ensure_topics(kafka_bootstrap, [name, name + "-dlq"], partitions=3)
    return name


def test_envelope_round_trips_through_kafka_as_a_cloudevent(kafka_bootstrap: str, topic: str):
    sent = Envelope(
        type="order-created",
        source="/services/order",
        key="order-1",
        data=b'{"order_id": "order-1"}',
        correlation_id="order-1",
        causation_id="request-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    delivery = EventProducer(kafka_bootstrap).publish(topic, sent)
    assert delivery.ok and delivery.offset is not None

    (message,) = read_topic(kafka_bootstrap, topic, until=lambda got: len(got) >= 1)
    received = Envelope.from_message(message)
    assert received.id == sent.id and received.type == sent.type
    assert received.key == "order-1" and received.data == sent.data
    assert received.time == sent.time
    assert (received.correlation_id, received.causation_id) == ("order-1", "request-1")
    assert received.traceparent == sent.traceparent
    assert (received.topic, received.partition, received.offset) == (
        topic,
        delivery.partition,
        delivery.offset,
    )

    # The official CloudEvents SDK reads the same record in binary content mode.
    cloud_event = from_binary(
        KafkaMessage(headers=dict(message.headers()), key=message.key(), value=message.value())
    )
    assert cloud_event["specversion"] == "1.0"
    assert cloud_event["id"] == sent.id
    assert cloud_event["type"] == "order-created"
    assert cloud_event["source"] == "/services/order"
    assert cloud_event["correlationid"] == "order-1"
    assert cloud_event["causationid"] == "request-1"
    assert cloud_event.data == {"order_id": "order-1"}


def test_every_key_is_consumed_in_order_by_a_group_of_two(
    kafka_bootstrap: str, topic: str, uow: UnitOfWork
):
    lock = threading.Lock()
    seen: dict[str, list[int]] = defaultdict(list)
    by_worker: dict[str, set[str]] = defaultdict(set)
    router = EventRouter()

    @router.on
    def record(unit: Unit, event: Envelope, payload: Tick) -> None:
        with lock:
            seen[event.key].append(payload.seq)
            by_worker[threading.current_thread().name].add(event.key)

    group = unique("group")
    workers = [
        ConsumerWorker(
            name=f"w{n}",
            group_id=group,
            bootstrap=kafka_bootstrap,
            topics=[topic],
            topic_prefix=topic.removesuffix(Tick.topic),
            router=router,
            uow=uow,
            processed_model=Processed,
            producer=EventProducer(kafka_bootstrap),
            dead_letter_topic=topic + "-dlq",
        )
        for n in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        eventually(
            lambda: all(w.assigned for w in workers),
            timeout=60,
            message="both members of the group own partitions",
        )
        keys = [f"key-{n}" for n in range(50)]
        events = [(topic, tick(keys[n % 50], n // 50)) for n in range(1000)]
        deliveries = EventProducer(kafka_bootstrap).send(events)
        assert all(d.ok for d in deliveries)
        assert len({d.partition for d in deliveries}) == 3
        eventually(
            lambda: sum(len(v) for v in seen.values()) >= 1000,
            timeout=60,
            message="all 1,000 events applied",
        )
    finally:
        for worker in workers:
            worker.stop()
    assert sorted(seen) == sorted(keys)
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), f"{key} out of order: {seqs}"
        assert seqs == list(range(20)), f"{key} lost or doubled: {seqs}"
    assert len(by_worker) == 2, "both members of the group took partitions"


CRASHING_CONSUMER = textwrap.dedent("""
    import os, sys
    from shared.messaging.consumer import ConsumerWorker
    from shared.messaging.router import EventRouter
    from shared.storage.db import make_engine, make_sessions
    from shared.messaging.producer import EventProducer
    from shared.messaging.unit_of_work import UnitOfWork
    from tests.integration.test_event_library import Tick
    from tests.schema import Base, Outbox, Processed

    bootstrap, topic, group, url = sys.argv[1:5]
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    router = EventRouter()

    def handle(tick: Tick) -> None:
        pass

    router.on(handle)
    settle = ConsumerWorker._settle

    def settle_or_die(worker, item, outcome):
        settle(worker, item, outcome)
        if item.payload.seq == 2:  # after the DB commit of event 2, before its offset is stored
            os._exit(9)

    ConsumerWorker._settle = settle_or_die
    worker = ConsumerWorker(
        name="crashy", group_id=group, bootstrap=bootstrap, topics=[topic],
        topic_prefix=topic.removesuffix("ticks"), router=router,
        uow=UnitOfWork(make_sessions(engine), Outbox, "/tests"), processed_model=Processed,
        producer=EventProducer(bootstrap), dead_letter_topic=topic + "-dlq",
    )
    worker.start()
    worker._thread.join(60)
""")


def test_a_consumer_killed_before_storing_its_offset_gets_the_event_again(
    kafka_bootstrap: str, topic: str, uow: UnitOfWork, database_url: str
):
    producer = EventProducer(kafka_bootstrap)
    first = producer.publish(topic, tick("k", 1))
    group = unique("group")
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CONSUMER, kafka_bootstrap, topic, group, database_url],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stderr=subprocess.PIPE,
        text=True,
    )
    partition = TopicPartition(topic, first.partition or 0)
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        eventually(
            lambda: probe.committed([partition], timeout=5)[0].offset == first.offset + 1,
            timeout=60,
            message="event 1 applied and its offset committed",
        )
        producer.publish(topic, tick("k", 2))  # same key, same partition
        assert child.wait(timeout=60) == 9, child.stderr.read() if child.stderr else ""
    finally:
        child.kill()
        probe.close()
    with uow.sessions() as session:
        assert len(session.scalars(select(Processed.event_id)).all()) == 2, "both committed"

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        redelivered = eventually(
            lambda: [m for m in consumer.consume(10, 0.5) if m.error() is None],
            timeout=30,
            message="redelivery to the group",
        )
    finally:
        consumer.close()
    # The group resumes at event 2: committed in the database, never acknowledged to Kafka.
    assert [Envelope.from_message(m).payload(Tick).seq for m in redelivered] == [2]


@pytest.mark.slow
def test_producing_while_the_broker_is_down_raises_instead_of_losing_the_event(tmp_path: Path):
    broker = LocalBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    try:
        ensure_topics(broker.bootstrap, ["down-test"], partitions=3)
        producer = EventProducer(broker.bootstrap, **{"message.timeout.ms": 3000})
        assert producer.publish("down-test", tick("k", 1)).ok
        broker.stop()
        with pytest.raises(DeliveryError):
            producer.publish("down-test", tick("k", 2), timeout=15)
    finally:
        broker.stop()
