"""Kafka fuzz against a real service: the inventory service's runtime (its router, schema,
migrations and consumer) is fed over a thousand malformed records interleaved with valid
`product-created` events and redeliveries, over 3 partitions of its topics.

The consumer must never die; every malformed record is dead-lettered exactly once, for
the reason its kind predicts, except a well-formed event of a type inventory does not
handle: both topics it reads belong to other services, so that one is skipped and
counted instead; every valid event is applied exactly once. The generator is seeded: the
seed is printed, and `FUZZ_SEED=<seed>` replays a run."""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import generate_latest
from sqlalchemy import func, select

from services.inventory.config import InventorySettings
from services.inventory.events import OrderCancelled, OrderCreated
from services.inventory.main import SPEC
from services.inventory.models import ProcessedEvent, Stock
from services.product.events import ProductCreated
from shared.messaging.deadletter import (
    DEAD_LETTERS,
    H_DROPPED,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    Reason,
)
from shared.messaging.envelope import (
    H_CONTENT_TYPE,
    H_ID,
    H_SOURCE,
    H_SPECVERSION,
    H_TIME,
    H_TYPE,
    REQUIRED_HEADERS,
    Envelope,
    KafkaHeaders,
)
from shared.messaging.producer import producer_config
from shared.runtime.service import ServiceRuntime
from tests.helpers import eventually, metric_total, new_anchor, read_topic, unique

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

VALID = 300
MALFORMED = 1200
REDELIVERED = 60
PARTITIONS = 3
NEAR_LIMIT = 999_800
"""Key, value and header bytes of a record that fits the producer's limit only just."""

Position = tuple[str, int, int]


@dataclass
class Record:
    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: KafkaHeaders
    reason: str | None
    """The dead-letter reason this record must get; None: it must not be dead-lettered."""
    event: Envelope | None = None
    """The valid event, for `valid` and `redelivered` records."""
    skipped: bool = False
    """Another service's event that inventory does not handle: passed over and counted."""


