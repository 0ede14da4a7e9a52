"""Consumer lag per partition, asked of the broker when /metrics is scraped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.messaging import positions
from shared.messaging.connection import Bootstrap, client_config

log = logging.getLogger(__name__)


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
        self._reader: Consumer | None = None
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
        """Through a consumer of the group's id that never joins it: its committed offsets
        and the watermarks. Not the admin API, whose group requests abort the process on a
        librdkafka assertion (2.16, `eonce->refcnt > 0`) once the group's coordinator
        broker goes away while one is under way."""
        if self._reader is None:
            self._reader = Consumer(
                client_config(
                    self._bootstrap,
                    **{"group.id": self._group, "enable.auto.commit": False, "log_level": 3},
                )
            )
        reader = self._reader
        marks = positions.watermarks(reader, self._topics, max(0.05, deadline - time.monotonic()))
        left = positions.behind(reader, marks, max(0.05, deadline - time.monotonic()))
        return [(topic, partition, records) for (topic, partition), records in left.items()]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
