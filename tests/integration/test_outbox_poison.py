"""A poison row never jams the outbox relay: a real broker, SQLite and PostgreSQL.

One outbox holds good rows and one row the relay cannot finish:

- `unrecorded`: an `order-created` whose causation id (an over-long request id, say) the
  order service's own hook (`file_published`) cannot file in `order_events`, whose
  `causation_id` is a varchar(64). PostgreSQL refuses the value; SQLite does not enforce
  lengths, so there a trigger refuses it as PostgreSQL does.
- `unpublishable`: a record larger than the producer's `message.max.bytes`.

The good rows are published and marked sent within seconds, each exactly once on the
topic; the bad row is parked alone with its reason, counted, and announced on the
dead-letter topic; rows committed after it flow on; the relay stays healthy. Once the
cause is fixed, `tools.ops.outbox retry` finishes the parked row without publishing anything
twice."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.order.chain import file_published
from services.order.models import Base, OrderEvent, OutboxMessage
from shared.messaging.deadletter import (
    DEAD_LETTERS,
    H_CONSUMER,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SOURCE,
    H_TOPIC,
    OUTBOX_SOURCE,
    Reason,
)
from shared.messaging.envelope import H_ID, H_TYPE, Envelope, KafkaHeaders, dump_json
from shared.messaging.outbox import OutboxRelay, add_rows, outbox_row
from shared.messaging.producer import EventProducer, Placed
from shared.messaging.topics import ensure_topics
from shared.runtime.metrics import OutboxCollector, ServiceMetrics
from shared.storage.db import is_postgres, make_engine, make_sessions
from tests.helpers import eventually, metric_total, sqlite_varchar_check, unique
from tests.integration.test_poison_messages import header_map, read_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "order"
LONG_REQUEST_ID = "r" * 200


class CountingProducer(EventProducer):
    """The real producer, counting how often the relay hands it each event id (notices
    of parked rows, on the dead-letter topic, aside)."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.attempts: Counter[str] = Counter()

    def send_records(
        self, records: Sequence[tuple[str, str, bytes | None, KafkaHeaders]], timeout: float = 60
    ) -> list[Placed]:
        for topic, _key, _value, headers in records:
            if not topic.endswith(DEAD_LETTERS):
                self.attempts[ce(headers, H_ID)] += 1
        return super().send_records(records, timeout)


def ce(headers: Any, name: str) -> str:
    for header, value in headers or []:
        if header == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


@dataclass
class Rig:
    bootstrap: str
    prefix: str
    topic: str
    dead_letters: str
    database_url: str
    engine: Engine
    sessions: sessionmaker[Session]
    producer: CountingProducer
    metrics: ServiceMetrics
    relay: OutboxRelay

    def emit(self, *events: Envelope) -> None:
        """Commit rows for `events` in one transaction (which wakes the relay)."""
        with self.sessions.begin() as session:
            add_rows(session, OutboxMessage, [outbox_row(self.topic, e) for e in events])

    def row(self, event: Envelope) -> OutboxMessage:
        with self.sessions() as session:
            found = session.scalar(select(OutboxMessage).where(OutboxMessage.event_id == event.id))
            assert found is not None
            return found

    def sent(self, events: Sequence[Envelope]) -> bool:
        ids = [e.id for e in events]
        with self.sessions() as session:
            rows = session.scalars(select(OutboxMessage).where(OutboxMessage.event_id.in_(ids)))
            return sorted(r.event_id for r in rows if r.sent_at is not None) == sorted(ids)

    def filed(self) -> set[str]:
        with self.sessions() as session:
            return set(session.scalars(select(OrderEvent.event_id)))

    def on_topic(self) -> Counter[str]:
        """How many records of each event id the topic holds now."""
        return Counter(ce(m.headers(), H_ID) for m in read_all(self.bootstrap, self.topic))

    def metric(self, name: str, **labels: str) -> float:
        exposition = generate_latest(self.metrics.registry).decode()
        return metric_total(exposition, name, service=SERVICE, **labels)

    def outbox_command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tools.ops.outbox", SERVICE, *args]
            + ["--database-url", self.database_url],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )


def order_created(causation_id: str = "req-1", pad: int = 0) -> Envelope:
    order_id = unique("order")
    data: dict[str, Any] = {"order_id": order_id, "user_id": "u-1", "items": []}
    if pad:
        data["pad"] = "x" * pad
    return Envelope(
        type="order-created",
        source="/services/order",
        key=order_id,
        data=dump_json(data),
        correlation_id=order_id,
        causation_id=causation_id,
    )


@pytest.fixture
def rig(kafka_bootstrap: str, database_url: str) -> Iterator[Rig]:
    prefix = unique("outbox-poison") + "-"
    topic, dead_letters = prefix + "orders", prefix + DEAD_LETTERS
    ensure_topics(kafka_bootstrap, [topic, dead_letters], partitions=3)
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    if not is_postgres(engine):  # refuse what PostgreSQL's varchar(64) refuses
        with engine.begin() as connection:
            connection.execute(text(sqlite_varchar_check("order_events", "causation_id", 64)))
    sessions = make_sessions(engine)
    producer = CountingProducer(kafka_bootstrap)
    metrics = ServiceMetrics(SERVICE)
    relay = OutboxRelay(
        sessions,
        OutboxMessage,
        producer,
        on_published=file_published,
        observer=metrics,
        dead_letter_topic=dead_letters,
        name=f"{SERVICE}-outbox",
    )
    metrics.watch(OutboxCollector(SERVICE, lambda: relay))
    relay.start()
    try:
        yield Rig(
            kafka_bootstrap,
            prefix,
            topic,
            dead_letters,
            database_url,
            engine,
            sessions,
            producer,
            metrics,
            relay,
        )
    finally:
        relay.stop()
        producer.close()
        engine.dispose()


