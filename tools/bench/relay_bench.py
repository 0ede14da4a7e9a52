"""How fast the outbox relay drains a full outbox, against a raw producer loop.

    python -m tools.bench relay [--rows 100000] [--database-url postgresql+psycopg://...]

A service-shaped outbox table (shared.storage.db.OutboxMixin) in a SQLite file under a temporary
directory, or in a fresh database on the PostgreSQL server of --database-url (dropped
afterwards), gets `rows` unsent rows in one bulk insert, written as shared.messaging.outbox writes
them (CloudEvents text headers, a JSON payload of about 150 bytes). Then, in one run, on
topics of a unique prefix:

1. raw: a confluent-kafka producer with the services' producer_config produces the same
   records (keys, values, headers already encoded) and flushes;
2. relay: OutboxRelay(...).relay_once() in a loop until it publishes nothing and nothing
   is pending.

Afterwards the relay's topic must hold exactly `rows` records and every row be marked sent."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, func, insert, make_url, select, text
from sqlalchemy.orm import DeclarativeBase

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.envelope import Envelope
from shared.messaging.outbox import OutboxRelay, outbox_row
from shared.messaging.producer import EventProducer, producer_config
from shared.messaging.topics import ensure_topics
from shared.runtime.service import quiet_garbage_collector
from shared.storage.db import OutboxMixin, make_engine, make_sessions

SOURCE = "/bench/relay"


class Base(DeclarativeBase):
    pass


class BenchOutbox(OutboxMixin, Base):
    __tablename__ = "bench_outbox"


def envelope(n: int) -> Envelope:
    """An order-created-shaped event with a payload of about 150 bytes."""
    order_id = str(uuid.uuid4())
    payload = {
        "order_id": order_id,
        "user_id": "5c1e0a52-6f1f-4c55-9d7b-2b0f3c6f9a10",
        "items": [{"product_id": f"{n:032x}", "quantity": 1}],
    }
    return Envelope(
        "order-created",
        SOURCE,
        order_id,
        orjson.dumps(payload),
        correlation_id=order_id,
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    )


@contextlib.contextmanager
def database(url: str | None) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, backend name) of a fresh database, removed afterwards: a SQLite
    file in a temporary directory, or a new database on the server of `url`."""
    if url is None or make_url(url).get_backend_name() == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
            yield f"sqlite:///{tmp}/outbox.db", "sqlite"
        return
    server = make_url(url)
    name = f"bench_relay_{uuid.uuid4().hex[:10]}"
    admin = make_engine(server.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False), "postgresql"
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def fill(engine: Engine, rows: list[dict[str, Any]], chunk: int = 10_000) -> None:
    Base.metadata.create_all(engine)
    table = BenchOutbox.__table__
    with engine.begin() as connection:
        for start in range(0, len(rows), chunk):
            connection.execute(insert(table), rows[start : start + chunk])


def produce_raw(
    bootstrap: Bootstrap, topic: str, events: list[Envelope], timeout: float = 120
) -> float:
    """Produce the events' records with the services' producer settings; seconds taken."""
    records = [(event.key.encode(), event.data, event.headers()) for event in events]
    producer = Producer(producer_config(bootstrap, log_level=5))
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    began = time.monotonic()
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(timeout)
    seconds = time.monotonic() - began
    if left or errors:
        raise RuntimeError(f"raw producer: {left} undelivered, {len(errors)} errors")
    return seconds


def drain(relay: OutboxRelay, timeout: float) -> tuple[float, int]:
    """relay_once() until it publishes nothing and nothing is pending: (seconds, calls)."""
    began = time.monotonic()
    calls = 0
    while True:
        calls += 1
        if relay.relay_once() == 0 and relay.pending() == 0:
            return time.monotonic() - began, calls
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"relay: {relay.pending()} rows still pending after {timeout}s")


def topic_records(bootstrap: Bootstrap, topic: str) -> int:
    consumer = Consumer(client_config(bootstrap, **{"group.id": "bench-watermarks"}))
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def run(
    bootstrap: Bootstrap,
    rows: int = 100_000,
    database_url: str | None = None,
    batch_size: int | None = None,
    timeout: float = 600,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`rows` unsent outbox rows published by the services' OutboxRelay, beside the same
    events from a raw producer; the rates, and whether every row went out once."""
    prefix = f"bench-relay-{uuid.uuid4().hex[:8]}-"
    relay_topic, raw_topic = prefix + "orders", prefix + "raw"
    ensure_topics(bootstrap, [relay_topic, raw_topic], partitions=3)
    try:
        events = [envelope(n) for n in range(rows)]
        with database(database_url) as (url, backend):
            engine = make_engine(url)
            try:
                began = time.monotonic()
                fill(engine, [outbox_row(relay_topic, event) for event in events])
                fill_s = time.monotonic() - began
                say(f"relay: {rows} unsent rows in a {backend} outbox ({fill_s:.1f}s to insert)")
                raw_s = produce_raw(bootstrap, raw_topic, events)
                say(f"  raw producer: {rows / raw_s:,.0f} events/s")
                relay_s, calls = relay_all(engine, bootstrap, batch_size, timeout)
                say(f"  OutboxRelay: {rows / relay_s:,.0f} events/s ({calls} relay_once calls)")
                unsent, total = outbox_counts(engine)
            finally:
                engine.dispose()
        published = topic_records(bootstrap, relay_topic)
    finally:
        admin = AdminClient(client_config(bootstrap))
        with contextlib.suppress(Exception):
            for future in admin.delete_topics(
                [relay_topic, raw_topic], operation_timeout=30
            ).values():
                future.result(30)
    problems = []
    if published != rows:
        problems.append(f"relay topic holds {published} records, not {rows}")
    if unsent or total != rows:
        problems.append(f"{unsent} of {total} rows unsent")
    return {
        "rows": rows,
        "backend": backend,
        "payload_bytes": sum(len(e.data) for e in events) / rows if rows else 0,
        "fill_s": fill_s,
        "relay_s": relay_s,
        "relay_per_s": rows / relay_s,
        "batches": calls,
        "batch_size": batch_size,
        "raw_s": raw_s,
        "raw_per_s": rows / raw_s,
        "ratio": raw_s / relay_s,
        "relay_topic_records": published,
        "unsent_after": unsent,
        "verified": not problems,
        "problem": "; ".join(problems) or None,
    }


def relay_all(
    engine: Engine, bootstrap: Bootstrap, batch_size: int | None, timeout: float
) -> tuple[float, int]:
    """The services' OutboxRelay over the outbox until it is empty: (seconds, calls)."""
    producer = EventProducer(bootstrap)
    options = {} if batch_size is None else {"batch_size": batch_size}
    relay = OutboxRelay(make_sessions(engine), BenchOutbox, producer, **options)
    quiet_garbage_collector()  # as a service does once it has started
    try:
        return drain(relay, timeout)
    finally:
        relay.stop()
        producer.close()


def outbox_counts(engine: Engine) -> tuple[int, int]:
    """(unsent rows, all rows) of the outbox."""
    table = BenchOutbox.__table__
    with engine.connect() as connection:
        unsent = connection.scalar(
            select(func.count()).select_from(table).where(table.c.sent_at.is_(None))
        )
        total = connection.scalar(select(func.count()).select_from(table))
    return int(unsent or 0), int(total or 0)
