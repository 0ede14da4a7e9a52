"""The messaging spans of OpenTelemetry's conventions: a `process` span per consumed event
(one each for a batch handler's run) and a `publish` span per record the outbox relay
sends, whose context travels in the record's `traceparent`."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.messaging.envelope import Envelope, KafkaHeaders
from shared.messaging.exporters import exporting

Record = tuple[str, str, bytes, KafkaHeaders]
"""A record as the relay sends it: topic, key, value and text headers."""

propagator = TraceContextTextMapPropagator()

_batch: ContextVar[Mapping[str, Span] | None] = ContextVar("batch", default=None)
_group: ContextVar[str | None] = ContextVar("group", default=None)


@functools.cache
def tracer() -> trace.Tracer:
    return trace.get_tracer("shared")


def remote_parent(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The context a `traceparent` (and `tracestate`) names, to start a child span in."""
    if not traceparent:
        return None
    return propagator.extract({"traceparent": traceparent, "tracestate": tracestate or ""})


def set_consumer_group(group: str) -> None:
    """The consumer group of the calling thread's consumer, for its process spans."""
    _group.set(group)


def process_attributes(event: Envelope) -> dict[str, str | int]:
    """What a `process` span says of its event (messaging semantic conventions)."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": event.topic or "",
        "messaging.destination.partition.id": str(event.partition),
        "messaging.kafka.offset": event.offset or 0,
        "messaging.kafka.message.key": event.key,
        "messaging.message.id": event.id,
        "cloudevents.event_id": event.id,
        "cloudevents.event_type": event.type,
        "cloudevents.event_source": event.source,
    }
    if group := _group.get():
        attributes["messaging.consumer.group.name"] = group
    return attributes


@contextmanager
def consuming_batch(events: Sequence[Envelope]) -> Iterator[None]:
    """The context in which a batch handler handles `events`: when spans are exported,
    one `process` span per event, each the parent of what the handler emits for it
    (`new_event(caused_by=...)`), sampled as the event's `traceparent` says."""
    if not exporting():
        yield
        return
    spans: dict[str, Span] = {}
    for event in events:
        process = spans[event.id] = tracer().start_span(
            f"process {event.topic}",
            context=remote_parent(event.traceparent, event.tracestate),
            kind=SpanKind.CONSUMER,
        )
        if process.is_recording():  # the event's trace is sampled
            process.set_attributes(process_attributes(event))
    token = _batch.set(spans)
    try:
        yield
    except BaseException as exc:
        for each in spans.values():
            each.record_exception(exc)
            each.set_status(Status(StatusCode.ERROR, str(exc)))
        raise
    finally:
        _batch.reset(token)
        for each in spans.values():
            each.end()


def child_of(event: Envelope) -> tuple[str | None, str | None]:
    """The `traceparent` and `tracestate` of a process span of `event`, a child of the
    span that sent it: the batch's open span when there is one."""
    process = (_batch.get() or {}).get(event.id)
    if process is None:
        process = tracer().start_span(
            f"process {event.topic}",
            context=remote_parent(event.traceparent, event.tracestate),
            kind=SpanKind.CONSUMER,
        )
        process.end()
    out: dict[str, str] = {}
    propagator.inject(out, context=trace.set_span_in_context(process))
    return out.get("traceparent"), out.get("tracestate")


def publish_attributes(topic: str, key: str, headers: Mapping[str, str]) -> dict[str, str]:
    """What a `publish` span says of its record (messaging semantic conventions)."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.kafka.message.key": key,
        "messaging.message.id": headers.get("ce_id", ""),
        "cloudevents.event_id": headers.get("ce_id", ""),
        "cloudevents.event_type": headers.get("ce_type", ""),
    }


class Publishing:
    """The `publish` spans of one batch of records the relay sends: each record's
    `traceparent` becomes its span's, so a consumer's `process` span is its child. A span
    is sampled as the record's `traceparent` says; one not sampled still gives the record
    a `traceparent` of its own (its flags' sampled bit clear), and is neither described nor
    exported."""

    def __init__(self, records: list[Record]) -> None:
        self.spans: list[Span] = []
        self.records: list[Record] = []
        for topic, key, value, headers in records:
            text = {
                name: value.decode() if isinstance(value, bytes) else value
                for name, value in headers
                if value is not None
            }
            publish = tracer().start_span(
                f"publish {topic}",
                context=remote_parent(text.get("traceparent"), text.get("tracestate")),
                kind=SpanKind.PRODUCER,
            )
            if publish.is_recording():  # the record's trace is sampled
                publish.set_attributes(publish_attributes(topic, key, text))
            carrier: dict[str, str] = {}
            propagator.inject(carrier, context=trace.set_span_in_context(publish))
            text.update(carrier)
            self.spans.append(publish)
            self.records.append((topic, key, value, [*text.items()]))

    def end(self, placed: Sequence[Any]) -> None:
        """End each span with where the broker put its record, or its error."""
        for publish, where in zip(self.spans, placed, strict=True):
            if not publish.is_recording():
                continue
            if where.error is None:
                publish.set_attribute("messaging.destination.partition.id", str(where.partition))
                publish.set_attribute("messaging.kafka.offset", where.offset)
            else:
                publish.set_status(Status(StatusCode.ERROR, str(where.error)))
            publish.end()
