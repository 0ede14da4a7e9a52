"""Small helpers for tests: polling with a deadline, unique names, reading topics, adding
up metrics, handing events to a router's handlers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, Message
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from shared.messaging import tracing
from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.envelope import Envelope
from shared.messaging.events import Event
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Unit
from shared.runtime.keys import anchor_text

T = TypeVar("T")


def eventually(
    check: Callable[[], T], timeout: float = 30, interval: float = 0.1, message: str = "condition"
) -> T:
    """Call `check` until it returns a truthy value (returned) or raises no AssertionError;
    fail with the last error once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s: {last!r}")
        time.sleep(interval)


def deliver(
    router: EventRouter,
    unit: Unit,
    *payloads: Event,
    correlation_id: str | None = None,
    caused_by: Envelope | None = None,
) -> list[Envelope]:
    """Hand `payloads` to their handlers as the consumer hands a claimed run, through
    `router.dispatch` in `unit`'s transaction, each in a fresh envelope (correlated and
    caused as given); return the envelopes."""
    received = [
        Received(
            tracing.new_event(
                payload.event_type,
                payload.event_key,
                payload,
                source="/test",
                correlation_id=correlation_id,
                caused_by=caused_by,
            ),
            payload,
        )
        for payload in payloads
    ]
    router.dispatch(unit, received)
    return [item.event for item in received]


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_anchor() -> str:
    """A fresh trust anchor's public half, as `AUTH_KEYSET_PUBLIC_KEY` takes it: what a
    service that learns signing keys needs to start (its private half is thrown away)."""
    return anchor_text(Ed25519PrivateKey.generate())


def random_email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.com"


def read_topic(
    bootstrap: Bootstrap,
    topic: str,
    *,
    until: Callable[[list[Message]], bool],
    timeout: float = 30,
) -> list[Message]:
    """Read `topic` from the beginning until `until(messages)` holds or time runs out."""
    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": unique("reader"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(messages):
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


def sqlite_varchar_check(table: str, column: str, length: int) -> str:
    """A SQLite trigger refusing, as PostgreSQL's varchar(`length`) does, a longer value
    in `table.column` (SQLite does not enforce declared lengths)."""
    return (
        f"CREATE TRIGGER {table}_{column}_fits BEFORE INSERT ON {table}"
        f" WHEN length(NEW.{column}) > {length} BEGIN"
        f" SELECT RAISE(ABORT, 'value too long for type character varying({length})');"
        " END"
    )


def metric_total(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`, in the text
    a /metrics endpoint answers (0 when there are none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


class ConsumedRecord:
    """The accessors of a consumed Kafka record (`confluent_kafka.Message`'s), over the
    fields a test's dataclass names with a trailing `_`."""

    topic_: Any
    key_: Any
    value_: Any
    headers_: Any
    partition_: Any
    offset_: Any

    def topic(self) -> Any:
        return self.topic_

    def key(self) -> Any:
        return self.key_

    def value(self) -> Any:
        return self.value_

    def headers(self) -> Any:
        return self.headers_

    def partition(self) -> Any:
        return self.partition_

    def offset(self) -> Any:
        return self.offset_
