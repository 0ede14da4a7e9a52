"""How the cluster serves the topics a service publishes to, from the metadata its
producer already has and whether each broker it names accepts a connection: `ok`;
`degraded` (writes succeed but redundancy is reduced: a partition has fewer live replicas
in sync than it has replicas, or fewer brokers are alive than it has replicas); `down` (no
broker answers, or none in time, or a partition has no leader or fewer live replicas in sync than
`min.insync.replicas`, so an `acks=all` write is refused or never acknowledged).

Why connect, and not trust the metadata alone: on a cluster whose nodes are also its
KRaft controllers, losing a majority of them loses the quorum, and with it every change
of metadata. The survivors go on reporting the dead brokers as alive and in sync, while
no write can be acknowledged (docs/broker-loss.md)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    ResourceType,
    TopicMetadata,
)

log = logging.getLogger(__name__)

KafkaState = Literal["ok", "degraded", "down"]
DENIED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)


@dataclass(frozen=True)
class KafkaHealth:
    state: KafkaState
    brokers: int
    """Brokers of the metadata that accept a connection (0 when none answered)."""
    detail: str = ""
    """The first problem found, for an operator; empty when ok."""


def derived_min_insync(replicas: int) -> int:
    """What the stack's clusters set: two of three copies in sync, else one."""
    return 2 if replicas >= 3 else 1


def assess(
    alive: Collection[int],
    topics: Mapping[str, TopicMetadata | None],
    min_insync: Mapping[str, int | None],
) -> KafkaHealth:
    """The state of `topics` (name → its metadata, None if not reported) when the brokers
    `alive` (ids) answer; `min_insync` per topic, None to derive it from the replicas."""
    brokers = len(alive)
    if brokers == 0:
        return KafkaHealth("down", 0, "no broker answers")
    degraded = ""
    for name, topic in sorted(topics.items()):
        if topic is None or topic.error is not None:
            why = topic.error if topic is not None else "not in the metadata"
            return KafkaHealth("down", brokers, f"{name}: {why}")
        for partition in sorted(topic.partitions.values(), key=lambda p: p.id):
            where, replicas = f"{name}[{partition.id}]", len(partition.replicas)
            isr = len([b for b in partition.isrs if b in alive])
            needed = min_insync.get(name) or derived_min_insync(replicas)
            if partition.leader < 0:
                return KafkaHealth("down", brokers, f"{where} has no leader")
            if isr < needed:
                return KafkaHealth("down", brokers, f"{where}: {isr} in sync, {needed} needed")
            if not degraded and partition.leader not in alive:
                degraded = f"{where}: leader {partition.leader} is gone, another takes over"
            if not degraded and isr < replicas:
                degraded = f"{where}: {isr} of {replicas} replicas in sync"
            if not degraded and brokers < replicas:
                degraded = f"{brokers} broker(s) alive for {replicas} replicas"
    return KafkaHealth("degraded" if degraded else "ok", brokers, degraded)


def accepting(host: str, port: int, timeout: float) -> bool:
    """True when something listens at host:port (a killed broker refuses at once)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


class KafkaHealthCheck:
    """`assess` for a service's publish topics, asked of the cluster at most once per
    `ttl` seconds however often /ready is called, each time within `timeout` seconds."""

    def __init__(
        self,
        metadata: Callable[[str, float], ClusterMetadata],
        topics: Sequence[str],
        admin: Callable[[], AdminClient] | None = None,
        *,
        ttl: float = 1.0,
        timeout: float = 1.0,
        accepting: Callable[[str, int, float], bool] = accepting,
    ) -> None:
        """`metadata(topic, timeout)`: the producer's `list_topics`; `admin` makes the
        client that reads each topic's `min.insync.replicas` once (DESCRIBE_CONFIGS);
        `accepting(host, port, timeout)`: whether a broker takes a connection."""
        self._accepting = accepting
        self._metadata, self._topics = metadata, sorted(set(topics))
        self._make_admin = admin
        self._admin: AdminClient | None = None
        self._ttl, self._timeout = ttl, timeout
        self._min_insync: dict[str, int | None] = {}
        """Per topic, as configured; None where it may not be read (derived instead)."""
        self._lock = threading.Lock()
        self._asked = -float("inf")
        self._last = KafkaHealth("down", 0, "not asked yet")

    def __call__(self) -> KafkaHealth:
        with self._lock:
            if time.monotonic() - self._asked >= self._ttl:
                self._last = self._check()
                self._asked = time.monotonic()
            return self._last

    def _check(self) -> KafkaHealth:
        deadline = time.monotonic() + self._timeout
        topics: dict[str, TopicMetadata | None] = {}
        brokers: dict[int, tuple[str, int]] = {}
        try:
            for name in self._topics:
                metadata = self._metadata(name, max(0.05, deadline - time.monotonic()))
                brokers = {b.id: (str(b.host), b.port) for b in metadata.brokers.values()}
                topics[name] = metadata.topics.get(name)
        except KafkaException as exc:
            return KafkaHealth("down", 0, f"no broker answers: {exc.args[0]}")
        wait = max(0.05, (deadline - time.monotonic()) / max(1, len(brokers)))
        alive = {
            node for node, (host, port) in brokers.items() if self._accepting(host, port, wait)
        }
        late = self._read_min_insync(max(0.05, deadline - time.monotonic()))
        if late:
            detail = f"{late}: min.insync.replicas not answered in time"
            return KafkaHealth("down", len(alive), detail)
        return assess(alive, topics, self._min_insync)

    def _read_min_insync(self, timeout: float) -> str:
        """Each topic's `min.insync.replicas`, once; a denied topic is derived for good,
        one that did not answer is asked again next time. The first topic whose answer did
        not come within `timeout` (the cluster is too slow to count on), else ""."""
        missing = [name for name in self._topics if name not in self._min_insync]
        if not missing or self._make_admin is None:
            return ""
        if self._admin is None:
            self._admin = self._make_admin()
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in missing]
        try:
            futures = self._admin.describe_configs(resources, request_timeout=timeout)
        except KafkaException as exc:
            log.info("min.insync.replicas not read: %s", exc)
            return ""
        late = ""
        for resource, future in futures.items():
            try:
                entries = future.result(timeout)
            except TimeoutError:
                late = late or resource.name
                continue
            except KafkaException as exc:
                if exc.args[0].code() in DENIED:
                    self._min_insync[resource.name] = None
                continue
            entry = entries.get("min.insync.replicas")
            self._min_insync[resource.name] = int(entry.value) if entry is not None else None
        if len(self._min_insync) == len(self._topics):
            self._admin = self._make_admin = None  # all known: the client is not needed
        return late
