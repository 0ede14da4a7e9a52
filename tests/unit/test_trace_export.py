"""Exported spans: which exporter the standard variables choose, and the `publish`,
`process` and HTTP server spans as messaging and HTTP conventions describe them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from shared.messaging import exporters, tracing
from shared.messaging import spans as messaging
from shared.messaging.envelope import Envelope
from shared.runtime.middleware import TELEMETRY, ServiceMiddleware
from tools.local.stack import Stack

pytestmark = pytest.mark.unit

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
EVERY_TRACE = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}


class Ping(BaseModel):
    n: int = 1


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans are exported, to memory, every trace sampled (a ratio of 1, set here rather
    than left to the environment the tests run in)."""
    provider = exporters.tracer_provider("test", EVERY_TRACE)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shared")
    monkeypatch.setattr(messaging, "tracer", lambda: tracer)
    monkeypatch.setattr(tracing, "tracer", lambda: tracer)
    monkeypatch.setattr(exporters, "_exporting", True)
    yield exporter
    provider.shutdown()


def consumed(topic: str = "orders", offset: int = 7, traceparent: str = TRACEPARENT) -> Envelope:
    event = tracing.new_event("order-created", "o-1", Ping(), source="/services/order")
    return Envelope(
        type=event.type,
        source=event.source,
        key=event.key,
        data=event.data,
        traceparent=traceparent,
    ).at(topic, 2, offset)


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    context = span.get_span_context()
    parent = span.parent
    return (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
        format(parent.span_id, "016x") if parent else None,
    )


def test_no_variable_means_no_exporter() -> None:
    assert exporters.span_exporters({}) == []
    assert exporters.span_exporters({"OTEL_TRACES_EXPORTER": "none"}) == []


def test_zipkin_reads_its_endpoint_from_the_standard_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://127.0.0.1:9/api/v2/spans")

    (exporter,) = exporters.span_exporters({"OTEL_TRACES_EXPORTER": "zipkin"})

    assert isinstance(exporter, ZipkinExporter)
    assert exporter.endpoint == "http://127.0.0.1:9/api/v2/spans"


def test_otlp_means_http_unless_grpc_is_asked_for() -> None:
    built = exporters.span_exporters({"OTEL_TRACES_EXPORTER": "otlp, console"})

    assert [type(e) for e in built] == [OTLPSpanExporter, ConsoleSpanExporter]
    with pytest.raises(ValueError, match="otlp_proto_grpc"):
        exporters.span_exporters(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        exporters.span_exporters(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "carrier"}
        )


def test_an_unknown_exporter_is_an_error_not_silence() -> None:
    with pytest.raises(ValueError, match="'jaeger-thrift'"):
        exporters.span_exporters({"OTEL_TRACES_EXPORTER": "jaeger-thrift"})


def test_a_process_span_is_the_child_of_the_events_traceparent_with_messaging_attributes(
    spans: InMemorySpanExporter,
) -> None:
    messaging.set_consumer_group("inventory")
    event = consumed()

    with tracing.consuming(event):
        pass

    (process,) = spans.get_finished_spans()
    assert process.name == "process orders"
    assert process.kind is SpanKind.CONSUMER
    assert hex_ids(process)[0] == TRACE_ID
    assert hex_ids(process)[2] == "00f067aa0ba902b7"
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 7,
        "messaging.kafka.message.key": "o-1",
        "messaging.message.id": event.id,
        "messaging.consumer.group.name": "inventory",
        "cloudevents.event_id": event.id,
        "cloudevents.event_type": "order-created",
        "cloudevents.event_source": "/services/order",
    }


def test_a_batch_gets_one_process_span_per_event_each_the_parent_of_what_it_caused(
    spans: InMemorySpanExporter,
) -> None:
    first, second = consumed(offset=1), consumed(offset=2)

    with messaging.consuming_batch([first, second]):
        emitted = tracing.new_event("stock-reserved", "o-1", Ping(), source="/s", caused_by=second)

    processes = spans.get_finished_spans()
    assert [p.attributes["messaging.kafka.offset"] for p in processes] == [1, 2]  # type: ignore[index]
    assert emitted.traceparent is not None
    _, span_id, _ = hex_ids(processes[1])
    assert emitted.traceparent.split("-")[2] == span_id
    assert emitted.causation_id == second.id


