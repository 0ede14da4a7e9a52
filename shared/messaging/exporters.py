"""Where spans go: the process's tracer provider, the sampler `OTEL_TRACES_SAMPLER` names
and the exporters `OTEL_TRACES_EXPORTER` names (none by default: spans then stay in the
process). Sampling decides which traces are exported; every span, sampled or not, has real
ids, so every event still carries a well-formed `traceparent` (flags `00` when unsampled)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.util._importlib_metadata import EntryPoint, entry_points

_exporting = False

SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
"""The samplers `OTEL_TRACES_SAMPLER` may name that take no argument."""
RATIO_SAMPLERS = {
    "traceidratio": TraceIdRatioBased,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}
"""The samplers that keep a ratio of the traces, given by `OTEL_TRACES_SAMPLER_ARG`."""
DEFAULT_SAMPLER = "parentbased_always_on"
"""OpenTelemetry's default, when `OTEL_TRACES_SAMPLER` is unset."""
_SHOWN = 40
"""How much of a refused value an error repeats."""

# What OTEL_TRACES_EXPORTER may name, beside any installed exporter's entry point.
_ALIASES = {"zipkin": "zipkin_json"}
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def configure(service_name: str, environ: Mapping[str, str] = os.environ) -> None:
    """Install an SDK tracer provider once per process (`tracer_provider`), so spans get
    real ids, with its sampler and exporters."""
    global _exporting
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = tracer_provider(service_name, environ)
    _exporting = any(name != "none" for name in _exporter_names(environ))
    trace.set_tracer_provider(provider)


def tracer_provider(service_name: str, environ: Mapping[str, str] = os.environ) -> TracerProvider:
    """An SDK tracer provider sampling as `OTEL_TRACES_SAMPLER` says (`sampler`) and sending
    the spans it keeps to the exporters that `OTEL_TRACES_EXPORTER` names (`otlp`,
    `zipkin`, `console`; unset or `none`: spans stay in the process), each through a
    BatchSpanProcessor, whose thread does the exporting off the request path. Each
    exporter reads its own standard variables (`OTEL_EXPORTER_OTLP_*`,
    `OTEL_EXPORTER_ZIPKIN_*`, `OTEL_BSP_*` for the batching); `OTEL_SERVICE_NAME` wins
    over the service's name. Raises ValueError for a sampler or an exporter it cannot
    make."""
    chosen = sampler(environ)
    exporters = span_exporters(environ)
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(sampler=chosen, resource=Resource.create({"service.name": name}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def sampler(environ: Mapping[str, str] = os.environ) -> Sampler:
    """The sampler `OTEL_TRACES_SAMPLER` names (OpenTelemetry's names; unset or empty:
    `parentbased_always_on`). The ratio samplers take `OTEL_TRACES_SAMPLER_ARG`, a number
    from 0 to 1 (unset or empty: 1); the others ignore it. A `parentbased_*` sampler
    follows the parent's sampled flag (a caller's `traceparent`, an event's) and decides
    only for a trace that starts here. Anything else is a ValueError that names the
    variable, rather than the SDK's warning and silent fallback to sampling everything."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if name in SAMPLERS:
        return SAMPLERS[name]
    if name not in RATIO_SAMPLERS:
        known = ", ".join([*SAMPLERS, *RATIO_SAMPLERS])
        raise ValueError(f"OTEL_TRACES_SAMPLER={name[:_SHOWN]!r} is not a sampler; one of {known}")
    return RATIO_SAMPLERS[name](sampling_ratio(environ.get("OTEL_TRACES_SAMPLER_ARG")))


def sampling_ratio(text: str | None) -> float:
    """`OTEL_TRACES_SAMPLER_ARG` for a ratio sampler: a finite number from 0 to 1."""
    if text is None or not text.strip():
        return 1.0
    try:
        ratio = float(text)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:  # NaN, infinities and anything out of range
        raise ValueError(
            f"OTEL_TRACES_SAMPLER_ARG={text[:_SHOWN]!r} is not a sampling ratio:"
            " a number from 0 to 1, such as 0.1"
        )
    return ratio


def check(environ: Mapping[str, str] = os.environ) -> None:
    """Raise ValueError, naming the variable, unless the sampler and every exporter the
    environment names can be made: for a process to refuse a bad value before it starts."""
    sampler(environ)
    _exporter_entries(environ)


def span_exporters(environ: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (comma-separated), built from their
    entry points. `otlp` means OTLP over HTTP unless `OTEL_EXPORTER_OTLP_PROTOCOL` (or its
    `_TRACES_` form) says `grpc`."""
    return [entry.load()() for entry in _exporter_entries(environ)]


def _exporter_entries(environ: Mapping[str, str]) -> list[EntryPoint]:
    entries: list[EntryPoint] = []
    for name in _exporter_names(environ):
        if name == "none":
            continue
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol.strip() not in _OTLP_BY_PROTOCOL:
                raise ValueError(f"unsupported OTLP protocol {protocol[:_SHOWN]!r}")
            name = _OTLP_BY_PROTOCOL[protocol.strip()]
        entry = _ALIASES.get(name, name)
        found = list(entry_points(group="opentelemetry_traces_exporter", name=entry))
        if not found:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {name[:_SHOWN]!r}, but no such exporter is installed"
            )
        entries.append(found[0])
    return entries


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    return [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]


def exporting() -> bool:
    """True when spans leave the process; spans only an exporter would read are skipped
    otherwise."""
    return _exporting


def shutdown() -> None:
    """Send the spans still queued (at a service's stop)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(5000)
