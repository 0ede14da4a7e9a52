"""Searching the log on a real broker (tools.ops.search, and `tools.ops.tail`'s search
options): records stamped an hour apart on topics of their own, placed by the services'
own producer configuration, found by time, key, event id, type and header value; a key
search reads only the partition the producer chose; every search says what it read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import pytest
from confluent_kafka import Consumer, Message, Producer

from shared.clock import utcnow
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.producer import producer_config
from shared.messaging.topics import ensure_topics
from tests.helpers import unique
from tools.ops import records, tail
from tools.ops.search import Query, key_partition, search

pytestmark = pytest.mark.integration

START = (utcnow() - timedelta(hours=2)).replace(microsecond=0)
KEYS = [f"order-{n}" for n in range(12)]
TYPES = ("order-created", "order-confirmed", "order-cancelled")


@dataclass(frozen=True)
class Sent:
    event: Envelope
    topic: str
    partition: int
    offset: int
    stamp: datetime


@dataclass
class Log:
    bootstrap: str
    prefix: str
    topics: list[str]
    sent: list[Sent]

    def reader(self) -> Consumer:
        return records.reader(self.bootstrap, self.prefix)

    def find(self, query: Query, topics: list[str] | None = None) -> tuple[list[Sent], object]:
        consumer = self.reader()
        try:
            found = search(consumer, topics or self.topics, query, timeout=30)
        finally:
            consumer.close()
        by_place = {(s.topic, s.partition, s.offset): s for s in self.sent}
        return [by_place[m.topic(), m.partition(), m.offset()] for m in found.records], found


def event(key: str, type_: str, source: str, when: datetime) -> Envelope:
    return Envelope(type=type_, source=source, key=key, data=dump_json({"key": key}), time=when)


@pytest.fixture(scope="module")
def log(kafka_bootstrap: str) -> Iterator[Log]:
    """Two topics of three partitions; 12 keys × 3 types, each record stamped one minute
    after the one before, starting two hours ago."""
    prefix = unique("search") + "-"
    topics = [prefix + "orders", prefix + "stock"]
    ensure_topics(kafka_bootstrap, topics, partitions=3)
    producer = Producer(producer_config(kafka_bootstrap))
    sent: list[Sent] = []
    minute = 0
    for type_ in TYPES:
        for key in KEYS:
            for topic, source in zip(
                topics, ("/services/order", "/services/inventory"), strict=True
            ):
                when = START + timedelta(minutes=minute)
                minute += 1
                envelope = event(key, type_, source, when)

                def placed(
                    error: object,
                    message: Message,
                    envelope: Envelope = envelope,
                    when: datetime = when,
                ) -> None:
                    assert error is None, error
                    sent.append(
                        Sent(
                            envelope,
                            message.topic() or "",
                            message.partition() or 0,
                            message.offset() or 0,
                            when,
                        )
                    )

                producer.produce(
                    topic,
                    envelope.data,
                    envelope.key.encode(),
                    headers=envelope.headers(),
                    timestamp=int(when.timestamp() * 1000),
                    on_delivery=placed,
                )
    assert producer.flush(30) == 0
    assert len(sent) == len(TYPES) * len(KEYS) * len(topics)
    yield Log(kafka_bootstrap, prefix, topics, sent)


def test_a_key_search_reads_only_the_partition_the_producer_chose(log: Log) -> None:
    key = KEYS[5]
    expected = [s for s in log.sent if s.event.key == key]
    chosen = {(s.topic, s.partition) for s in expected}
    assert chosen == {(t, key_partition(key.encode(), 3)) for t in log.topics}

    found_sent, found = log.find(Query(key=key, limit=1000))

    assert sorted(s.event.id for s in found_sent) == sorted(s.event.id for s in expected)
    assert found.by_key
    assert set(found.read) == chosen, "only the key's partition of each topic is read"
    for place in chosen:
        assert found.read[place] == sum(1 for s in log.sent if (s.topic, s.partition) == place)
    assert found.complete


def test_an_event_id_type_and_header_find_exactly_their_records(log: Log) -> None:
    target = log.sent[40]
    by_id, found = log.find(Query(event_id=target.event.id))
    assert [s.event.id for s in by_id] == [target.event.id]
    assert found.total == len(log.sent), "an id search reads every partition up to its end"

    cancelled, _ = log.find(Query(type="order-cancelled", limit=1000))
    assert sorted(s.event.id for s in cancelled) == sorted(
        s.event.id for s in log.sent if s.event.type == "order-cancelled"
    )

    query = Query(type="order-created", header=("ce_source", "/services/inventory"), limit=1000)
    both, _ = log.find(query)
    assert sorted(s.event.id for s in both) == sorted(
        s.event.id
        for s in log.sent
        if s.event.type == "order-created" and s.event.source == "/services/inventory"
    )
    assert both, "the data has such records"
    nothing, _ = log.find(Query(header=("ce_source", "/services/nobody")))
    assert nothing == []


def test_a_time_range_is_sought_by_offset_and_read_only_within(log: Log) -> None:
    since, until = START + timedelta(minutes=10), START + timedelta(minutes=30)
    hits, found = log.find(Query(since=since, until=until, limit=1000))
    expected = [s for s in log.sent if since <= s.stamp < until]
    assert sorted(s.event.id for s in hits) == sorted(s.event.id for s in expected)
    assert found.total == len(expected), "each partition read from since's offset to until's"
    assert [s.stamp for s in hits] == sorted(s.stamp for s in hits), "by time"
    later, found_later = log.find(Query(since=START + timedelta(days=1)))
    assert later == [] and found_later.total == 0


def test_a_search_stops_at_its_limit_and_says_more_may_match(log: Log) -> None:
    hits, found = log.find(Query(type="order-confirmed", limit=3))
    assert len(hits) == 3 and all(s.event.type == "order-confirmed" for s in hits)
    assert not found.complete
    assert "stopped at the limit" in found.summary()


def test_tail_searches_by_key_and_reports_what_it_read(
    log: Log, capsys: pytest.CaptureFixture[str]
) -> None:
    key = KEYS[7]
    status = tail.main(
        [
            "--bootstrap",
            log.bootstrap,
            "--topic-prefix",
            log.prefix,
            "--topic",
            "orders",
            "--topic",
            "stock",
            "--key",
            key,
            "--type",
            "order-confirmed",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(
        s.event.id for s in log.sent if s.event.key == key and s.event.type == "order-confirmed"
    )
    assert all(line["key"] == key for line in lines)
    partition = key_partition(key.encode(), 3)
    read = sum(1 for s in log.sent if s.partition == partition)
    assert f"read {read:,} record(s)" in err
    for topic in log.topics:
        assert f"{topic}[{partition}]" in err
    assert "only the key's partition" in err