class Fuzz:
    """Seeded records: valid events, their redeliveries and many kinds of malformed ones."""

    def __init__(self, rng: random.Random, prefix: str) -> None:
        self.rng = rng
        self.products = prefix + ProductCreated.topic
        self.orders = prefix + OrderCreated.topic
        self.emitted: list[Envelope] = []  # the valid events so far
        # each `_m_<kind>` method makes one kind of malformed record
        self.kinds: dict[str, Callable[[], Record]] = {
            name.removeprefix("_m_").replace("_", "-"): getattr(self, name)
            for name in sorted(dir(self))
            if name.startswith("_m_")
        }

    # helpers

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def text(self, n: int = 8) -> str:
        return "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=n))

    def junk(self, n: int) -> bytes:
        """Bytes that are neither UTF-8 nor JSON (0xff never starts either)."""
        return b"\xff" + self.rng.randbytes(n)

    def product_event(self, product_id: str | None = None, **changes: object) -> Envelope:
        """A `product-created` as the product service publishes it (inventory reads only
        the product id and version of it)."""
        product_id = product_id or f"p-{self.text(12)}"
        payload = ProductCreated(
            product_id=product_id,
            name=f"product {self.text(6)}",
            price_cents=1 + self.rng.randrange(10**6),
        ).model_dump(mode="json")
        payload.update(changes)
        return Envelope(
            type=ProductCreated.event_type,
            source="/services/product",
            key=product_id,
            data=orjson.dumps(payload),
            id=self.new_id(),
            time=datetime(2026, 1, 1, tzinfo=UTC),
        )

    def envelope_record(self, kind: str, event: Envelope, reason: str | None) -> Record:
        topic = self.products if event.type == ProductCreated.event_type else self.orders
        return Record(kind, topic, event.key.encode(), event.data, event.headers(), reason)

    def mutated(self, kind: str, reason: str, **header_values: bytes | None) -> Record:
        """A valid product event whose named headers are replaced (None: removed)."""
        record = self.envelope_record(kind, self.product_event(), reason)
        headers = [(n, header_values.get(n, v)) for n, v in record.headers]
        record.headers = [(n, v) for n, v in headers if n not in header_values or v is not None]
        return record

    # the records

    def valid(self) -> Record:
        event = self.product_event()
        self.emitted.append(event)
        record = self.envelope_record("valid", event, None)
        record.event = event
        return record

    def redelivered(self) -> Record:
        event = self.rng.choice(self.emitted)
        record = self.envelope_record("redelivered", event, None)
        record.event = event
        return record

    def malformed(self) -> Record:
        kind = self.rng.choice(list(self.kinds))
        if kind == "conflicting-duplicate" and not self.emitted:
            kind = "random-bytes"
        return self.kinds[kind]()

    def _m_random_bytes(self) -> Record:
        event_headers = self.product_event().headers()
        headers = self.rng.choice([[], event_headers, [(self.text(), self.rng.randbytes(20))]])
        topic = self.rng.choice([self.products, self.orders])
        # the broker itself refuses a record without a key on a compacted (state) topic
        keyless = [None] if topic == self.orders else []
        key = self.rng.choice([*keyless, self.rng.randbytes(16), self.text().encode()])
        junk = self.junk(self.rng.randrange(4096))
        # a well-formed product-created envelope off its own topic is refused for the topic,
        # before its value is read
        readable_key = key is None or not _undecodable(key)
        misplaced = headers is event_headers and topic != self.products and readable_key
        reason = Reason.WRONG_TOPIC if misplaced else Reason.INVALID_ENVELOPE
        return Record("random-bytes", topic, key, junk, headers, reason)

    def _m_no_headers(self) -> Record:
        record = self.envelope_record("no-headers", self.product_event(), Reason.INVALID_ENVELOPE)
        record.headers = []
        return record

    def _m_missing_header(self) -> Record:
        name = self.rng.choice(REQUIRED_HEADERS)
        return self.mutated("missing-header", Reason.INVALID_ENVELOPE, **{name: None})

    def _m_empty_header(self) -> Record:
        name = self.rng.choice(REQUIRED_HEADERS)
        record = self.mutated("empty-header", Reason.INVALID_ENVELOPE, **{name: b""})
        if self.rng.random() < 0.5:  # a header with a null value
            record.headers = [(n, None if n == name else v) for n, v in record.headers]
        return record

    def _m_wrong_specversion(self) -> Record:
        version = self.rng.choice([b"0.3", b"1.1", b"2.0", b"1", b"1.0.0", b" 1.0", b"v1.0"])
        return self.mutated("wrong-specversion", Reason.INVALID_ENVELOPE, ce_specversion=version)

    def _m_repeated_header(self) -> Record:
        """The last of a repeated header wins, and it is wrong."""
        record = self.envelope_record("repeated-header", self.product_event(), None)
        record.headers.append((H_SPECVERSION, b"0.3"))
        record.reason = Reason.INVALID_ENVELOPE
        return record

    def _m_wrong_content_type(self) -> Record:
        content_type = self.rng.choice([b"text/plain", b"application/xml", b"application/avro"])
        return self.mutated(
            "wrong-content-type", Reason.INVALID_ENVELOPE, **{H_CONTENT_TYPE: content_type}
        )

    def _m_bad_time(self) -> Record:
        time = self.rng.choice(
            [b"yesterday", b"2026-13-01T00:00:00Z", b"2026-01-01T00:00:00", b"", b"1767225600"]
        )
        return self.mutated("bad-time", Reason.INVALID_ENVELOPE, **{H_TIME: time})

    def _m_non_utf8_header(self) -> Record:
        name = self.rng.choice([H_SPECVERSION, H_ID, H_TYPE, H_SOURCE, H_TIME])
        value = self.rng.choice([b"\xff\xfe", b"product-\xc3\x28", b"\xed\xa0\x80"])
        return self.mutated("non-utf8-header", Reason.INVALID_ENVELOPE, **{name: value})

    def _m_non_utf8_key(self) -> Record:
        record = self.envelope_record("non-utf8-key", self.product_event(), None)
        record.key = self.junk(self.rng.randrange(1, 40))
        record.reason = Reason.INVALID_ENVELOPE
        return record

    def _m_null_value(self) -> Record:
        record = self.envelope_record("null-value", self.product_event(), None)
        record.value = None
        record.reason = Reason.INVALID_ENVELOPE
        return record

    def _m_not_json(self) -> Record:
        value = self.rng.choice(
            [
                b"",
                b"{",
                b'{"product_id": "p-1", "name": ',
                b"NaN",
                b"'single quoted'",
                b'{"product_id": "p-1"} trailing',
                b'{"name": "\xff"}',
                b"[" * 2000 + b"]" * 2000,  # deeper than any parser allows
                b'{"price_cents": 1e999}',
            ]
        )
        record = self.envelope_record("not-json", self.product_event(), Reason.INVALID_ENVELOPE)
        record.value = value
        return record

    def _m_unknown_type(self) -> Record:
        """A well-formed event of a type inventory has no handler for, on one of the
        topics it reads: both belong to another service, so it is skipped, not parked."""
        event_type = self.rng.choice(
            [
                f"thing-{self.text(6)}",
                "Product-Created",
                "product_created",
                "product-created ",
                "order-confirmed",  # order's own events that inventory does not read
                "order-rejected",
            ]
        )
        assert event_type not in SPEC.router.routes
        record = self.mutated("unknown-type", Reason.UNKNOWN_TYPE, ce_type=event_type.encode())
        record.topic = self.rng.choice([self.products, self.orders])
        record.reason, record.skipped = None, True
        return record

    def _m_wrong_json_types(self) -> Record:
        """Payloads that break a field inventory reads (it ignores the fields it does not
        read, such as a product's name and price or an order's user)."""
        product = {"product_id": f"p-{self.text()}", "name": "n", "price_cents": 1}
        order = {"order_id": f"o-{self.text()}", "user_id": "u"}
        created, cancelled = OrderCreated.event_type, OrderCancelled.event_type
        event_type, payload = self.rng.choice(
            [
                (ProductCreated.event_type, []),
                (ProductCreated.event_type, "product"),
                (ProductCreated.event_type, 42),
                (ProductCreated.event_type, None),
                (ProductCreated.event_type, {}),
                (ProductCreated.event_type, {"name": "n", "price_cents": 1}),
                (ProductCreated.event_type, {**product, "product_id": 5}),
                (ProductCreated.event_type, {**product, "product_id": ""}),
                (ProductCreated.event_type, {**product, "product_id": "p" * 65}),
                (ProductCreated.event_type, {**product, "product_id": {"id": "p"}}),
                (ProductCreated.event_type, {**product, "version": "v2"}),
                (ProductCreated.event_type, {**product, "version": 1.5}),
                (ProductCreated.event_type, {**product, "version": [1]}),
                (ProductCreated.event_type, {**product, "version": None}),
                (created, {**order, "items": "all of them"}),
                (created, {**order, "items": [{"product_id": "p", "quantity": 0}]}),
                (created, {**order, "items": [{"product_id": "p"}]}),
                (created, {"order_id": "o", "user_id": "u"}),
                (created, {"items": []}),
                (cancelled, {"order_id": ""}),
                (cancelled, [order]),
            ]
        )
        key = f"k-{self.text()}"
        event = Envelope(
            type=event_type, source="/fuzz", key=key, data=orjson.dumps(payload), id=self.new_id()
        )
        return self.envelope_record("wrong-json-types", event, Reason.INVALID_PAYLOAD)

    def _m_oversized(self) -> Record:
        size = self.rng.randrange(100_000, 900_000)
        variant = self.rng.randrange(5)
        record = self.envelope_record("oversized", self.product_event(), Reason.INVALID_PAYLOAD)
        if variant == 0:  # random bytes
            record.value, record.reason = self.junk(size), Reason.INVALID_ENVELOPE
        elif variant == 4:  # within the producer's 1,000,000 bytes, not with dlq_* headers added
            size = NEAR_LIMIT - len(record.key or b"")
            size -= sum(len(n) + len(v or b"") for n, v in record.headers)
            record.kind, record.value = "near-limit", self.junk(size)
            record.reason = Reason.INVALID_ENVELOPE
        elif variant == 1:  # JSON cut short
            record.value, record.reason = b'{"name": "' + b"n" * size, Reason.INVALID_ENVELOPE
        elif variant == 2:  # a huge name, but a version that is no number
            payload = {"product_id": "p-big", "name": "n" * size, "version": "many"}
            record.value = orjson.dumps(payload)
        else:  # a huge list where an object belongs
            record.value = orjson.dumps(list(range(size // 8)))
        return record

    def _m_oversized_header(self) -> Record:
        record = self.mutated("oversized-header", Reason.INVALID_ENVELOPE, ce_id=None)
        record.headers.append(("x-junk", self.rng.randbytes(self.rng.randrange(10_000, 300_000))))
        return record

    def _m_conflicting_duplicate(self) -> Record:
        """The id of an event applied earlier (on the same key, so the same partition, so
        later), with another payload."""
        first = self.rng.choice(self.emitted)
        other = self.product_event(first.key, name=f"renamed {self.text(4)}")
        record = self.envelope_record("conflicting-duplicate", first, Reason.CONFLICT)
        record.value = other.data
        return record


def interleave(fuzz: Fuzz) -> list[Record]:
    left = {"valid": VALID, "malformed": MALFORMED, "redelivered": REDELIVERED}
    records: list[Record] = []
    while any(left.values()):
        (choice,) = fuzz.rng.choices(list(left), weights=list(left.values()))
        if choice == "redelivered" and not fuzz.emitted:
            continue
        left[choice] -= 1
        records.append(getattr(fuzz, choice)())
    return records


def produce_all(bootstrap: str, records: list[Record]) -> list[Position]:
    """Produce every record as-is, in order; return the position of each."""
    producer = Producer(producer_config(bootstrap))
    positions: list[Position | None] = [None] * len(records)
    errors: list[KafkaError] = []

    def reporter(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(error)
            else:
                positions[index] = (message.topic(), message.partition(), message.offset())

        return report

    for index, record in enumerate(records):
        while True:
            try:
                producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=reporter(index),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "every record delivered"
    assert not errors, errors[:3]
    assert all(positions)
    return [p for p in positions if p is not None]


def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("probe")})
    try:
        return {
            TopicPartition(topic, p): probe.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10, cached=False
            )[1]
            for topic in topics
            for p in range(PARTITIONS)
        }
    finally:
        probe.close()


def committed(bootstrap: str, group: str, partitions: list[TopicPartition]) -> list[int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in probe.committed(partitions, timeout=10)]
    finally:
        probe.close()


def header_map(message: Message) -> dict[str, str]:
    return {
        name: value.decode(errors="replace") if isinstance(value, bytes) else ""
        for name, value in message.headers() or []
    }


def misfiled(letters: list[Message], malformed: dict[Position, Record]) -> list[str]:
    """What is wrong with each dead letter: its reason, or what it kept of the original."""
    wrong: list[str] = []
    for letter in letters:
        headers = header_map(letter)
        record = malformed[(headers[H_TOPIC], int(headers[H_PARTITION]), int(headers[H_OFFSET]))]
        original = [(n, v) for n, v in letter.headers() or [] if not n.startswith("dlq_")]
        if headers[H_REASON] != record.reason:
            wrong.append(f"{record.kind}: {headers[H_REASON]} instead of {record.reason}")
        elif (H_DROPPED in headers) != (record.kind == "near-limit"):
            wrong.append(
                f"{record.kind}: parked {'without' if H_DROPPED in headers else 'with'} its value"
            )
        elif H_DROPPED not in headers and (
            (letter.key(), letter.value(), original) != (record.key, record.value, record.headers)
        ):
            wrong.append(f"{record.kind}: the original record was not kept")
    return wrong


@pytest.fixture
def runtime(kafka_bootstrap: str, database_url: str) -> Iterator[ServiceRuntime]:
    settings = InventorySettings(
        database_url=database_url,
        topic_prefix=unique("fuzz") + "-",
        consumer_group=unique("fuzz-inventory"),
        kafka_bootstrap_servers=kafka_bootstrap,
        keyset_public_key=new_anchor(),
    )
    runtime = ServiceRuntime(SPEC, settings)
    runtime.start()  # migrations, topics, relay, consumer
    try:
        yield runtime
    finally:
        runtime.stop()


def test_a_service_consumer_survives_malformed_records_and_applies_valid_ones_once(
    kafka_bootstrap: str, runtime: ServiceRuntime
):
    seed = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kafka fuzz seed: {seed} (replay with FUZZ_SEED={seed})")
    settings = runtime.settings
    fuzz = Fuzz(random.Random(seed), settings.topic_prefix)
    records = interleave(fuzz)
    positions = produce_all(kafka_bootstrap, records)
    consumer = runtime.consumer
    assert consumer is not None

    tried = {
        p: r
        for p, r in zip(positions, records, strict=True)
        if r.kind not in ("valid", "redelivered")
    }
    malformed = {p: r for p, r in tried.items() if r.reason}
    """The records that must be dead-lettered."""
    skipped = [r for r in tried.values() if r.skipped]
    valid = [r.event for r in records if r.kind == "valid" and r.event]
    assert len(tried) == MALFORMED and len(valid) == VALID
    assert skipped and len(malformed) + len(skipped) == MALFORMED
    assert {r.topic for r in skipped} == {fuzz.products, fuzz.orders}
    for kind in ("valid", "malformed"):
        spread = {
            p[1]
            for p, r in zip(positions, records, strict=True)
            if (p not in tried) == (kind == "valid")
        }
        assert spread == set(range(PARTITIONS)), f"{kind} records on partitions {spread}"

    def processed() -> int:
        with runtime.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ProcessedEvent)) or 0)

    def caught_up() -> bool:
        if not consumer.alive:
            raise RuntimeError(f"seed {seed}: the consumer died: {consumer.last_error}")
        assert consumer.dead_lettered >= len(malformed), f"{consumer.dead_lettered} parked"
        assert consumer.skipped >= len(skipped), f"{consumer.skipped} skipped"
        assert processed() >= VALID, f"{processed()} applied"
        return True

    eventually(caught_up, timeout=80, interval=0.25, message=f"seed {seed}: all consumed")
    ends = end_offsets(kafka_bootstrap, [fuzz.products, fuzz.orders])

    def all_committed() -> bool:
        offsets = committed(kafka_bootstrap, settings.consumer_group or "", list(ends))
        lagging = [
            (tp.topic, tp.partition, offset, end)
            for (tp, end), offset in zip(ends.items(), offsets, strict=True)
            if end > 0 and offset < end
        ]
        assert not lagging, lagging
        return True

    eventually(all_committed, timeout=20, message="every offset committed")
    assert consumer.alive
    assert (consumer.dead_lettered, consumer.skipped, consumer.applied) == (
        len(malformed),
        len(skipped),
        VALID,
    )
    exposition = generate_latest(runtime.metrics).decode()
    service = {"service": SPEC.name}
    assert metric_total(exposition, "events_skipped_total", **service) == len(skipped)
    assert metric_total(exposition, "events_dead_lettered_total", **service) == len(malformed)
    dead_letters = settings.topic(DEAD_LETTERS)
    assert sum(end_offsets(kafka_bootstrap, [dead_letters]).values()) == len(malformed)

    letters = read_topic(
        kafka_bootstrap,
        dead_letters,
        until=lambda got: len(got) >= len(malformed),
        timeout=30,
    )
    parked = Counter(
        (h[H_TOPIC], int(h[H_PARTITION]), int(h[H_OFFSET])) for h in map(header_map, letters)
    )
    assert [p for p, n in parked.items() if n > 1] == [], "dead-lettered more than once"
    assert set(parked) == set(malformed), "exactly the malformed records are dead-lettered"
    wrong = misfiled(letters, malformed)
    assert not wrong, f"seed {seed}: {Counter(wrong).most_common(5)}"

    with runtime.sessions() as session:
        applied = list(session.scalars(select(ProcessedEvent.event_id)))
        stock = set(session.scalars(select(Stock.product_id)))
    assert sorted(applied) == sorted(e.id for e in valid), "each valid event applied once"
    assert stock == {e.key for e in valid}, "one stock row per product, none from bad records"
    kinds = Counter(r.kind for r in tried.values())
    print(
        f"seed {seed}: {len(tried)} malformed records tried, {sum(parked.values())} "
        f"dead-lettered, {len(skipped)} skipped; {VALID} valid and {REDELIVERED} redelivered "
        "applied once: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    )


def _undecodable(key: bytes) -> bool:
    try:
        key.decode()
    except UnicodeDecodeError:
        return True
    return False
