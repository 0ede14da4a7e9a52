"""What the consumer loop and the outbox relay report as they work, for metrics.

The runtime implements these (shared.runtime.metrics); the defaults ignore everything.
Counts come once per batch, per type, so that reporting stays off the per-record path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ConsumerObserver:
    def consumed(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Records taken off the topics in one batch, by (topic, event type)."""

    def applied(self, counts: Mapping[str, int]) -> None:
        """Events applied for the first time, by type."""

    def skipped(self, topic: str, count: int) -> None:
        """Events of a type no handler takes, on a topic another service owns."""

    def dead_lettered(self, event_type: str, reason: str) -> None:
        """One record parked on the dead-letter topic."""

    def handled(self, event_type: str, seconds: float) -> None:
        """One handler call: one event, or a run of them for a batch handler."""

    def assigned(self, partitions: int) -> None:
        """The number of partitions this member owns, after every rebalance."""


class RelayObserver:
    def published(self, counts: Mapping[tuple[str, str], int], latencies: Sequence[float]) -> None:
        """A batch the broker acknowledged: events by (topic, type), and each event's
        seconds from its creation to the acknowledgement."""

    def parked(self, topic: str, reason: str) -> None:
        """One outbox row parked (shared.messaging.parking), `unpublishable` or
        `unrecorded`."""


IGNORED_CONSUMER = ConsumerObserver()
IGNORED_RELAY = RelayObserver()
