"""One order's trace, read back from a real Zipkin server: the services export their spans
with the standard OpenTelemetry variables, and the spans of order, inventory and user form
one tree in which each `process` span is the child of the `publish` span that sent it. The
services sample as `make up` does (`parentbased_traceidratio`), at a ratio of 1 here: a
caller's unsampled trace is still not exported, and its events still carry it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import Message

from tests.conftest import free_port, service_databases
from tests.e2e.conftest import RunningStack, start_stack
from tests.helpers import eventually, read_topic
from tools.local.stack import PORTS
from tools.local.zipkin import LocalZipkin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CALLER_TRACE = "5b8efff798038103d269b633813fc60c"
CALLER_SPAN = "eee19b7ec3c1b174"
UNSAMPLED_TRACE = "8a3c60f7d188f8fa79d48a391a778fa6"
W3C = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


@pytest.fixture(scope="module")
def zipkin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZipkin]:
    server = LocalZipkin(tmp_path_factory.mktemp("zipkin"), port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def traced(
    zipkin: LocalZipkin, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """The four services, sending their spans to `zipkin`."""
    folder = tmp_path_factory.mktemp("traced")
    env = {
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": zipkin.spans_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1",  # every trace that starts here; `make up` keeps 0.1
    }
    with service_databases("sqlite", folder, list(PORTS)) as databases:
        running = start_stack(kafka_bootstrap, folder, "sqlite", databases, extra_env=env)
        try:
            yield running
        finally:
            running.client.close()
            running.stack.down()


def exported(zipkin: LocalZipkin, trace_id: str) -> list[dict[str, Any]]:
    """The spans Zipkin holds of one trace (none: 404)."""
    answer = httpx.get(f"{zipkin.url}/api/v2/trace/{trace_id}", timeout=5)
    assert answer.status_code in (200, 404), answer.text
    spans: list[dict[str, Any]] = answer.json() if answer.status_code == 200 else []
    return spans


def whole_trace(
    zipkin: LocalZipkin, trace_id: str, caller_span: str | None = None
) -> list[dict[str, Any]]:
    """The trace's spans once order, inventory and user (its last consumer) sent theirs and
    every span's parent is there too (each service sends its spans on its own schedule):
    a parent missing for good times out."""

    def complete() -> list[dict[str, Any]]:
        spans = exported(zipkin, trace_id)
        services = {s["localEndpoint"]["serviceName"] for s in spans}
        assert {"order", "inventory", "user"} <= services, services
        assert any(
            s["name"].startswith("process")
            and s.get("kind") == "CONSUMER"
            and s["localEndpoint"]["serviceName"] == "user"
            for s in spans
        )
        ids = {s["id"] for s in spans}
        missing = [s for s in spans if s.get("parentId") not in {*ids, caller_span, None}]
        assert missing == [], missing
        return spans

    return eventually(complete, timeout=30, interval=0.5, message="the trace in Zipkin")


def place_confirmed(running: RunningStack, traceparent: str | None) -> tuple[dict[str, Any], Any]:
    """A new customer's order, placed with `traceparent` (if any) and confirmed."""
    product_id = running.operator.create_product("traced gear", 900)["id"]
    running.operator.set_stock_eventually(product_id, 5)
    ada = running.client.sign_up("Ada")
    headers = {"traceparent": traceparent} if traceparent else None
    placed = ada.place_order_eventually([{"product_id": product_id, "quantity": 1}], headers)
    assert ada.wait_for_status(placed["id"])["status"] == "CONFIRMED"
    return placed, ada


def records_of(running: RunningStack, order_id: str, topic: str, count: int) -> list[Message]:
    def mine(messages: list[Message]) -> list[Message]:
        return [m for m in messages if m.key() == order_id.encode()]

    return mine(
        read_topic(
            running.stack.bootstrap,
            running.topic(topic),
            timeout=30,
            until=lambda got: len(mine(got)) >= count,
        )
    )