def fix_the_column(rig: Rig) -> None:
    """What an operator's fix would do: let `order_events` hold the long causation id."""
    with rig.engine.begin() as connection:
        if is_postgres(rig.engine):
            connection.execute(
                text("ALTER TABLE order_events ALTER COLUMN causation_id TYPE varchar(255)")
            )
        else:
            connection.execute(text("DROP TRIGGER order_events_causation_id_fits"))


POISON = {
    Reason.UNRECORDED: lambda: order_created(causation_id=LONG_REQUEST_ID),
    Reason.UNPUBLISHABLE: lambda: order_created(pad=1_100_000),
}


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_row_is_parked_alone_and_every_other_row_flows_once(rig: Rig, kind: str):
    before = [order_created() for _ in range(5)]
    poison = POISON[kind]()
    after = [order_created() for _ in range(5)]
    rig.emit(*before, poison, *after)  # one transaction: one batch

    eventually(lambda: rig.sent(before + after), timeout=15, message="the good rows sent")
    parked = eventually(lambda: rig.row(poison).parked_at and rig.row(poison), timeout=15)
    reason = parked.parked_reason or ""
    if kind == Reason.UNRECORDED:
        assert reason.startswith(f"published at {rig.topic}[{parked.partition}]@{parked.offset}")
        assert "not recorded" in reason and "64" in reason, reason
        assert parked.sent_at is not None, "it is on Kafka: never to be published again"
    else:
        assert "MSG_SIZE_TOO_LARGE" in reason, reason
        assert (parked.sent_at, parked.partition, parked.offset) == (None, None, None)

    later = [order_created() for _ in range(3)]
    rig.emit(*later)
    eventually(lambda: rig.sent(later), timeout=15, message="rows committed later sent")

    good = before + after + later
    assert rig.relay.last_error is None, "parking is no failure of the relay"
    assert rig.filed() == {e.id for e in good}, "the hook filed every good event"
    published = {e.id: 1 for e in good}
    if kind == Reason.UNRECORDED:
        published[poison.id] = 1
    assert rig.on_topic() == published, "each event once on the topic"
    assert rig.producer.attempts[poison.id] <= (1 if kind == Reason.UNRECORDED else 2)
    assert all(rig.producer.attempts[e.id] == 1 for e in good), "no batch was sent twice"

    assert rig.metric("outbox_parked_total", topic=rig.topic, reason=kind) == 1
    assert rig.metric("outbox_parked_events") == 1
    assert rig.metric("outbox_unsent_events") == 0
    (notice,) = eventually(lambda: read_all(rig.bootstrap, rig.dead_letters), timeout=15)
    headers = header_map(notice)
    assert headers[H_SOURCE] == OUTBOX_SOURCE and headers[H_REASON] == kind
    assert headers[H_CONSUMER] == f"{SERVICE}-outbox" and headers[H_TOPIC] == rig.topic
    assert (headers[H_ID], headers[H_TYPE]) == (poison.id, "order-created")
    if kind == Reason.UNRECORDED:
        assert (int(headers[H_PARTITION]), int(headers[H_OFFSET])) == (
            parked.partition,
            parked.offset,
        )
    else:
        assert H_OFFSET not in headers and notice.value() is None

    listed = rig.outbox_command("list")
    assert listed.returncode == 0, listed.stderr
    assert poison.id in listed.stdout and kind in listed.stdout


def test_a_row_that_was_not_recorded_is_recorded_once_fixed_and_never_published_again(
    rig: Rig,
):
    good, poison = order_created(), POISON[Reason.UNRECORDED]()
    rig.emit(good, poison)
    parked = eventually(lambda: rig.row(poison).parked_at and rig.row(poison), timeout=15)

    fix_the_column(rig)
    retried = rig.outbox_command("retry", poison.id)

    assert retried.returncode == 0, retried.stderr
    assert poison.id in retried.stdout
    eventually(lambda: poison.id in rig.filed(), timeout=15, message="the hook re-run")
    row = rig.row(poison)
    assert row.parked_at is None and row.parked_reason is None and row.sent_at is not None
    assert (row.partition, row.offset) == (parked.partition, parked.offset)
    assert rig.producer.attempts[poison.id] == 1, "recorded, not published again"
    assert rig.on_topic() == {good.id: 1, poison.id: 1}
    with rig.sessions() as session:
        filed = session.get(OrderEvent, poison.id)
        assert filed is not None and filed.causation_id == LONG_REQUEST_ID
        assert (filed.partition, filed.offset) == (parked.partition, parked.offset)
    assert rig.metric("outbox_parked_events") == 0


def test_a_parked_row_retried_without_a_fix_is_parked_again(rig: Rig):
    poison = POISON[Reason.UNPUBLISHABLE]()
    rig.emit(poison)
    eventually(lambda: rig.row(poison).parked_at, timeout=15, message="parked")

    assert rig.outbox_command("retry", "--all").returncode == 0

    eventually(
        lambda: rig.metric("outbox_parked_total", reason=Reason.UNPUBLISHABLE) == 2,
        timeout=15,
        message="parked a second time",
    )
    assert rig.row(poison).parked_at is not None
    assert rig.on_topic() == {}
