"""Trace and causation context: W3C `traceparent` via OpenTelemetry, plus the ids that
CloudEvents carries (`ce_causationid`, `ce_correlationid`).

The HTTP middleware and the consumer loop open a span and set the causation context;
`new_event` reads both, so business code never passes trace ids around by hand.

Spans follow OpenTelemetry's messaging conventions: a `publish` span per event the relay
sends (its context travels in the record's `traceparent`) and a `process` span per event
handled, whose parent is that `publish` span. They leave the process only when the
standard `OTEL_TRACES_EXPORTER` names an exporter (`configure`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._importlib_metadata import entry_points
from pydantic import BaseModel

from shared.messaging.envelope import Envelope, KafkaHeaders, dump_json, new_id

Record = tuple[str, str, bytes, KafkaHeaders]
"""A record as the relay sends it: topic, key, value and text headers."""

_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Cause:
    """What is being handled right now: an HTTP request or a consumed event."""

    id: str
    correlation_id: str | None = None
    continued: bool = False
    """True when the caller sent a trace to continue (a `traceparent`)."""


_cause: ContextVar[Cause | None] = ContextVar("cause", default=None)
_handling: ContextVar[Envelope | None] = ContextVar("handling", default=None)
_batch: ContextVar[Mapping[str, Span] | None] = ContextVar("batch", default=None)
_group: ContextVar[str | None] = ContextVar("group", default=None)
_exporting = False

# What OTEL_TRACES_EXPORTER may name, beside any installed exporter's entry point.
_ALIASES = {"zipkin": "zipkin_json"}
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def configure(service_name: str, environ: Mapping[str, str] = os.environ) -> None:
    """Install an SDK tracer provider once per process, so spans get real ids, and the
    exporters that `OTEL_TRACES_EXPORTER` names (`otlp`, `zipkin`, `console`; unset or
    `none`: spans stay in the process). Each exporter reads its own standard variables
    (`OTEL_EXPORTER_OTLP_*`, `OTEL_EXPORTER_ZIPKIN_*`); `OTEL_SERVICE_NAME` wins over
    the service's name, and `OTEL_TRACES_SAMPLER` chooses the sampler."""
    global _exporting
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for exporter in span_exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _exporting = True
    trace.set_tracer_provider(provider)


def span_exporters(environ: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (comma-separated), built from their
    entry points. `otlp` means OTLP over HTTP unless `OTEL_EXPORTER_OTLP_PROTOCOL` (or its
    `_TRACES_` form) says `grpc`."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol.strip() not in _OTLP_BY_PROTOCOL:
                raise ValueError(f"unsupported OTLP protocol {protocol!r}")
            name = _OTLP_BY_PROTOCOL[protocol.strip()]
        entry = _ALIASES.get(name, name)
        found = list(entry_points(group="opentelemetry_traces_exporter", name=entry))
        if not found:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {name!r}, but no such exporter is installed"
            )
        exporters.append(found[0].load()())
    return exporters


def exporting() -> bool:
    """True when spans leave the process; spans only an exporter would read are skipped
    otherwise."""
    return _exporting


def shutdown() -> None:
    """Send the spans still queued (at a service's stop)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(5000)


def set_consumer_group(group: str) -> None:
    """The consumer group of the calling thread's consumer, for its process spans."""
    _group.set(group)


@functools.cache
def _tracer() -> trace.Tracer:
    return trace.get_tracer("shared")


def current_traceparent() -> tuple[str | None, str | None]:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def current_cause() -> Cause | None:
    return _cause.get()


@contextmanager
def span(
    name: str,
    *,
    cause: Cause,
    traceparent: str | None = None,
    tracestate: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span]:
    """Continue the trace in `traceparent` (or start one) and set the causation context."""
    tracer = _tracer()
    token = _cause.set(cause)
    try:
        with tracer.start_as_current_span(
            name, context=_parent(traceparent, tracestate), kind=kind, attributes=attributes
        ) as current:
            yield current
    finally:
        _cause.reset(token)


def _parent(traceparent: str | None, tracestate: str | None) -> Context | None:
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent, "tracestate": tracestate or ""})


def _process_attributes(event: Envelope) -> dict[str, str | int]:
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
def consuming(event: Envelope) -> Iterator[None]:
    """The context in which a consumed event is handled: its children are caused by it."""
    handled = _handling.set(event)
    try:
        with span(
            f"process {event.topic}",
            cause=Cause(event.id, event.correlation_id, continued=bool(event.traceparent)),
            traceparent=event.traceparent,
            tracestate=event.tracestate,
            kind=SpanKind.CONSUMER,
            attributes=_process_attributes(event) if _exporting else None,
        ):
            yield
    finally:
        _handling.reset(handled)


