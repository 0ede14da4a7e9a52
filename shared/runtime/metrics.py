"""A service's Prometheus metrics: what it counts as it works (HTTP, consumer, relay), and
what it reads when scraped (outbox backlog, consumer lag).

With `PROMETHEUS_MULTIPROC_DIR` set (uvicorn `--workers N`), counters and histograms live
in files there and any worker's /metrics sums every worker's (prometheus_client's
multiprocess mode). The scrape-time gauges read shared state, the database and the
broker, so any worker answers them alike."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from shared.clock import utcnow
from shared.messaging.observe import ConsumerObserver, RelayObserver

log = logging.getLogger(__name__)

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, *HTTP_BUCKETS)
PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
"""The route of a request no route matched: one value, whatever the path."""


class ServiceMetrics(ConsumerObserver, RelayObserver):
    """The instruments of one service, and the registry /metrics serves. Observes the
    consumer and the relay; the HTTP middleware calls `request`."""

    def __init__(self, service: str, multiprocess_dir: str | None = None) -> None:
        """Declares every instrument, one statement each: long as a list is, and read as
        one (the names, help texts and labels /metrics serves)."""
        self.service = service
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        if multiprocess_dir:
            if values.ValueClass is values.MutexValue:
                log.warning(
                    "PROMETHEUS_MULTIPROC_DIR was not set when prometheus_client was imported:"
                    " this process serves %s but does not count into it",
                    multiprocess_dir,
                )
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        own = None if multiprocess_dir else self.registry
        s = ("service",)
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered",
            (*s, "method", "route", "status"),
            registry=own,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            (*s, "method", "route"),
            buckets=HTTP_BUCKETS,
            registry=own,
        )
        self.events_consumed = Counter(
            "events_consumed",
            "Records taken off subscribed topics, by type ('other': not"
            " an event the service handles)",
            (*s, "topic", "type"),
            registry=own,
        )
        self.events_applied = Counter(
            "events_applied", "Events applied (first delivery)", (*s, "type"), registry=own
        )
        self.events_skipped = Counter(
            "events_skipped",
            "Events of types the service does not handle, on topics it does not own",
            (*s, "topic"),
            registry=own,
        )
        self.events_dead_lettered = Counter(
            "events_dead_lettered",
            "Records parked on the dead-letter topic",
            (*s, "type", "reason"),
            registry=own,
        )
        self.handler_duration = Histogram(
            "event_handler_duration_seconds",
            "One handler call: an event, or a run of them for a batch handler",
            (*s, "type"),
            buckets=HANDLER_BUCKETS,
            registry=own,
        )
        self.events_published = Counter(
            "events_published",
            "Events the broker acknowledged from the outbox",
            (*s, "topic", "type"),
            registry=own,
        )
        self.outbox_parked = Counter(
            "outbox_parked",
            "Outbox rows the relay parked: 'unpublishable' (the broker refuses the record for"
            " good) or 'unrecorded' (published, but the service could not record it)",
            (*s, "topic", "reason"),
            registry=own,
        )
        self.publish_latency = Histogram(
            "outbox_publish_latency_seconds",
            "From an event's outbox row being written to the broker's acknowledgement",
            s,
            buckets=PUBLISH_BUCKETS,
            registry=own,
        )
        self.assigned_partitions = Gauge(
            "consumer_assigned_partitions",
            "Partitions the service's consumers own",
            s,
            registry=own,
            multiprocess_mode="livesum",
        )
        self.instruments: list[Counter | Histogram | Gauge] = [
            self.http_requests,
            self.http_duration,
            self.events_consumed,
            self.events_applied,
            self.events_skipped,
            self.events_dead_lettered,
            self.handler_duration,
            self.events_published,
            self.outbox_parked,
            self.publish_latency,
            self.assigned_partitions,
        ]
        self.collectors: list[Collector] = []
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._handlers: dict[str, Any] = {}
        self._latency = self.publish_latency.labels(service)

    def watch(self, collector: Collector) -> None:
        """Add a collector of values read at scrape time."""
        self.registry.register(collector)
        self.collectors.append(collector)

    def describe(self) -> list[Metric]:
        """Every metric family the service exposes, without samples."""
        families = [family for each in self.instruments for family in each.describe()]
        return families + [family for each in self.collectors for family in each.describe()]

    def close(self) -> None:
        """At process exit: drop this process's live gauges from the multiprocess files."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    # -- HTTP ------------------------------------------------------------------------

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        counted = self._requests.get((method, route, status))
        if counted is None:
            counted = self.http_requests.labels(self.service, method, route, str(status))
            self._requests[method, route, status] = counted
        counted.inc()
        timed = self._durations.get((method, route))
        if timed is None:
            timed = self.http_duration.labels(self.service, method, route)
            self._durations[method, route] = timed
        timed.observe(seconds)

    # -- the consumer and the relay (shared.messaging.observe) -------------------------

    def consumed(self, counts: Mapping[tuple[str, str], int]) -> None:
        for (topic, event_type), count in counts.items():
            self.events_consumed.labels(self.service, topic, event_type).inc(count)

    def applied(self, counts: Mapping[str, int]) -> None:
        for event_type, count in counts.items():
            self.events_applied.labels(self.service, event_type).inc(count)

    def skipped(self, topic: str, count: int) -> None:
        self.events_skipped.labels(self.service, topic).inc(count)

    def dead_lettered(self, event_type: str, reason: str) -> None:
        self.events_dead_lettered.labels(self.service, event_type, reason).inc()

    def handled(self, event_type: str, seconds: float) -> None:
        timed = self._handlers.get(event_type)
        if timed is None:
            timed = self._handlers[event_type] = self.handler_duration.labels(
                self.service, event_type
            )
        timed.observe(seconds)

    def assigned(self, partitions: int) -> None:
        self.assigned_partitions.labels(self.service).set(partitions)

    def published(self, counts: Mapping[tuple[str, str], int], latencies: Sequence[float]) -> None:
        for (topic, event_type), count in counts.items():
            self.events_published.labels(self.service, topic, event_type).inc(count)
        observe = self._latency.observe
        for seconds in latencies:
            observe(seconds)

    def parked(self, topic: str, reason: str) -> None:
        self.outbox_parked.labels(self.service, topic, reason).inc()


class Collector(Protocol):
    def describe(self) -> Iterable[Metric]: ...

    def collect(self) -> Iterable[Metric]: ...


class Unsent(Protocol):
    def unsent(self) -> tuple[int, Any, int]: ...


class OutboxCollector:
    """The outbox backlog and its parked rows, read from the service's database at
    scrape time."""

    def __init__(self, service: str, relay: Callable[[], Unsent | None]) -> None:
        self._service = service
        self._relay = relay

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "outbox_unsent_events",
                "Outbox rows not yet published (parked ones aside)",
                labels=["service"],
            ),
            GaugeMetricFamily(
                "outbox_oldest_unsent_age_seconds",
                "Age of the oldest outbox row not yet published (0 when none)",
                labels=["service"],
            ),
            GaugeMetricFamily(
                "outbox_parked_events",
                "Outbox rows parked, waiting for `python -m tools.ops.outbox SERVICE retry`",
                labels=["service"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        relay = self._relay()
        if relay is None:
            return []
        try:
            count, oldest, parked_rows = relay.unsent()
        except Exception as exc:  # the database is away: the scrape goes on without it
            log.info("outbox backlog not read: %s", exc)
            return []
        unsent, age, parked = self._families()
        unsent.add_metric([self._service], count)
        seconds = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        age.add_metric([self._service], max(0.0, seconds))
        parked.add_metric([self._service], parked_rows)
        return [unsent, age, parked]
