"""An idempotent Kafka producer whose deliveries are confirmed, never assumed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import ClusterMetadata  # type: ignore[attr-defined]

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.envelope import Envelope, KafkaHeaders


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a record within the delivery timeout."""

    def __init__(self, event_id: str, error: KafkaError | str) -> None:
        super().__init__(f"event {event_id} was not delivered: {error}")
        self.event_id = event_id
        self.error = error


@dataclass(slots=True)
class Delivery:
    """The outcome of producing one event: its position, or the error."""

    event: Envelope
    topic: str
    partition: int | None = None
    offset: int | None = None
    error: KafkaError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.offset is not None


class Placed:
    """Where the broker put one record (`partition`, `offset`), or why it did not."""

    __slots__ = ("done", "error", "offset", "partition")

    def __init__(self) -> None:
        self.done = False
        self.error: KafkaError | None = None
        self.partition = -1
        self.offset = -1

    def report(self, error: KafkaError | None, message: Message) -> None:
        self.done = True
        self.error = error
        if error is None:
            self.partition = message.partition()  # type: ignore[assignment]
            self.offset = message.offset()  # type: ignore[assignment]


def producer_config(bootstrap: Bootstrap, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **client_config(bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        # Java clients and Kafka's tools hash keys with murmur2: land where they do.
        "partitioner": "murmur2_random",
        # Records that arrive within a few ms share one request: the broker's cost is per
        # request far more than per record.
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        # Compression saves bandwidth between machines but costs the broker CPU to check
        # every batch; set `lz4` where the network, not the CPU, is the limit.
        "compression.type": "none",
        "message.timeout.ms": 30_000,
    }
    config.update(overrides)
    return config


class EventProducer:
    """Produces envelopes keyed by aggregate id and waits for every delivery report."""

    def __init__(self, bootstrap: Bootstrap, **overrides: Any) -> None:
        self._producer = Producer(producer_config(bootstrap, **overrides))

    def send(self, records: Sequence[tuple[str, Envelope]], timeout: float = 60) -> list[Delivery]:
        """Produce `(topic, event)` records in order; return one Delivery each, all reported."""
        deliveries = [Delivery(event, topic) for topic, event in records]
        pending = len(deliveries)

        def report(delivery: Delivery) -> Any:
            def on_delivery(error: KafkaError | None, message: Message) -> None:
                nonlocal pending
                pending -= 1
                delivery.error = error
                if error is None:
                    delivery.partition = message.partition()
                    delivery.offset = message.offset()

            return on_delivery

        for delivery in deliveries:
            event = delivery.event
            while True:
                try:
                    self._producer.produce(
                        delivery.topic,
                        key=event.key.encode(),
                        value=event.data,
                        headers=event.headers(),
                        on_delivery=report(delivery),
                    )
                    break
                except BufferError:  # local queue full: let it drain
                    self._producer.poll(0.05)
                except KafkaException as exc:  # refused outright, e.g. too large
                    delivery.error = exc.args[0]
                    pending -= 1
                    break
        self._producer.flush(timeout)
        if pending:
            raise DeliveryError(deliveries[-1].event.id, "no delivery report before timeout")
        return deliveries

    def send_records(
        self, records: Sequence[tuple[str, str, bytes | None, KafkaHeaders]], timeout: float = 60
    ) -> list[Placed]:
        """Produce `(topic, key, value, headers)` records in order and wait for every report;
        return where each landed, or its error, in the same order. A record refused before
        it is queued (too large, a header it cannot encode) gets its error and the others
        go on."""
        placed = [Placed() for _ in records]
        produce, poll = self._producer.produce, self._producer.poll
        for (topic, key, value, headers), slot in zip(records, placed, strict=True):
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=slot.report)
                    break
                except BufferError:  # local queue full: let it drain
                    poll(0.05)
                except KafkaException as exc:  # refused outright, e.g. too large
                    slot.error = exc.args[0]
                    slot.done = True
                    break
                except (TypeError, ValueError) as exc:  # a key or header it cannot encode
                    slot.error = KafkaError(KafkaError._INVALID_ARG, str(exc))
                    slot.done = True
                    break
        self._producer.flush(timeout)
        if not all(slot.done for slot in placed):
            raise DeliveryError("<batch>", "no delivery report before timeout")
        return placed

    def publish(self, topic: str, event: Envelope, timeout: float = 60) -> Delivery:
        """Produce one event; raise DeliveryError unless the broker acknowledged it."""
        (delivery,) = self.send([(topic, event)], timeout)
        if not delivery.ok:
            raise DeliveryError(event.id, delivery.error or "unknown error")
        return delivery

    def produce_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: KafkaHeaders | None = None,
        timeout: float = 30,
    ) -> None:
        """Produce a record as-is (dead letters, redrive) and wait for its acknowledgement."""
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error)

        self._producer.produce(
            topic, value=value, key=key, headers=headers or [], on_delivery=on_delivery
        )
        if self._producer.flush(timeout):
            raise DeliveryError("<raw>", "no delivery report before timeout")
        if errors:
            raise DeliveryError("<raw>", errors[0])

    def metadata(self, topic: str | None = None, timeout: float = 2) -> ClusterMetadata:
        """The cluster's brokers and `topic` (every topic if None) as a broker reports them
        now; raises KafkaException when none answers within `timeout`."""
        metadata: ClusterMetadata = self._producer.list_topics(topic, timeout=timeout)
        return metadata

    def close(self, timeout: float = 10) -> None:
        self._producer.flush(timeout)
