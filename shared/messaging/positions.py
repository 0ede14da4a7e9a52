"""How far a consumer group is behind: its committed offsets against the partitions' ends.

One reader for every question of the kind: `/ready`'s catch-up (`catchup`) asks it of the
ends it noted at start, the lag metric (`shared/runtime/lag.py`) of the ends now. Both go
through a consumer that carries the group's id and never subscribes (it joins no group,
commits nothing): its `committed()` reads the group's offsets and `get_watermark_offsets`
the ends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import Consumer, TopicPartition

Place = tuple[str, int]
"""(topic, partition)."""


def watermarks(
    consumer: Consumer, topics: Iterable[str], timeout: float
) -> dict[Place, tuple[int, int]]:
    """(earliest, end) offsets of every partition of `topics`, by partition number; a topic
    the broker does not have (or reports an error for) is left out."""
    metadata = consumer.list_topics(timeout=timeout)
    marks: dict[Place, tuple[int, int]] = {}
    for topic in topics:
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            continue
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout, cached=False
            )
            marks[(topic, partition)] = (low, high)
    return marks


def behind(
    consumer: Consumer, marks: Mapping[Place, tuple[int, int]], timeout: float
) -> dict[Place, int]:
    """Records the consumer's group has still to commit on each partition of `marks`: the
    end less its committed offset, or less the earliest offset kept when it has committed
    none there (never below 0)."""
    if not marks:
        return {}
    asked = [TopicPartition(topic, partition) for topic, partition in marks]
    left: dict[Place, int] = {}
    for answer in consumer.committed(asked, timeout=timeout):
        low, end = marks[(answer.topic, answer.partition)]
        done = answer.offset if answer.offset >= 0 else low
        left[(answer.topic, answer.partition)] = max(0, end - done)
    return left
