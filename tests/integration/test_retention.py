"""Retention: `ServiceRuntime.purge()` keeps the processed-events table (the idempotency
window) and the outbox from growing forever, never drops an event not yet published, and
never lets a redelivery within the window be applied twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy import select, update

from services.inventory.config import InventorySettings
from services.inventory.main import SPEC
from services.inventory.models import OutboxMessage, ProcessedEvent, Stock
from services.product.events import ProductCreated
from shared.clock import utcnow
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.outbox import OutboxRelay
from shared.messaging.producer import EventProducer, producer_config
from shared.runtime.service import ServiceRuntime
from shared.storage.migrations import upgrade
from tests.helpers import eventually, new_anchor, unique

pytestmark = pytest.mark.integration

PROCESSED_HOURS = 2.0
OUTBOX_HOURS = 1.0


def inventory_settings(database_url: str, kafka_bootstrap: str) -> InventorySettings:
    return InventorySettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=unique("retention") + "-",
        consumer_group=unique("retention-inventory"),
        processed_retention_hours=PROCESSED_HOURS,
        outbox_retention_hours=OUTBOX_HOURS,
        keyset_public_key=new_anchor(),
    )


@pytest.fixture
def idle_runtime(database_url: str, kafka_bootstrap: str) -> Iterator[ServiceRuntime]:
    """The inventory runtime's database, with an outbox relay that never runs: the test
    alone decides which outbox rows are sent."""
    runtime = ServiceRuntime(SPEC, inventory_settings(database_url, kafka_bootstrap))
    upgrade(runtime.engine, SPEC.migrations)
    runtime.relay = OutboxRelay(runtime.sessions, OutboxMessage, EventProducer(kafka_bootstrap))
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def running_runtime(database_url: str, kafka_bootstrap: str) -> Iterator[ServiceRuntime]:
    runtime = ServiceRuntime(SPEC, inventory_settings(database_url, kafka_bootstrap))
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def product_created(product_id: str) -> Envelope:
    """The event as the product service publishes it."""
    payload = ProductCreated(product_id=product_id, name=product_id, price_cents=100)
    return Envelope(
        type=ProductCreated.event_type,
        source="/services/product",
        key=payload.event_key,
        data=dump_json(payload),
    )


def processed_row(event_id: str, processed_at: datetime) -> ProcessedEvent:
    return ProcessedEvent(
        consumer="inventory",
        event_id=event_id,
        fingerprint="0" * 64,
        event_type=ProductCreated.event_type,
        processed_at=processed_at,
    )


def outbox_row(event_id: str, created_at: datetime, sent_at: datetime | None) -> OutboxMessage:
    event = product_created(f"p-{event_id}")
    return OutboxMessage(
        event_id=event_id,
        topic="stock-changes",
        key=event.key,
        event_type=event.type,
        headers=[[name, value] for name, value in event.text_headers()],
        payload=event.data,
        created_at=created_at,
        sent_at=sent_at,
        partition=None if sent_at is None else 0,
        offset=None if sent_at is None else 0,
    )


def test_purge_drops_processed_events_older_than_their_retention(idle_runtime: ServiceRuntime):
    now, window = utcnow(), timedelta(hours=PROCESSED_HOURS)
    ages = {
        "days-old": timedelta(days=30),
        "just-expired": window + timedelta(minutes=1),
        "just-within": window - timedelta(minutes=1),
        "fresh": timedelta(0),
    }
    with idle_runtime.sessions.begin() as session:
        session.add_all(processed_row(name, now - age) for name, age in ages.items())

    assert idle_runtime.purge() == (0, 2)

    with idle_runtime.sessions() as session:
        kept = set(session.scalars(select(ProcessedEvent.event_id)))
    assert kept == {"just-within", "fresh"}
    assert idle_runtime.purge() == (0, 0), "a second purge finds nothing more"


def test_purge_drops_sent_outbox_rows_older_than_their_retention_never_unsent_ones(
    idle_runtime: ServiceRuntime,
):
    now, window = utcnow(), timedelta(hours=OUTBOX_HOURS)
    long_ago = now - timedelta(days=30)
    rows = [
        outbox_row("sent-long-ago", long_ago, sent_at=long_ago),
        outbox_row("sent-just-expired", long_ago, sent_at=now - window - timedelta(minutes=1)),
        # retention counts from publication, not from creation
        outbox_row("created-long-ago-sent-lately", long_ago, sent_at=now - window / 2),
        outbox_row("sent-now", now, sent_at=now),
        outbox_row("unsent-for-a-month", long_ago, sent_at=None),
        outbox_row("unsent", now, sent_at=None),
    ]
    with idle_runtime.sessions.begin() as session:
        session.add_all(rows)

    assert idle_runtime.purge() == (2, 0)

    with idle_runtime.sessions() as session:
        kept = set(session.scalars(select(OutboxMessage.event_id)))
    assert kept == {"created-long-ago-sent-lately", "sent-now", "unsent-for-a-month", "unsent"}
    assert idle_runtime.relay is not None and idle_runtime.relay.pending() == 2


def produce_to(bootstrap: str, topic: str, partition: int, events: list[Envelope]) -> None:
    """Produce `events` to one partition, in order (a redelivery, then what follows it)."""
    producer = Producer(producer_config(bootstrap))
    errors: list[KafkaError] = []

    def report(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    for event in events:
        producer.produce(
            topic,
            key=event.key.encode(),
            value=event.data,
            headers=event.headers(),
            partition=partition,
            on_delivery=report,
        )
    assert producer.flush(30) == 0 and not errors, errors


def test_a_purge_never_lets_a_redelivery_within_the_window_through(
    running_runtime: ServiceRuntime, kafka_bootstrap: str
):
    runtime, consumer = running_runtime, running_runtime.consumer
    assert consumer is not None
    topic = runtime.settings.topic(ProductCreated.topic)
    event = product_created(unique("p"))
    delivery = EventProducer(kafka_bootstrap).publish(topic, event)
    eventually(lambda: consumer.applied == 1, message="the event applied")
    assert delivery.partition is not None
    # the window has nearly passed for it, but not quite
    near_expiry = utcnow() - timedelta(hours=PROCESSED_HOURS) + timedelta(minutes=5)
    with runtime.sessions.begin() as session:
        session.execute(
            update(ProcessedEvent)
            .where(ProcessedEvent.event_id == event.id)
            .values(processed_at=near_expiry)
        )

    assert runtime.purge()[1] == 0, "nothing left the window"

    later = product_created(unique("p"))
    produce_to(kafka_bootstrap, topic, delivery.partition, [event, later])

    def claimed(event_id: str) -> bool:
        with runtime.sessions() as session:
            return session.get(ProcessedEvent, ("inventory", event_id)) is not None

    # the claim commits before the consumer counts it: wait for both
    eventually(
        lambda: claimed(later.id) and consumer.applied >= 2,
        message="the event behind the redelivery applied",
    )
    assert consumer.applied == 2, "the redelivery was not applied again"
    assert consumer.dead_lettered == consumer.skipped == 0 and consumer.alive
    with runtime.sessions() as session:
        query = select(ProcessedEvent.event_id, ProcessedEvent.processed_at)
        rows = dict(session.execute(query).all())
        stock = set(session.scalars(select(Stock.product_id)))
    assert rows == {event.id: near_expiry, later.id: rows[later.id]}, "first claim stands"
    assert stock == {event.key, later.key}
