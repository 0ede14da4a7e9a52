"""One reader of a group's committed offsets against the ends (shared/messaging/positions.py)
on a real broker, and `/ready`'s catch-up through it: behind by what is left per
partition, from the earliest offset where the group has committed nothing; caught up once
the ends noted at start are reached, whatever arrives after."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from shared.messaging.catchup import CatchUp
from shared.messaging.positions import behind, watermarks
from shared.messaging.topics import ensure_topics
from tests.helpers import unique

pytestmark = pytest.mark.integration


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def test_behind_is_the_end_less_the_committed_offset_of_each_partition(
    kafka_bootstrap: str,
) -> None:
    topic, group = unique("positions"), unique("group")
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, count in ((0, 5), (1, 3)):
        for n in range(count):
            producer.produce(topic, b"{}", f"k{n}".encode(), partition)
    assert producer.flush(30) == 0
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        marks = watermarks(reader, [topic, unique("no-such-topic")], timeout=10)
        assert marks == {(topic, 0): (0, 5), (topic, 1): (0, 3), (topic, 2): (0, 0)}
        assert behind(reader, marks, timeout=10) == {(topic, 0): 5, (topic, 1): 3, (topic, 2): 0}
        commit(kafka_bootstrap, group, topic, {0: 2, 1: 3})
        assert behind(reader, marks, timeout=10) == {(topic, 0): 3, (topic, 1): 0, (topic, 2): 0}
        assert behind(reader, {}, timeout=10) == {}
    finally:
        reader.close()


def test_catch_up_waits_for_the_ends_noted_at_start_only(kafka_bootstrap: str) -> None:
    topic, group = unique("catchup"), unique("group")
    ensure_topics(kafka_bootstrap, [topic], partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n in range(4):
        producer.produce(topic, b"{}", b"k", n % 2)
    assert producer.flush(30) == 0
    caught_up = CatchUp(kafka_bootstrap, group, [topic], every=0)
    try:
        caught_up.start()
        assert caught_up.ends == {(topic, 0): (0, 2), (topic, 1): (0, 2)}
        assert not caught_up() and caught_up.left == 4
        commit(kafka_bootstrap, group, topic, {0: 2, 1: 1})
        assert not caught_up() and caught_up.left == 1
        producer.produce(topic, b"{}", b"k", 1)  # after the start: not waited for
        assert producer.flush(30) == 0
        commit(kafka_bootstrap, group, topic, {1: 2})
        assert caught_up() and caught_up.left == 0
    finally:
        caught_up.close()
