"""One order's trace, read back from a real Zipkin server: the services export their spans
with the standard OpenTelemetry variables, and the spans of order, inventory and user form
one tree in which each `process` span is the child of the `publish` span that sent it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, service_databases
from tests.e2e.conftest import RunningStack, start_stack
from tests.helpers import eventually
from tools.local.stack import PORTS
from tools.local.zipkin import LocalZipkin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CALLER_TRACE = "5b8efff798038103d269b633813fc60c"
CALLER_SPAN = "eee19b7ec3c1b174"


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
    }
    with service_databases("sqlite", folder, list(PORTS)) as databases:
        running = start_stack(kafka_bootstrap, folder, "sqlite", databases, extra_env=env)
        try:
            yield running
        finally:
            running.client.close()
            running.stack.down()


def test_an_orders_trace_spans_order_inventory_and_user_with_the_right_parents(
    zipkin: LocalZipkin, traced: RunningStack
) -> None:
    product_id = traced.operator.create_product("traced gear", 900)["id"]
    traced.operator.set_stock_eventually(product_id, 5)
    ada = traced.client.sign_up("Ada")
    placed = ada.place_order_eventually(
        [{"product_id": product_id, "quantity": 1}],
        {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
    )
    assert ada.wait_for_status(placed["id"])["status"] == "CONFIRMED"
    chain = {hop["type"]: hop for hop in ada.order_events(placed["id"])}

    def whole_trace() -> list[dict[str, Any]]:
        answer = httpx.get(f"{zipkin.url}/api/v2/trace/{CALLER_TRACE}", timeout=5)
        spans: list[dict[str, Any]] = answer.json() if answer.status_code == 200 else []
        services = {s["localEndpoint"]["serviceName"] for s in spans}
        assert {"order", "inventory", "user"} <= services, services
        assert any(
            s["name"].startswith("process")
            and s.get("kind") == "CONSUMER"
            and s["localEndpoint"]["serviceName"] == "user"
            for s in spans
        )
        return spans

    spans = eventually(whole_trace, timeout=30, interval=0.5, message="the trace in Zipkin")
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
