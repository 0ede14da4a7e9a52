"""Where spans go: the process's tracer provider and the exporters `OTEL_TRACES_EXPORTER`
names (none by default: spans then stay in the process)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.util._importlib_metadata import entry_points

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
