"""Kafka's state for /ready, from metadata: ok, degraded (less redundancy, writes go on)
or down (writes refused), and how /ready answers each."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    BrokerMetadata,
    ClusterMetadata,
    PartitionMetadata,
    TopicMetadata,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.messaging.health import KafkaHealth, KafkaHealthCheck, assess
from shared.runtime import http

pytestmark = pytest.mark.unit


def topic(name: str, *partitions: tuple[int, list[int], list[int]]) -> TopicMetadata:
    """`partitions`: (leader, replicas, in-sync replicas) each."""
    metadata = TopicMetadata()
    metadata.topic = name
    for n, (leader, replicas, isrs) in enumerate(partitions):
        part = PartitionMetadata()
        part.id, part.leader, part.replicas, part.isrs = n, leader, replicas, isrs
        metadata.partitions[n] = part
    return metadata


FULL = (1, [1, 2, 3], [1, 2, 3])


def test_every_replica_in_sync_on_every_broker_is_ok() -> None:
    health = assess({1, 2, 3}, {"orders": topic("orders", FULL, FULL)}, {"orders": 2})
    assert health == KafkaHealth("ok", 3, "")


def test_one_replica_out_of_sync_is_degraded_but_writable() -> None:
    topics = {"orders": topic("orders", FULL, (2, [1, 2, 3], [2, 3]))}
    health = assess({1, 2, 3}, topics, {"orders": 2})  # a replica lagging on a live broker
    assert health.state == "degraded" and "orders[1]: 2 of 3" in health.detail


def test_a_dead_broker_still_in_the_isr_is_degraded() -> None:
    follower = assess({1, 2}, {"orders": topic("orders", FULL)}, {"orders": None})
    assert follower == KafkaHealth("degraded", 2, "orders[0]: 2 of 3 replicas in sync")
    leader = assess({2, 3}, {"orders": topic("orders", FULL)}, {"orders": None})
    assert leader.state == "degraded" and "leader 1 is gone" in leader.detail


def test_a_broker_gone_from_the_metadata_is_degraded_by_the_broker_count() -> None:
    health = assess({1, 2}, {"orders": topic("orders", (1, [1, 2, 3], [1, 2]))}, {})
    assert health.state == "degraded" and "1 of 3" not in health.detail


def test_dead_brokers_the_metadata_still_counts_in_sync_are_not_enough() -> None:
    """A lost KRaft quorum freezes the metadata: every replica still looks in sync."""
    health = assess({3}, {"orders": topic("orders", FULL)}, {"orders": 2})
    assert health == KafkaHealth("down", 1, "orders[0]: 1 in sync, 2 needed")


def test_fewer_in_sync_than_min_insync_is_down() -> None:
    topics = {"orders": topic("orders", FULL, (3, [1, 2, 3], [3]))}
    health = assess({2, 3}, topics, {"orders": 2})
    assert health == KafkaHealth("down", 2, "orders[1]: 1 in sync, 2 needed")


def test_min_insync_is_derived_from_the_replicas_where_it_may_not_be_read() -> None:
    lone = (3, [1, 2, 3], [3])
    assert assess({3}, {"t": topic("t", lone)}, {"t": None}).state == "down"
    single = (1, [1], [1])
    assert assess({1}, {"t": topic("t", single)}, {}).state == "ok"


def test_a_partition_without_a_leader_or_a_missing_topic_is_down() -> None:
    leaderless = (-1, [1, 2, 3], [1, 2, 3])
    assert assess({1, 2, 3}, {"t": topic("t", leaderless)}, {}).detail == "t[0] has no leader"
    assert assess({1, 2, 3}, {"t": None}, {}).state == "down"
    assert assess(set(), {}, {}).detail == "no broker answers"


class FakeCluster:
    def __init__(self) -> None:
        self.asked = 0
        self.brokers = 3
        self.isrs = [1, 2, 3]
        self.reachable = True
        self.killed: set[int] = set()

    def metadata(self, name: str, timeout: float) -> ClusterMetadata:
        self.asked += 1
        if not self.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "all brokers down"))
        cluster = ClusterMetadata()
        cluster.brokers = {i: broker(i) for i in range(1, self.brokers + 1)}
        cluster.topics = {name: topic(name, (1, [1, 2, 3], self.isrs))}
        return cluster

    def accepting(self, host: str, port: int, timeout: float) -> bool:
        return port - 9000 not in self.killed


def broker(node: int) -> BrokerMetadata:
    metadata = BrokerMetadata()
    metadata.id, metadata.host, metadata.port = node, "127.0.0.1", 9000 + node
    return metadata


def check_of(cluster: FakeCluster, topics: list[str], ttl: float) -> KafkaHealthCheck:
    return KafkaHealthCheck(cluster.metadata, topics, ttl=ttl, accepting=cluster.accepting)


def test_the_check_asks_the_cluster_at_most_once_per_ttl() -> None:
    cluster = FakeCluster()
    check = check_of(cluster, ["orders", "dead-letters"], ttl=60)
    assert [check().state for _ in range(50)] == ["ok"] * 50
    assert cluster.asked == 2, "one metadata request per topic, once"


def test_the_check_says_down_when_no_broker_answers_and_recovers() -> None:
    cluster = FakeCluster()
    check = check_of(cluster, ["orders"], ttl=0)
    cluster.reachable = False
    assert check().state == "down"
    cluster.reachable, cluster.killed = True, {3}
    assert check() == KafkaHealth("degraded", 2, "orders[0]: 2 of 3 replicas in sync")
    cluster.killed = {2, 3}
    assert check() == KafkaHealth("down", 1, "orders[0]: 1 in sync, 2 needed")
    cluster.killed = set()
    assert check() == KafkaHealth("ok", 3, "")


def app_with(checks: dict[str, bool], health: KafkaHealth | None) -> TestClient:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)
    runtime = SimpleNamespace(readiness=lambda: checks)
    if health is not None:
        runtime.kafka_health = lambda: health
    app.state.runtime = runtime
    return TestClient(app)


@pytest.mark.parametrize(
    ("state", "code", "status"),
    [("ok", 200, "ready"), ("degraded", 200, "degraded"), ("down", 503, "down")],
)
def test_ready_answers_200_while_kafka_takes_writes_and_503_when_it_does_not(
    state: str, code: int, status: str
) -> None:
    health = KafkaHealth(state, 2, "")  # type: ignore[arg-type]
    response = app_with({"database": True, "kafka": state != "down"}, health).get("/ready")
    assert response.status_code == code
    body = response.json()
    assert body["status"] == status and body["ready"] is (code == 200)
    assert body["kafka"] == {"state": state, "brokers": 2, "detail": ""}


def test_a_failed_check_is_down_whatever_kafka_says() -> None:
    response = app_with({"database": False}, KafkaHealth("degraded", 2, "x")).get("/ready")
    assert response.status_code == 503 and response.json()["status"] == "down"
    bare = app_with({"started": True}, None).get("/ready")
    assert bare.json() == {
        "ready": True,
        "status": "ready",
        "checks": {"started": True},
        "kafka": None,
    }


class SlowAdmin:
    """An admin client whose DESCRIBE_CONFIGS is never answered in time."""

    def __init__(self) -> None:
        self.asked = 0

    def describe_configs(self, resources: list[object], request_timeout: float) -> dict:
        self.asked += 1
        return {resource: SimpleNamespace(result=self._late) for resource in resources}

    @staticmethod
    def _late(timeout: float | None = None) -> dict[str, object]:
        raise TimeoutError  # what concurrent.futures.Future.result raises past its timeout


def test_a_broker_that_does_not_answer_in_time_is_down_and_ready_answers_503() -> None:
    cluster, admin = FakeCluster(), SlowAdmin()
    check = KafkaHealthCheck(
        cluster.metadata, ["orders"], lambda: admin, ttl=0, accepting=cluster.accepting
    )
    health = check()
    assert health.state == "down" and "in time" in health.detail, health
    response = app_with({"database": True, "kafka": False}, health).get("/ready")
    assert response.status_code == 503 and response.json()["status"] == "down"
    check()
    assert admin.asked == 2, "a topic that did not answer is asked again next time"