@contextmanager
def consuming_batch(events: Sequence[Envelope]) -> Iterator[None]:
    """The context in which a batch handler handles `events`: when spans are exported,
    one `process` span per event, each the parent of what the handler emits for it
    (`new_event(caused_by=...)`)."""
    if not _exporting:
        yield
        return
    tracer = _tracer()
    spans = {
        event.id: tracer.start_span(
            f"process {event.topic}",
            context=_parent(event.traceparent, event.tracestate),
            kind=SpanKind.CONSUMER,
            attributes=_process_attributes(event),
        )
        for event in events
    }
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


class Publishing:
    """The `publish` spans of one batch of records the relay sends: each record's
    `traceparent` becomes its span's, so a consumer's `process` span is its child."""

    def __init__(self, records: list[Record]) -> None:
        tracer = _tracer()
        self.spans: list[Span] = []
        self.records: list[Record] = []
        for topic, key, value, headers in records:
            text = {
                name: value.decode() if isinstance(value, bytes) else value
                for name, value in headers
                if value is not None
            }
            publish = tracer.start_span(
                f"publish {topic}",
                context=_parent(text.get("traceparent"), text.get("tracestate")),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": topic,
                    "messaging.kafka.message.key": key,
                    "messaging.message.id": text.get("ce_id", ""),
                    "cloudevents.event_id": text.get("ce_id", ""),
                    "cloudevents.event_type": text.get("ce_type", ""),
                },
            )
            carrier: dict[str, str] = {}
            _propagator.inject(carrier, context=trace.set_span_in_context(publish))
            text.update(carrier)
            self.spans.append(publish)
            self.records.append((topic, key, value, [*text.items()]))

    def end(self, placed: Sequence[Any]) -> None:
        """End each span with where the broker put its record, or its error."""
        for publish, where in zip(self.spans, placed, strict=True):
            if where.error is None:
                publish.set_attribute("messaging.destination.partition.id", str(where.partition))
                publish.set_attribute("messaging.kafka.offset", where.offset)
            else:
                publish.set_status(Status(StatusCode.ERROR, str(where.error)))
            publish.end()


def handling() -> Envelope | None:
    """The consumed event being handled in this context, if any (for logs)."""
    return _handling.get()


def _child_of(event: Envelope) -> tuple[str | None, str | None]:
    """The `traceparent` of a process span of `event`, a child of the span that sent it:
    the batch's open span when there is one."""
    process = (_batch.get() or {}).get(event.id)
    if process is None:
        process = _tracer().start_span(
            f"process {event.topic}",
            context=_parent(event.traceparent, event.tracestate),
            kind=SpanKind.CONSUMER,
        )
        process.end()
    out: dict[str, str] = {}
    _propagator.inject(out, context=trace.set_span_in_context(process))
    return out.get("traceparent"), out.get("tracestate")


@contextmanager
def join_trace(traceparent: str | None, name: str = "join") -> Iterator[None]:
    """Continue the trace in `traceparent` unless the current cause brought its own: e.g. a
    cancel request without a `traceparent` joins the trace of the order it cancels."""
    cause = _cause.get()
    if not traceparent or cause is None or cause.continued:
        yield
        return
    with span(
        name, cause=Cause(cause.id, cause.correlation_id, continued=True), traceparent=traceparent
    ):
        yield


def new_event(
    type_: str,
    key: str,
    payload: BaseModel,
    *,
    source: str,
    correlation_id: str | None = None,
    caused_by: Envelope | None = None,
) -> Envelope:
    """An event caused by whatever is being handled now, in the current trace; or, with
    `caused_by`, by that consumed event, in its trace (a handler of a batch of events
    names each one as it emits, since they do not share one context).

    The correlation id is the explicit one, else the cause's, else the event's own id."""
    if caused_by is not None:
        cause: Cause | None = Cause(caused_by.id, caused_by.correlation_id)
        traceparent, tracestate = _child_of(caused_by)
    else:
        cause = _cause.get()
        traceparent, tracestate = current_traceparent()
    event_id = new_id()
    return Envelope(
        type=type_,
        source=source,
        key=key,
        data=dump_json(payload),
        id=event_id,
        correlation_id=correlation_id or (cause.correlation_id if cause else None) or event_id,
        causation_id=cause.id if cause else None,
        traceparent=traceparent,
        tracestate=tracestate,
    )
