"""The OTLP path compose uses (Jaeger): the standard variables build an exporter that
delivers real OTLP/HTTP protobuf to the endpoint they name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from shared.messaging import exporters
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest], list[str]]]:
    """An OTLP/HTTP trace receiver on loopback: what it was sent, and to which paths."""
    received: list[ExportTraceServiceRequest] = []
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server protocol)
            body = self.rfile.read(int(self.headers["content-length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append(request)
            paths.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received, paths
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_over_http_delivers_spans_to_the_endpoint_the_variables_name(
    receiver: tuple[str, list[ExportTraceServiceRequest], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received, paths = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    (exporter,) = exporters.span_exporters(
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "inventory"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))

    with provider.get_tracer("test").start_as_current_span(
        "process orders", kind=SpanKind.CONSUMER, attributes={"messaging.system": "kafka"}
    ):
        pass
    provider.shutdown()

    eventually(lambda: received, timeout=10, message="an OTLP export")
    assert paths == ["/v1/traces"]
    (resource_spans,) = received[0].resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "inventory"
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "process orders"
    assert {a.key: a.value.string_value for a in span.attributes} == {"messaging.system": "kafka"}
