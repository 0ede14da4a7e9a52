"""How many events a second one service's consumer applies, against what Kafka hands it.

    python -m tools.bench consumer [--events 5000]

On a unique topic prefix and a SQLite database in a temporary directory, the inventory
service's real runtime (ServiceRuntime with services.inventory.main.SPEC, consumer group
unique) consumes:

1. `events` product-created events (idempotency insert + one INSERT, no outbox row);
2. `events` order-created events, one product each, every product well stocked
   (idempotency insert, order row, stock row locked and updated, reservation row, two
   outbox rows; the relay publishes those meanwhile, as in the service).

Each phase is timed from the first event applied to the last. Then, over the same
records: a raw consume loop (consume and count), the same plus decoding (Envelope and
the pydantic payload), and the handlers applied without Kafka on a fresh database,
claimed and dispatched through the router as ConsumerWorker does with a fetched run: one
transaction per event, one per 200 events with a savepoint per event, and one per 200.
Those three apply as many order-created events as the worker applied in `direct_seconds`
(at least 500, at most `events`), so a slow consumer does not make the run long."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from services.inventory.config import InventorySettings
from services.inventory.main import SPEC
from services.inventory.models import Stock
from shared.messaging.connection import Bootstrap, client_config, connection
from shared.messaging.consumer import ConsumerWorker
from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.envelope import Envelope
from shared.messaging.idempotency import Claim, claim_many
from shared.messaging.producer import EventProducer
from shared.messaging.router import Received
from shared.messaging.topics import ensure_topics
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.keys import anchor_text
from shared.runtime.service import ServiceRuntime
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade
from tools.bench.report import PHASE_RAW_DECODE, PHASE_WORKER_ORDERS

SOURCE = "/bench/consumer"


def product_created(product_id: str, n: int) -> Envelope:
    payload = {"product_id": product_id, "name": f"bench #{n}", "price_cents": 100, "version": 1}
    return Envelope("product-created", SOURCE, product_id, orjson.dumps(payload))


def order_created(product_id: str) -> Envelope:
    order_id = str(uuid.uuid4())
    payload = {
        "order_id": order_id,
        "user_id": "bench-user",
        "items": [{"product_id": product_id, "quantity": 1}],
    }
    return Envelope("order-created", SOURCE, order_id, orjson.dumps(payload))


def _wait_applied(
    worker: ConsumerWorker, target: int, timeout: float, say: Callable[[str], None]
) -> tuple[int, float]:
    """Poll `worker.applied` until it reaches target; return (events counted, seconds)
    from the first poll that saw progress to the one that saw the target."""
    start_count = worker.applied
    deadline = time.monotonic() + timeout
    first: tuple[int, float] | None = None
    next_report = time.monotonic() + 1
    while worker.applied < target:
        now = time.monotonic()
        if first is None and worker.applied > start_count:
            first = (worker.applied, now)
        if now > deadline:
            raise TimeoutError(f"consumer applied {worker.applied} of {target} in {timeout:.0f}s")
        if now >= next_report:
            say(f"  applied {worker.applied}/{target}")
            next_report += 1
        time.sleep(0.005)
    done = time.monotonic()
    if first is None:
        first = (start_count, done)
    return target - first[0], done - first[1]


def _phase(name: str, events: int, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds else None,
        "us_per_event": seconds / events * 1e6 if events else None,
    }


def _read_back(
    bootstrap: Bootstrap, topic: str, count: int, decode: Callable[[Any], Any] | None
) -> tuple[float, list[Any]]:
    """Consume `count` records of `topic` from the start; (seconds, decoded values)."""
    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": f"bench-raw-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
            },
        )
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got: list[Any] = []
    seen = 0
    began = time.monotonic()
    deadline = began + 120
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error() is None:
                seen += 1
                if decode is not None:
                    got.append(decode(message))
    seconds = time.monotonic() - began
    consumer.close()
    if seen < count:
        raise TimeoutError(f"read back {seen} of {count} records of {topic}")
    return seconds, got


def _decode(model: Any) -> Callable[[Any], tuple[Envelope, Any]]:
    def decode(message: Any) -> tuple[Envelope, Any]:
        event = Envelope.from_message(message)
        return event, event.payload(model)

    return decode


def _apply_direct(
    database: Path,
    products: Sequence[tuple[Envelope, Any]],
    orders: Sequence[tuple[Envelope, Any]],
    batch: int,
    savepoints: bool,
) -> float:
    """Apply the events with the inventory router on a fresh database, no Kafka; return
    the seconds the order-created events took."""
    engine = make_engine(f"sqlite:///{database}")
    try:
        upgrade(engine, SPEC.migrations)
        uow = UnitOfWork(make_sessions(engine), SPEC.outbox_model, "/services/inventory")
        _apply_batches(uow, products, 500, savepoints=False)
        with engine.begin() as connection:
            connection.execute(update(Stock).values(available=1_000_000))
        began = time.monotonic()
        _apply_batches(uow, orders, batch, savepoints)
        return time.monotonic() - began
    finally:
        engine.dispose()


def _apply_batches(
    uow: UnitOfWork, events: Sequence[tuple[Envelope, Any]], batch: int, savepoints: bool
) -> None:
    """Claim and dispatch `batch` events per transaction, as the consumer does; with
    `savepoints`, each event alone in a savepoint."""
    for start in range(0, len(events), batch):
        run = [Received(event, payload) for event, payload in events[start : start + batch]]
        with uow() as unit:
            for part in [[item] for item in run] if savepoints else [run]:
                nested = unit.session.begin_nested() if savepoints else contextlib.nullcontext()
                with nested:
                    claims = claim_many(
                        unit.session, SPEC.processed_model, "inventory", [i.event for i in part]
                    )
                    fresh = [i for i, c in zip(part, claims, strict=True) if c is Claim.NEW]
                    SPEC.router.dispatch(unit, fresh)


def _signed_in(bootstrap: Bootstrap, folder: Path) -> dict[str, Any]:
    """Settings fields that sign a service in as `bootstrap` does (its password in a
    file of `folder`, as a service reads it)."""
    kafka = connection(bootstrap)
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka.bootstrap,
        "kafka_security_protocol": kafka.security_protocol,
        "kafka_ssl_ca_location": kafka.ca_location,
    }
    if kafka.sasl:
        password = folder / "kafka-password"
        password.write_text(kafka.password or "")
        password.chmod(0o600)
        fields |= {
            "kafka_sasl_mechanism": kafka.sasl_mechanism,
            "kafka_sasl_username": kafka.username,
            "kafka_sasl_password_file": password,
        }
    return fields


def run(
    bootstrap: Bootstrap,
    events: int = 5_000,
    timeout: float = 300,
    say: Callable[[str], None] = print,
    direct_seconds: float = 5.0,
) -> dict[str, Any]:
    """The inventory service's consumer on `events` product-created then order-created
    events of topics of its own, then raw consume loops over the same records, then the
    handler with no Kafka at all; the rate of each phase."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}-"
    topics = [prefix + t for t in {*SPEC.subscribes, *SPEC.owns, DEAD_LETTERS}]
    ensure_topics(bootstrap, topics, partitions=3)
    producer = EventProducer(bootstrap)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-consumer-") as tmp:
            settings = InventorySettings(
                database_url=f"sqlite:///{tmp}/inventory.db",
                topic_prefix=prefix,
                consumer_group=f"bench-inventory-{run_id}",
                # it publishes no key set: any anchor lets the service start
                keyset_public_key=anchor_text(Ed25519PrivateKey.generate()),
                **_signed_in(bootstrap, Path(tmp)),
            )
            product_ids = [str(uuid.uuid4()) for _ in range(events)]
            say(f"producing {events} product-created events to {prefix}products")
            producer.send(
                [(prefix + "products", product_created(p, n)) for n, p in enumerate(product_ids)]
            )
            phases, dead = _worker_phases(settings, producer, product_ids, prefix, timeout, say)
            say("raw consume loops over the same records")
            raw, products, orders = _raw_phases(bootstrap, prefix, events)
            phases += raw
            worker_rate = phases[1]["events_per_s"] or 0.0
            direct = max(min(500, events), min(events, round(worker_rate * direct_seconds)))
            phases += _direct_phases(Path(tmp), products, orders[:direct], say)
    finally:
        producer.close()
        admin = AdminClient(client_config(bootstrap))
        with contextlib.suppress(Exception):
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result(30)
    return {"events": events, "dead_lettered": dead, "phases": phases}


