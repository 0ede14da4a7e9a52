"""Sampled span export: the sampler the standard variables choose (and the values they may
not hold), a caller's or an event's sampled flag followed, and a `traceparent` on every
event whether its trace is sampled or not."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

import services.__main__ as serve_by_name
from shared.messaging import exporters, tracing
from shared.messaging import spans as messaging
from shared.messaging.envelope import Envelope
from shared.runtime import ids
from shared.runtime.middleware import TELEMETRY, ServiceMiddleware
from tools.local import stack as local_stack
from tools.local.service import ServiceProcess
from tools.local.stack import Stack
from tools.local.zipkin import LocalZipkin

pytestmark = pytest.mark.unit

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
UNSAMPLED = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
W3C = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

HOSTILE = [
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER='jaeger_remote'"),
    ({"OTEL_TRACES_SAMPLER": "always_on\x00"}, "OTEL_TRACES_SAMPLER="),
    ({"OTEL_TRACES_SAMPLER": "x" * 10_000}, "OTEL_TRACES_SAMPLER='xxx"),
    *(
        ({"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": arg}, "SAMPLER_ARG")
        for sampler in ("parentbased_traceidratio", "traceidratio")
        for arg in ("abc", "-1", "2", "NaN", "nan", "inf", "-0.1", "1.0001", "0.1\x00", "1e400")
    ),
]


def ratio_env(ratio: str) -> dict[str, str]:
    return {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio}


class Ping(BaseModel):
    n: int = 1


@pytest.mark.parametrize(("environ", "named"), HOSTILE)
def test_a_sampler_or_ratio_it_cannot_use_is_refused_naming_the_variable(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as refused:
        exporters.sampler(environ)
    assert len(str(refused.value)) < 300, "the error does not repeat a long value whole"
    with pytest.raises(ValueError, match=re.escape(named)):
        exporters.tracer_provider("test", environ)


@pytest.mark.parametrize(("environ", "named"), HOSTILE[:1] + HOSTILE[5:6])
def test_python_m_services_refuses_a_bad_sampler_before_it_serves(
    environ: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    monkeypatch.setattr(serve_by_name, "serve", lambda app, **_: served.append(app))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SystemExit, match=re.escape(named)) as refused:
        serve_by_name.main(["inventory"])

    assert str(refused.value).startswith("python -m services inventory: OTEL_TRACES_SAMPLER")
    assert served == []


def test_the_stack_refuses_a_bad_sampler_before_it_starts_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(LocalZipkin, "start", lambda *_: started.append("zipkin"))
    monkeypatch.setattr(ServiceProcess, "start", lambda self: started.append(self.id))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "NaN")
    stack = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", traces=True)

    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG='NaN'"):
        stack.up()

    assert started == []


@pytest.mark.parametrize(
    ("environ", "ratio"),
    [
        (ratio_env("0.1"), 0.1),
        (ratio_env(" 0.25 "), 0.25),
        (ratio_env("0"), 0.0),
        (ratio_env("1"), 1.0),
        (ratio_env(""), 1.0),
        ({"OTEL_TRACES_SAMPLER": "PARENTBASED_TRACEIDRATIO"}, 1.0),
    ],
)
def test_a_ratio_sampler_keeps_that_share_of_new_traces_and_follows_a_parent(
    environ: dict[str, str], ratio: float
) -> None:
    chosen = exporters.sampler(environ)

    assert isinstance(chosen, ParentBased)
    assert isinstance(chosen._root, TraceIdRatioBased)
    assert chosen._root.rate == ratio


def test_without_a_sampler_every_new_trace_is_kept_and_an_argument_is_ignored() -> None:
    described = "ParentBased{root:AlwaysOnSampler"
    assert exporters.sampler({}).get_description().startswith(described)
    assert exporters.sampler({"OTEL_TRACES_SAMPLER": ""}).get_description().startswith(described)
    chosen = exporters.sampler(
        {"OTEL_TRACES_SAMPLER": "always_off", "OTEL_TRACES_SAMPLER_ARG": "x"}
    )
    assert chosen.get_description() == "AlwaysOffSampler"


def test_spans_are_exported_by_a_batch_processor_off_the_request_path() -> None:
    provider = exporters.tracer_provider(
        "test", {"OTEL_TRACES_EXPORTER": "console,zipkin", **ratio_env("0.1")}
    )
    try:
        processors = provider._active_span_processor._span_processors
        assert len(processors) == 2
        assert all(type(p) is BatchSpanProcessor for p in processors)
        assert provider.sampler.get_description().startswith(
            "ParentBased{root:TraceIdRatioBased{0.1}"
        )
    finally:
        provider.shutdown()


def test_make_up_samples_a_tenth_unless_the_user_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)
    env = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", traces=True).services["order"].env
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert local_stack.SAMPLING == {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }

    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    chosen = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", traces=True).services["order"]
    assert "OTEL_TRACES_SAMPLER_ARG" not in chosen.env, "the user's own is passed on"
    assert chosen.environment()["OTEL_TRACES_SAMPLER_ARG"] == "1"
    assert chosen.env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"

    tests = Stack(run_dir=tmp_path, kafka="127.0.0.1:1").services["order"].env
    assert "OTEL_TRACES_SAMPLER" not in tests, "a stack without traces samples nothing"


# --- the sampled flag, followed ---------------------------------------------------------


@pytest.fixture
def sampling(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], InMemorySpanExporter]]:
    """`sampling(ratio)`: the library's spans come from a tracer that samples as `make up`
    does at that ratio, and those it keeps are exported to memory."""
    providers: list[TracerProvider] = []

    def install(ratio: str) -> InMemorySpanExporter:
        provider = TracerProvider(sampler=exporters.sampler(ratio_env(ratio)))
        exported = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exported))
        providers.append(provider)
        tracer = provider.get_tracer("shared")
        monkeypatch.setattr(messaging, "tracer", lambda: tracer)
        monkeypatch.setattr(tracing, "tracer", lambda: tracer)
        monkeypatch.setattr(exporters, "_exporting", True)
        return exported

    yield install
    for provider in providers:
        provider.shutdown()


def sampled(traceparent: str | None) -> bool:
    """Whether a well-formed `traceparent` says sampled (the low bit of its flags; the SDK
    also sets 0x02, W3C's random trace id flag, on a trace it starts)."""
    assert traceparent is not None
    assert W3C.fullmatch(traceparent), traceparent
    assert ids.traceparent(traceparent) == traceparent, "as well formed as a service requires"
    return bool(int(traceparent[-2:], 16) & 0x01)


def shop(emitted: list[Envelope]) -> FastAPI:
    """An app with the services' middleware whose one route emits an event."""
    app = FastAPI(telemetry=TELEMETRY)
    app.add_middleware(ServiceMiddleware)

    @app.post("/orders")
    async def place() -> dict[str, str]:
        emitted.append(tracing.new_event("order-created", "o-1", Ping(), source="/services/o"))
        return {}

    return app


def placed(
    sampling: Callable[[str], InMemorySpanExporter], ratio: str, headers: dict[str, str]
) -> tuple[InMemorySpanExporter, Any, Envelope]:
    exported, emitted = sampling(ratio), []
    with TestClient(shop(emitted)) as client:
        answer = client.post("/orders", headers=headers)
    assert answer.status_code == 200
    (event,) = emitted
    return exported, answer, event


def test_a_request_whose_caller_sampled_its_trace_is_kept_whatever_the_ratio(
    sampling: Callable[[str], InMemorySpanExporter],
) -> None:
    exported, answer, event = placed(sampling, "0", {"traceparent": SAMPLED})

    (server,) = exported.get_finished_spans()
    assert (server.name, server.kind) == ("POST /orders", SpanKind.SERVER)
    assert format(server.context.trace_id, "032x") == CALLER_TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    assert answer.headers["x-trace-id"] == CALLER_TRACE
    assert sampled(event.traceparent)
    assert event.traceparent.split("-")[2] == format(server.context.span_id, "016x")


def test_a_request_whose_caller_did_not_sample_is_not_exported_but_its_event_is_traced(
    sampling: Callable[[str], InMemorySpanExporter],
) -> None:
    exported, answer, event = placed(sampling, "1", {"traceparent": UNSAMPLED})

    assert exported.get_finished_spans() == ()
    assert answer.headers["x-trace-id"] == CALLER_TRACE
    assert event.traceparent is not None and event.traceparent.split("-")[1] == CALLER_TRACE
    assert event.traceparent.split("-")[2] != CALLER_SPAN, "a span of its own, unexported"
    assert not sampled(event.traceparent)
    assert event.causation_id == answer.headers["x-request-id"]


def test_a_request_that_starts_a_trace_is_sampled_at_the_ratio(
    sampling: Callable[[str], InMemorySpanExporter],
) -> None:
    exported, answer, dropped = placed(sampling, "0", {})
    assert exported.get_finished_spans() == ()
    assert not sampled(dropped.traceparent)
    assert dropped.traceparent is not None
    assert dropped.traceparent.split("-")[1] == answer.headers["x-trace-id"]
    assert dropped.causation_id == answer.headers["x-request-id"]

    exported, _, kept = placed(sampling, "1", {})
    assert len(exported.get_finished_spans()) == 1
    assert sampled(kept.traceparent)


def consumed(traceparent: str | None, offset: int = 7) -> Envelope:
    return Envelope(
        type="order-created", source="/services/o", key="o-1", data=b"{}", traceparent=traceparent
    ).at("orders", 2, offset)


@pytest.mark.parametrize(("ratio", "parent", "kept"), [("0", SAMPLED, 1), ("1", UNSAMPLED, 0)])
def test_a_consumer_span_follows_the_sampled_flag_of_its_events_traceparent(
    sampling: Callable[[str], InMemorySpanExporter], ratio: str, parent: str, kept: int
) -> None:
    exported = sampling(ratio)
    event = consumed(parent)

    with tracing.consuming(event):
        emitted = tracing.new_event("stock-reserved", "o-1", Ping(), source="/services/i")

    processes = exported.get_finished_spans()
    assert len(processes) == kept
    assert sampled(emitted.traceparent) is (parent == SAMPLED)
    assert emitted.traceparent is not None and emitted.traceparent.split("-")[1] == CALLER_TRACE
    assert emitted.causation_id == event.id
    if kept:
        assert processes[0].attributes is not None
        assert processes[0].attributes["messaging.kafka.offset"] == 7


def test_a_batch_exports_the_process_spans_of_its_sampled_events_only(
    sampling: Callable[[str], InMemorySpanExporter],
) -> None:
    exported = sampling("1")
    kept, dropped = consumed(SAMPLED, offset=1), consumed(UNSAMPLED, offset=2)

    with messaging.consuming_batch([kept, dropped]):
        after_kept = tracing.new_event("r", "o-1", Ping(), source="/s", caused_by=kept)
        after_dropped = tracing.new_event("r", "o-1", Ping(), source="/s", caused_by=dropped)

    (process,) = exported.get_finished_spans()
    assert process.attributes is not None and process.attributes["messaging.kafka.offset"] == 1
    assert after_kept.traceparent is not None
    assert after_kept.traceparent.split("-")[2] == format(process.context.span_id, "016x")
    assert (sampled(after_kept.traceparent), sampled(after_dropped.traceparent)) == (True, False)
    assert after_dropped.causation_id == dropped.id


def test_the_relay_gives_every_record_a_traceparent_and_exports_only_sampled_publishes(
    sampling: Callable[[str], InMemorySpanExporter],
) -> None:
    exported = sampling("1")
    records = [
        ("orders", "o-1", b"{}", [("ce_id", "e-1"), ("traceparent", SAMPLED)]),
        ("orders", "o-2", b"{}", [("ce_id", "e-2"), ("traceparent", UNSAMPLED)]),
    ]

    publishing = messaging.Publishing(records)  # type: ignore[arg-type]
    publishing.end([_Placed(), _Placed()])

    (publish,) = exported.get_finished_spans()
    assert publish.attributes is not None and publish.attributes["messaging.message.id"] == "e-1"
    sent = [dict(record[3]) for record in publishing.records]
    assert [sampled(each["traceparent"]) for each in sent] == [True, False]
    assert {each["traceparent"].split("-")[1] for each in sent} == {CALLER_TRACE}
    assert sent[1]["traceparent"] != UNSAMPLED, "the unexported publish span is its parent"
    assert [each["ce_id"] for each in sent] == ["e-1", "e-2"]


class _Placed:
    partition, offset, error = 0, 41, None