def test_a_failing_batch_marks_every_process_span_as_an_error(
    spans: InMemorySpanExporter,
) -> None:
    with pytest.raises(RuntimeError), messaging.consuming_batch([consumed(), consumed(offset=8)]):
        raise RuntimeError("database gone")

    statuses = [p.status.status_code for p in spans.get_finished_spans()]
    assert statuses == [StatusCode.ERROR, StatusCode.ERROR]


@dataclass
class Placed:
    partition: int = 0
    offset: int = 0
    error: str | None = None


def test_publish_spans_replace_each_records_traceparent_with_their_own(
    spans: InMemorySpanExporter,
) -> None:
    headers = [("ce_id", "e-1"), ("ce_type", "order-created"), ("traceparent", TRACEPARENT)]
    records = [("orders", "o-1", b"{}", headers), ("orders", "o-2", b"{}", [("ce_id", "e-2")])]

    publishing = messaging.Publishing(records)  # type: ignore[arg-type]
    publishing.end([Placed(1, 41), Placed(error="too large")])

    first, second = spans.get_finished_spans()
    assert (first.name, first.kind) == ("publish orders", SpanKind.PRODUCER)
    trace_id, span_id, parent = hex_ids(first)
    assert (trace_id, parent) == (TRACE_ID, "00f067aa0ba902b7")
    sent = dict(publishing.records[0][3])
    assert sent["traceparent"] == f"00-{TRACE_ID}-{span_id}-01"
    assert sent["ce_id"] == "e-1"
    assert first.attributes is not None
    assert first.attributes["messaging.destination.partition.id"] == "1"
    assert first.attributes["messaging.kafka.offset"] == 41
    assert first.attributes["messaging.message.id"] == "e-1"
    assert second.parent is None  # a record without a trace starts one
    assert second.status.status_code is StatusCode.ERROR


def test_the_http_server_span_is_named_by_route_template_and_status(
    spans: InMemorySpanExporter,
) -> None:
    app = FastAPI(telemetry=TELEMETRY)
    app.add_middleware(ServiceMiddleware)

    @app.get("/orders/{order_id}")
    def get_order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/orders/o-42", headers={"traceparent": TRACEPARENT})
        client.get("/boom")
        client.get("/nowhere")

    ok, failed, missing = spans.get_finished_spans()
    assert answer.headers["x-trace-id"] == TRACE_ID
    assert (ok.name, ok.kind) == ("GET /orders/{order_id}", SpanKind.SERVER)
    assert ok.attributes is not None
    assert ok.attributes["http.route"] == "/orders/{order_id}"
    assert ok.attributes["url.path"] == "/orders/o-42"
    assert ok.attributes["http.response.status_code"] == 200
    assert hex_ids(ok)[2] == "00f067aa0ba902b7"
    assert failed.status.status_code is StatusCode.ERROR
    assert (missing.name, missing.attributes["http.response.status_code"]) == ("GET", 404)  # type: ignore[index]


def test_the_stack_sends_spans_to_its_zipkin_unless_the_user_chose_an_exporter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    stack = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", traces=True)
    assert stack.zipkin is not None
    env = stack.services["order"].env
    assert env["OTEL_TRACES_EXPORTER"] == "zipkin"
    assert env["OTEL_EXPORTER_ZIPKIN_ENDPOINT"] == "http://127.0.0.1:9411/api/v2/spans"

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    chosen = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", traces=True)
    assert chosen.zipkin is None
    assert "OTEL_TRACES_EXPORTER" not in chosen.services["order"].env

    assert Stack(run_dir=tmp_path, kafka="127.0.0.1:1").zipkin is None