def _worker_phases(
    settings: InventorySettings,
    producer: EventProducer,
    product_ids: list[str],
    prefix: str,
    timeout: float,
    say: Callable[[str], None],
) -> tuple[list[dict[str, Any]], int]:
    """The service's ConsumerWorker on the product-created events, then on as many
    order-created events (each reserves stock and writes two outbox rows); the phases and
    how many events it dead-lettered."""
    events = len(product_ids)
    runtime = ServiceRuntime(SPEC, settings)
    runtime.start()
    try:
        worker = runtime.consumer
        assert worker is not None
        say("ConsumerWorker: product-created")
        phases = [_phase("worker: product-created", *_wait_applied(worker, events, timeout, say))]
        with runtime.engine.begin() as connection:
            connection.execute(update(Stock).values(available=1_000_000))
        say(f"producing {events} order-created events to {prefix}orders")
        producer.send([(prefix + "orders", order_created(p)) for p in product_ids])
        say("ConsumerWorker: order-created (reserve stock, two outbox rows)")
        applied = _wait_applied(worker, 2 * events, timeout, say)
        phases.append(_phase(PHASE_WORKER_ORDERS, *applied))
        return phases, worker.dead_lettered
    finally:
        runtime.stop()


def _raw_phases(
    bootstrap: Bootstrap, prefix: str, events: int
) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """Consume loops over the same records, counting only and then decoding; the phases
    and the decoded product-created and order-created events."""
    products_s, _ = _read_back(bootstrap, prefix + "products", events, None)
    orders_s, _ = _read_back(bootstrap, prefix + "orders", events, None)
    phases = [_phase("raw consume (count only)", 2 * events, products_s + orders_s)]
    model_products = SPEC.router.routes["product-created"].model
    model_orders = SPEC.router.routes["order-created"].model
    products_s, products = _read_back(
        bootstrap, prefix + "products", events, _decode(model_products)
    )
    orders_s, orders = _read_back(bootstrap, prefix + "orders", events, _decode(model_orders))
    phases.append(_phase(PHASE_RAW_DECODE, 2 * events, products_s + orders_s))
    return phases, products, orders


def _direct_phases(
    folder: Path, products: list[Any], orders: list[Any], say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The order-created handler with no Kafka, one transaction per event and per 200
    (with and without savepoints)."""
    phases = []
    for name, batch, savepoints in (
        ("no kafka: order-created, 1 txn/event", 1, False),
        ("no kafka: order-created, 1 txn/200, savepoints", 200, True),
        ("no kafka: order-created, 1 txn/200", 200, False),
    ):
        say(f"{name} ({len(orders)} events)")
        database = folder / f"direct-{batch}-{savepoints}.db"
        seconds = _apply_direct(database, products, orders, batch, savepoints)
        phases.append(_phase(name, len(orders), seconds))
    return phases
