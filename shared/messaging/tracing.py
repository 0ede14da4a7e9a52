"""Causation and trace context: what is being handled now (an HTTP request or a consumed
event), the W3C `traceparent` it continues, and the ids CloudEvents carries
(`ce_causationid`, `ce_correlationid`).

The HTTP middleware and the consumer loop open a span and set the cause; `new_event`
reads both, so business code never passes trace ids around by hand. The messaging spans
themselves are shared.messaging.spans; where spans go, shared.messaging.exporters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel

from shared.messaging.envelope import Envelope, dump_json, new_id
from shared.messaging.exporters import exporting
from shared.messaging.spans import (
    child_of,
    process_attributes,
    propagator,
    remote_parent,
    tracer,
)


@dataclass(frozen=True, slots=True)
class Cause:
    """What is being handled right now: an HTTP request or a consumed event."""

    id: str
    correlation_id: str | None = None
    continued: bool = False
    """True when the caller sent a trace to continue (a `traceparent`)."""


_cause: ContextVar[Cause | None] = ContextVar("cause", default=None)
_handling: ContextVar[Envelope | None] = ContextVar("handling", default=None)


def current_traceparent() -> tuple[str | None, str | None]:
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


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
    token = _cause.set(cause)
    try:
        with tracer().start_as_current_span(
            name, context=remote_parent(traceparent, tracestate), kind=kind, attributes=attributes
        ) as current:
            yield current
    finally:
        _cause.reset(token)


@contextmanager
def consuming(event: Envelope) -> Iterator[None]:
    """The context in which a consumed event is handled: its children are caused by it.
    Its `process` span is sampled as the event's `traceparent` says (a parent-based
    sampler), and described only when it will be exported."""
    handled = _handling.set(event)
    try:
        with span(
            f"process {event.topic}",
            cause=Cause(event.id, event.correlation_id, continued=bool(event.traceparent)),
            traceparent=event.traceparent,
            tracestate=event.tracestate,
            kind=SpanKind.CONSUMER,
        ) as current:
            if exporting() and current.is_recording():  # sampled: it will be exported
                current.set_attributes(process_attributes(event))
            yield
    finally:
        _handling.reset(handled)


def handling() -> Envelope | None:
    """The consumed event being handled in this context, if any (for logs)."""
    return _handling.get()


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
        traceparent, tracestate = child_of(caused_by)
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
