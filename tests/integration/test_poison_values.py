"""A consumed event whose handler's own writes hold a value the database refuses (too long
for its column, a NUL, an index entry over PostgreSQL's limit) harms only itself: a real
broker, SQLite and PostgreSQL.

The rest of its run is applied once, the bad event alone is retried and dead-lettered,
and the offsets move on past it; a refused value is never taken for an outage, which
would rewind the partition forever. Both kinds of handler are covered: one event at a
time, and a batch handler given the whole run."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import CheckConstraint, Index, Integer, String, Text, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from shared.messaging.consumer import ConsumerWorker
from shared.messaging.deadletter import DEAD_LETTERS, H_OFFSET, H_REASON, Reason
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.events import Event
from shared.messaging.producer import EventProducer
from shared.messaging.router import EventRouter
from shared.messaging.topics import ensure_topics
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.storage.db import make_engine, make_sessions
from tests.helpers import eventually, unique
from tests.integration.test_poison_messages import header_map, read_all
from tests.schema import Base, Outbox, Processed

pytestmark = pytest.mark.integration


class Written(Base):
    """What the handlers write. `note` is a varchar(64), which SQLite does not enforce,
    so a CHECK refuses there what PostgreSQL refuses; `big` is indexed, and PostgreSQL
    refuses an index entry of more than about 2.7 kB."""

    __tablename__ = "poison_written"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(String(64))
    big: Mapped[str] = mapped_column(Text)
    __table_args__ = (
        CheckConstraint("length(note) <= 64", name="note_fits"),
        Index("ix_poison_written_big", "big"),
    )


class Note(Event, type="note", topic="notes", key="key"):
    key: str
    seq: int
    note: str = "fine"
    big: str = ""


class BatchNote(Note, type="batch-note"):
    """The same, for a handler that takes the whole run."""


def build_router() -> EventRouter:
    router = EventRouter()

    def row(event: Envelope, payload: Note) -> dict[str, object]:
        return {"event_id": event.id, "seq": payload.seq, "note": payload.note, "big": payload.big}

    @router.on
    def write_note(unit: Unit, event: Envelope, payload: Note) -> None:
        unit.session.execute(insert(Written), [row(event, payload)])

    @router.on
    def write_notes(unit: Unit, events: Sequence[Envelope], payloads: Sequence[BatchNote]) -> None:
        unit.session.execute(
            insert(Written), [row(e, p) for e, p in zip(events, payloads, strict=True)]
        )

    return router


BAD = {
    "too-long": {"note": "x" * 200},
    "nul": {"note": "a\x00b"},
    "index-entry-too-large": {"big": os.urandom(6000).hex()},
}
"""The bad values, as payload fields."""
ONLY_POSTGRES = {"nul", "index-entry-too-large"}
"""SQLite stores these: nothing to refuse."""


@dataclass
class Rig:
    bootstrap: str
    topic: str
    dead_letters: str
    uow: UnitOfWork
    worker: ConsumerWorker
    producer: EventProducer

    def written(self) -> list[tuple[int, str]]:
        with self.uow.sessions() as session:
            return [
                (seq, event_id)
                for seq, event_id in session.execute(select(Written.seq, Written.event_id))
            ]

    def committed(self, partition: int) -> int:
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.worker.name})
        try:
            (position,) = probe.committed([TopicPartition(self.topic, partition)], timeout=10)
            return int(position.offset)
        finally:
            probe.close()


@pytest.fixture
def rig(kafka_bootstrap: str, database_url: str) -> Iterator[Rig]:
    prefix = unique("poison-values") + "-"
    topic, dead_letters = prefix + Note.topic, prefix + DEAD_LETTERS
    ensure_topics(kafka_bootstrap, [topic, dead_letters], partitions=3)
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    producer = EventProducer(kafka_bootstrap)
    uow = UnitOfWork(make_sessions(engine), Outbox, "/tests")
    worker = ConsumerWorker(
        name=unique("writer"),
        bootstrap=kafka_bootstrap,
        topics=[topic],
        owned_topics=[topic],
        topic_prefix=prefix,
        router=build_router(),
        uow=uow,
        processed_model=Processed,
        producer=producer,
        dead_letter_topic=dead_letters,
        max_attempts=2,
        backoff=0.05,
    )
    try:
        yield Rig(kafka_bootstrap, topic, dead_letters, uow, worker, producer)
    finally:
        worker.stop()
        producer.close()
        engine.dispose()


@pytest.mark.parametrize("handler", ["one-by-one", "batch"])
@pytest.mark.parametrize("bad", list(BAD))
def test_a_value_the_database_refuses_harms_only_its_own_event(
    rig: Rig, database_url: str, bad: str, handler: str
):
    if bad in ONLY_POSTGRES and database_url.startswith("sqlite"):
        pytest.skip("SQLite stores this value")
    model = Note if handler == "one-by-one" else BatchNote
    events = [
        Envelope(
            type=model.event_type,
            source="/tests",
            key="k",
            data=dump_json(model(key="k", seq=seq, **(BAD[bad] if seq == 5 else {}))),
        )
        for seq in range(1, 11)
    ]
    # one key, one partition, published before the consumer starts: one fetched run
    deliveries = [rig.producer.publish(rig.topic, event) for event in events]
    partition = deliveries[0].partition
    assert partition is not None and {d.partition for d in deliveries} == {partition}
    rig.worker.start()

    good = sorted((seq, e.id) for seq, e in enumerate(events, 1) if seq != 5)
    eventually(lambda: sorted(rig.written()) == good, timeout=30, message="the good applied")
    eventually(
        lambda: rig.committed(partition) == (deliveries[-1].offset or 0) + 1,
        timeout=30,
        message="every offset committed, the bad event's too",
    )
    (letter,) = read_all(rig.bootstrap, rig.dead_letters)
    parked = header_map(letter)
    assert parked[H_REASON] == Reason.HANDLER_FAILED
    assert int(parked[H_OFFSET]) == deliveries[4].offset
    assert letter.value() == events[4].data
    assert sorted(rig.written()) == good, "each good event applied once"
    assert rig.worker.alive and rig.worker.dead_lettered == 1 and rig.worker.applied == 9
