"""Trace and causation context: W3C `traceparent` via OpenTelemetry, plus the ids that
CloudEvents carries (`ce_causationid`, `ce_correlationid`).

The HTTP middleware and the consumer loop open a span and set the causation context;
`new_event` reads both, so business code never passes trace ids around by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel

from shared.messaging.envelope import Envelope, dump_json, new_id

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


def configure(service_name: str) -> None:
    """Install an SDK tracer provider once per process, so spans get real ids.

    Exporters are left to the deployment (e.g. opentelemetry-instrument)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(
            TracerProvider(resource=Resource.create({"service.name": service_name}))
        )


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
) -> Iterator[None]:
    """Continue the trace in `traceparent` (or start one) and set the causation context."""
    carrier = {"traceparent": traceparent or "", "tracestate": tracestate or ""}
    parent = _propagator.extract(carrier) if traceparent else None
    tracer = _tracer()
    token = _cause.set(cause)
    try:
        with tracer.start_as_current_span(name, context=parent, kind=kind):
            yield
    finally:
        _cause.reset(token)


@contextmanager
def consuming(event: Envelope) -> Iterator[None]:
    """The context in which a consumed event is handled: its children are caused by it."""
    handled = _handling.set(event)
    try:
        with span(
            f"{event.type} process",
            cause=Cause(event.id, event.correlation_id, continued=bool(event.traceparent)),
            traceparent=event.traceparent,
            tracestate=event.tracestate,
            kind=SpanKind.CONSUMER,
        ):
            yield
    finally:
        _handling.reset(handled)


def handling() -> Envelope | None:
    """The consumed event being handled in this context, if any (for logs)."""
    return _handling.get()


def _child_of(event: Envelope) -> tuple[str | None, str | None]:
    """The `traceparent` of a process span of `event`, a child of the span that sent it."""
    carrier = {"traceparent": event.traceparent or "", "tracestate": event.tracestate or ""}
    parent = _propagator.extract(carrier) if event.traceparent else None
    span = _tracer().start_span(f"{event.type} process", context=parent, kind=SpanKind.CONSUMER)
    span.end()
    out: dict[str, str] = {}
    _propagator.inject(out, context=trace.set_span_in_context(span))
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