def test_an_orders_trace_spans_order_inventory_and_user_with_the_right_parents(
    zipkin: LocalZipkin, traced: RunningStack
) -> None:
    placed, ada = place_confirmed(traced, f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    chain = {hop["type"]: hop for hop in ada.order_events(placed["id"])}

    spans = whole_trace(zipkin, CALLER_TRACE, CALLER_SPAN)
    by_id = {s["id"]: s for s in spans}
    assert {s["traceId"] for s in spans} == {CALLER_TRACE}
    orphans = [s for s in spans if s.get("parentId") not in by_id and s["parentId"] != CALLER_SPAN]
    assert orphans == []

    def one(service: str, kind: str, name: str, parent: dict[str, Any] | None) -> dict[str, Any]:
        found = [
            s
            for s in spans
            if s["localEndpoint"]["serviceName"] == service
            and s.get("kind") == kind
            and s["name"] == name
            and s.get("parentId") == (parent["id"] if parent else CALLER_SPAN)
        ]
        assert len(found) == 1, (service, kind, name, parent and parent["name"], spans)
        return found[0]

    orders, stock = traced.topic("orders"), traced.topic("stock")
    request = one("order", "SERVER", "post /orders", None)
    created = one("order", "PRODUCER", f"publish {orders}", request)
    reserving = one("inventory", "CONSUMER", f"process {orders}", created)
    reserved = one("inventory", "PRODUCER", f"publish {stock}", reserving)
    confirming = one("order", "CONSUMER", f"process {stock}", reserved)
    confirmed = one("order", "PRODUCER", f"publish {orders}", confirming)
    one("user", "CONSUMER", f"process {orders}", confirmed)

    assert request["tags"]["http.route"] == "/orders"
    assert request["tags"]["http.response.status_code"] == "202"
    hop = chain["order-created"]
    assert (
        reserving["tags"]
        | {
            "messaging.system": "kafka",
            "messaging.destination.name": orders,
            "messaging.destination.partition.id": str(hop["partition"]),
            "messaging.kafka.offset": str(hop["offset"]),
            "messaging.message.id": hop["id"],
            "messaging.consumer.group.name": f"{traced.topic_prefix}inventory",
            "cloudevents.event_type": "order-created",
        }
        == reserving["tags"]
    )
    assert created["tags"]["messaging.kafka.offset"] == str(hop["offset"])


def test_an_unsampled_callers_order_exports_no_span_but_every_event_carries_its_trace(
    zipkin: LocalZipkin, traced: RunningStack
) -> None:
    unsampled, _ = place_confirmed(traced, f"00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00")
    order_id = unsampled["id"]
    records = [
        *records_of(traced, order_id, "orders", 2),  # order-created, order-confirmed
        *records_of(traced, order_id, "stock", 1),  # stock-reserved
    ]
    headers = [{k: (v or b"").decode() for k, v in r.headers() or []} for r in records]
    assert {h["ce_type"] for h in headers} >= {
        "order-created",
        "stock-reserved",
        "order-confirmed",
    }
    ids = {h["ce_id"] for h in headers}
    for each in headers:
        traceparent = each["traceparent"]
        assert W3C.fullmatch(traceparent), traceparent
        _, trace_id, span_id, flags = traceparent.split("-")
        assert trace_id == UNSAMPLED_TRACE, each["ce_type"]
        assert not int(flags, 16) & 0x01, f"{each['ce_type']} says sampled: {traceparent}"
        assert span_id != CALLER_SPAN
        assert each["ce_correlationid"] == order_id
        if each["ce_type"] != "order-created":
            assert each["ce_causationid"] in ids, each["ce_type"]

    # a later order whose trace starts in the stack is sampled (ratio 1) and exported whole;
    # the services' exporters send their spans in the order they ended, so had the first
    # order's spans been exported, Zipkin would hold them by now
    sampled, _ = place_confirmed(traced, None)
    sampled_trace = records_of(traced, sampled["id"], "orders", 1)[0]
    trace_id = dict(sampled_trace.headers() or [])["traceparent"].decode().split("-")[1]
    assert whole_trace(zipkin, trace_id)
    assert exported(zipkin, UNSAMPLED_TRACE) == []
