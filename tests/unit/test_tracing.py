"""Trace and causation context: what `new_event` takes from whatever is being handled."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from shared.messaging import exporters, tracing
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.tracing import Cause

pytestmark = pytest.mark.unit

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
STORED_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
STORED = f"00-{STORED_TRACE_ID}-b7ad6b7169203331-01"


class Ping(BaseModel):
    n: int = 1


@pytest.fixture(autouse=True)
def _tracer() -> None:
    exporters.configure("test")


def event() -> Envelope:
    return tracing.new_event("ping", "key-1", Ping(), source="/tests")


def parts(traceparent: str | None) -> tuple[str, str, str, str]:
    assert traceparent is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    return version, trace_id, span_id, flags


def test_an_event_outside_any_context_correlates_to_itself_and_has_no_cause() -> None:
    emitted = event()

    assert emitted.correlation_id == emitted.id
    assert emitted.causation_id is None
    assert emitted.traceparent is None
    assert (emitted.type, emitted.key, emitted.source) == ("ping", "key-1", "/tests")
    assert emitted.data == dump_json(Ping())


def test_an_explicit_correlation_id_wins_over_the_cause() -> None:
    with tracing.span("request", cause=Cause("request-1", "saga-1")):
        emitted = tracing.new_event("ping", "k", Ping(), source="/tests", correlation_id="o-1")

    assert (emitted.correlation_id, emitted.causation_id) == ("o-1", "request-1")


def test_an_event_in_a_span_continues_the_callers_trace_with_a_new_span() -> None:
    with tracing.span("request", cause=Cause("request-1"), traceparent=TRACEPARENT):
        emitted = event()

    version, trace_id, span_id, flags = parts(emitted.traceparent)
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id not in (PARENT_SPAN, "0" * 16)
    assert emitted.causation_id == "request-1"
    assert emitted.correlation_id == emitted.id, "a cause without correlation id brings none"


def test_an_event_in_a_span_takes_the_causes_correlation_id() -> None:
    with tracing.span("request", cause=Cause("request-1", "saga-1"), traceparent=TRACEPARENT):
        emitted = event()

    assert (emitted.correlation_id, emitted.causation_id) == ("saga-1", "request-1")


def test_a_span_without_a_traceparent_starts_a_new_trace() -> None:
    with tracing.span("request", cause=Cause("request-1")):
        first = event()
    with tracing.span("request", cause=Cause("request-2")):
        second = event()

    assert parts(first.traceparent)[1] != parts(second.traceparent)[1]
    assert TRACE_ID not in (parts(first.traceparent)[1], parts(second.traceparent)[1])


def test_the_cause_is_restored_when_the_span_ends_even_by_an_error() -> None:
    with tracing.span("outer", cause=Cause("outer")):
        with pytest.raises(RuntimeError), tracing.span("inner", cause=Cause("inner")):
            assert event().causation_id == "inner"
            raise RuntimeError
        assert event().causation_id == "outer"
    assert event().causation_id is None


def test_consuming_an_event_makes_it_the_cause_in_its_trace() -> None:
    consumed = Envelope(
        type="order-created",
        source="/services/order",
        key="order-1",
        data=b"{}",
        correlation_id="order-1",
        traceparent=TRACEPARENT,
    )

    with tracing.consuming(consumed):
        emitted = event()
        with tracing.join_trace(STORED):
            joined = event()

    assert (emitted.causation_id, emitted.correlation_id) == (consumed.id, "order-1")
    assert parts(emitted.traceparent)[1] == TRACE_ID
    assert parts(joined.traceparent)[1] == TRACE_ID, "its own trace continued, none joined"


# join_trace


def test_join_trace_joins_the_stored_trace_when_the_cause_brought_none() -> None:
    with tracing.span("cancel", cause=Cause("request-1", "saga-1")):
        with tracing.join_trace(STORED):
            emitted = event()
        after = event()

    _, trace_id, span_id, _ = parts(emitted.traceparent)
    assert trace_id == STORED_TRACE_ID
    assert span_id != STORED.split("-")[2]
    assert (emitted.causation_id, emitted.correlation_id) == ("request-1", "saga-1")
    assert parts(after.traceparent)[1] != STORED_TRACE_ID, "the join ends with its block"


def test_join_trace_keeps_the_trace_the_cause_brought() -> None:
    with (
        tracing.span("cancel", cause=Cause("request-1", continued=True), traceparent=TRACEPARENT),
        tracing.join_trace(STORED),
    ):
        emitted = event()

    assert parts(emitted.traceparent)[1] == TRACE_ID
    assert emitted.causation_id == "request-1"


def test_join_trace_outside_any_cause_changes_nothing() -> None:
    with tracing.join_trace(STORED):
        emitted = event()

    assert emitted.traceparent is None
    assert emitted.causation_id is None


def test_join_trace_without_a_stored_trace_changes_nothing() -> None:
    with tracing.span("cancel", cause=Cause("request-1")):
        own = parts(event().traceparent)[1]
        with tracing.join_trace(None):
            emitted = event()

    assert parts(emitted.traceparent)[1] == own


def test_an_event_caused_by_a_consumed_event_continues_its_trace_as_its_child() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    consumed = Envelope(
        type="order-created",
        source="/services/order",
        key="o-1",
        data=b"{}",
        correlation_id="o-1",
        traceparent=parent,
    )

    event = tracing.new_event(
        "stock-reserved", "o-1", Ping(), source="/services/inventory", caused_by=consumed
    )

    assert event.causation_id == consumed.id
    assert event.correlation_id == "o-1"
    assert event.traceparent is not None
    _, trace_id, span_id, _ = event.traceparent.split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_id != "00f067aa0ba902b7"
