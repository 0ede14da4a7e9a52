"""Consumer lag per partition, asked of the broker when /metrics is scraped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.messaging.connection import Bootstrap, client_config

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
"""What librdkafka itself gives each admin request. A scrape waits for the answers only
until its own deadline: handing librdkafka the few milliseconds left instead was seen to
trip an assertion in its admin request handling (librdkafka 2.16, `eonce->refcnt > 0`)
under a busy broker, which aborts the service."""


class LagCollector:
    """Consumer lag per partition: the high watermark less the group's committed offset
    (or, before any commit, less the earliest offset), asked of the broker at scrape time.
    Answers are kept `ttl` seconds and waited for at most `timeout`; without one, the lag
    is left out and `consumer_lag_known` is 0."""

    def __init__(
        self,
        service: str,
        bootstrap: Bootstrap,
        group: str,
        topics: Sequence[str],
        *,
        ttl: float = 1.5,
        timeout: float = 1.0,
    ) -> None:
        self._service, self._bootstrap, self._group = service, bootstrap, group
        self._topics = list(topics)
        self._ttl, self._timeout = ttl, timeout
        self._lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._asked = -float("inf")
        self._lag: list[tuple[str, int, int]] | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "consumer_lag_records",
                "Records on a partition the consumer group has not committed",
                labels=["service", "group", "topic", "partition"],
            ),
            GaugeMetricFamily(
                "consumer_lag_known",
                "1 when the broker answered the last lag query in time",
                labels=["service"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        lag = self.lag()
        records, known = self._families()
        for topic, partition, behind in lag or ():
            records.add_metric([self._service, self._group, topic, str(partition)], behind)
        known.add_metric([self._service], 0 if lag is None else 1)
        return [records, known]

    def lag(self) -> list[tuple[str, int, int]] | None:
        """(topic, partition, records behind) of each subscribed partition; None when the
        broker did not answer."""
        with self._lock:
            if time.monotonic() - self._asked >= self._ttl:
                try:
                    self._lag = self._query(time.monotonic() + self._timeout)
                except Exception as exc:
                    log.info("consumer lag not read: %r", exc)
                    self._lag = None
                self._asked = time.monotonic()
            return self._lag

    def _query(self, deadline: float) -> list[tuple[str, int, int]]:
        if self._admin is None:
            self._admin = AdminClient(client_config(self._bootstrap))
        admin = self._admin

        def left() -> float:
            return max(0.01, deadline - time.monotonic())

        metadata = admin.list_topics(timeout=left())
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._topics
            if topic in metadata.topics and metadata.topics[topic].error is None
            for partition in sorted(metadata.topics[topic].partitions)
        ]
        if not partitions:
            return []
        asked = [ConsumerGroupTopicPartitions(self._group, partitions)]
        committed_future = admin.list_consumer_group_offsets(asked, request_timeout=REQUEST_TIMEOUT)
        ends = _offsets(admin, partitions, OffsetSpec.latest(), left)  # type: ignore[no-untyped-call]
        found = committed_future[self._group].result(timeout=left()).topic_partitions
        committed = {(tp.topic, tp.partition): tp.offset for tp in found}
        never = [tp for tp in partitions if committed.get((tp.topic, tp.partition), -1) < 0]
        starts = _offsets(admin, never, OffsetSpec.earliest(), left) if never else {}  # type: ignore[no-untyped-call]
        lag = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            done = committed.get(key, -1)
            lag.append(
                (tp.topic, tp.partition, max(0, ends[key] - (done if done >= 0 else starts[key])))
            )
        return lag


def _offsets(
    admin: AdminClient, partitions: list[TopicPartition], spec: Any, left: Callable[[], float]
) -> dict[tuple[str, int], int]:
    """Each partition's offset as `spec` (an OffsetSpec) asks: latest or earliest."""
    futures = admin.list_offsets(dict.fromkeys(partitions, spec), request_timeout=REQUEST_TIMEOUT)
    return {
        (tp.topic, tp.partition): future.result(timeout=left()).offset
        for tp, future in futures.items()
    }
