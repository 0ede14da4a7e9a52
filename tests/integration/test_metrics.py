"""Consumer lag read from the real broker (committed offsets against high watermarks), and
one service's metrics summed over its uvicorn workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from shared.messaging.topics import ensure_topics
from shared.runtime.lag import LagCollector
from tests.conftest import free_port
from tests.helpers import eventually, metric_total, unique
from tools.local.stack import ServiceProcess

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in per_partition.items():
        for n in range(count):
            producer.produce(topic, f"record {n}".encode(), partition=partition)
    assert producer.flush(30) == 0


def commit(bootstrap: str, group: str, offsets: list[TopicPartition]) -> None:
    committer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committer.commit(offsets=offsets, asynchronous=False)
    finally:
        committer.close()


def test_lag_per_partition_is_the_high_watermark_less_the_committed_offset(
    kafka_bootstrap: str,
) -> None:
    topic, missing, group = unique("lag"), unique("not-yet"), unique("lag-group")
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    produce(kafka_bootstrap, topic, {0: 5, 1: 3})
    lag = LagCollector("shop", kafka_bootstrap, group, [topic, missing], ttl=0, timeout=10)

    assert lag.lag() == [(topic, 0, 5), (topic, 1, 3), (topic, 2, 0)], "nothing committed yet"

    commit(kafka_bootstrap, group, [TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 3)])

    assert lag.lag() == [(topic, 0, 3), (topic, 1, 0), (topic, 2, 0)]
    families = {family.name: family for family in lag.collect()}
    assert families["consumer_lag_known"].samples[0].value == 1
    assert {
        (s.labels["group"], s.labels["topic"], s.labels["partition"], s.value)
        for s in families["consumer_lag_records"].samples
    } == {(group, topic, "0", 3), (group, topic, "1", 0), (group, topic, "2", 0)}


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[ServiceProcess]:
    app = "tests.integration.workers_app:create_app"
    served = ServiceProcess("workers", free_port(), tmp_path, workers=2, app=app)
    served.start()
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


def test_every_scrape_of_a_service_with_two_workers_counts_both(
    two_workers: ServiceProcess,
) -> None:
    pids: list[int] = []

    def both_answered() -> bool:
        pids.append(httpx.get(f"{two_workers.url}/pid").json())  # a new connection each
        return len(set(pids)) == 2

    eventually(both_answered, timeout=60, interval=0, message="both workers answered")

    def both_counted() -> bool:  # a worker counts a request as it finishes, after its reply
        files = {path.name for path in two_workers.metrics_dir.iterdir()}
        return files >= {f"counter_{pid}.db" for pid in pids}

    eventually(both_counted, timeout=10, message="a counter file for each worker")
    for _ in range(6):  # whichever worker answers
        text = httpx.get(f"{two_workers.url}/metrics").text
        assert metric_total(text, "http_requests_total", route="/pid") == len(pids)
        assert metric_total(text, "http_request_duration_seconds_count", route="/pid") == len(pids)
