"""The stack's /metrics under a burst: orders held back from inventory show as lag on the
partitions of `orders`, which falls back to 0 once inventory applies them; the order
service's outbox drains, and poison records are counted as dead letters by type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from shared.messaging.envelope import Envelope
from shared.messaging.producer import EventProducer
from tests.conftest import free_port
from tests.e2e.conftest import RunningStack
from tests.helpers import eventually, metric_total, unique
from tools.local.stack import PORTS, Stack
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BURST = 30


@pytest.fixture(scope="module")
def held(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningStack, Path]]:
    """The stack on SQLite, its inventory consumer holding every batch while the file
    returned exists (tests.faults)."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    hold = tmp_path / "hold-inventory"
    prefix = unique("metrics") + "-"
    env = {"TOPIC_PREFIX": prefix}
    env |= {f"{name.upper()}_CONSUMER_GROUP": f"{prefix}{name}" for name in PORTS}
    stack = Stack(
        run_dir=tmp_path,
        ports={name: free_port() for name in PORTS},
        env=env,
        kafka=kafka_bootstrap,
    )
    inventory = stack.services["inventory"]
    inventory.env = {
        **inventory.env,
        "FAULT_SERVICE": "inventory",
        "FAULT_HOLD_CONSUMER_WHILE": str(hold),
    }
    inventory.app = "tests.faults:create_app"
    client = ShopClient({name: service.url for name, service in stack.services.items()})
    try:
        stack.up(timeout=120)
        operator = client.as_operator(password_file=stack.operator_password_file)
        yield RunningStack(stack, client, operator, prefix, "sqlite"), hold
    finally:
        client.close()
        stack.down()


def scrape(running: RunningStack, service: str) -> str:
    response = httpx.get(f"{running.stack.services[service].url}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def lag_of_inventory_on_orders(running: RunningStack) -> dict[str, float]:
    """Partition -> records inventory's group has not committed on `orders`."""
    text = scrape(running, "inventory")
    topic, group = running.topic("orders"), running.topic("inventory")
    lag = {
        sample.labels["partition"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "consumer_lag_records"
        and (sample.labels["topic"], sample.labels["group"]) == (topic, group)
    }
    assert sorted(lag) == ["0", "1", "2"], f"lag on every partition of orders: {lag}"
    return lag


def test_a_burst_held_from_inventory_shows_as_lag_that_falls_back_to_zero(
    held: tuple[RunningStack, Path],
) -> None:
    running, hold = held
    product = running.operator.create_product("gauge", 100)["id"]
    running.operator.set_stock_eventually(product, BURST)
    ada = running.client.sign_up("Ada")
    eventually(
        lambda: set(lag_of_inventory_on_orders(running).values()) == {0},
        message="inventory starts with no lag",
    )

    hold.touch()
    placed = [
        ada.place_order_eventually([{"product_id": product, "quantity": 1}])["id"]
        for _ in range(BURST)
    ]

    def lag_rose() -> bool:
        lag = lag_of_inventory_on_orders(running)
        assert sum(lag.values()) == BURST, lag
        return True

    eventually(lag_rose, timeout=30, message="every order-created waits for inventory")
    order = scrape(running, "order")
    created = {"service": "order", "type": "order-created"}
    assert metric_total(order, "events_published_total", **created) == BURST
    assert metric_total(order, "outbox_unsent_events", service="order") == 0
    assert metric_total(order, "outbox_publish_latency_seconds_count", service="order") >= BURST
    accepted = {"method": "POST", "route": "/orders", "status": "202"}
    assert metric_total(order, "http_requests_total", **accepted) == BURST
    assert {ada.order(order_id)["status"] for order_id in placed} == {"PENDING"}

    hold.unlink()

    eventually(
        lambda: set(lag_of_inventory_on_orders(running).values()) == {0},
        timeout=60,
        message="inventory catches up on every partition",
    )
    inventory = scrape(running, "inventory")
    assert metric_total(inventory, "events_applied_total", type="order-created") == BURST
    assert metric_total(inventory, "event_handler_duration_seconds_count", type="order-created")
    for order_id in placed:
        assert ada.wait_for_status(order_id)["status"] == "CONFIRMED"
    confirmed = {"service": "order", "type": "order-confirmed"}
    eventually(
        lambda: (
            metric_total(scrape(running, "order"), "events_published_total", **confirmed) == BURST
        ),
        message="every outcome is published",
    )


def test_poison_records_are_counted_as_dead_letters_by_type_and_reason(
    held: tuple[RunningStack, Path],
) -> None:
    running, _ = held
    orders = running.topic("orders")
    eventually(
        lambda: set(lag_of_inventory_on_orders(running).values()) == {0},
        message="inventory has consumed what came before",
    )
    consumed_before = metric_total(
        scrape(running, "inventory"), "events_consumed_total", topic=orders
    )
    raw = Producer({"bootstrap.servers": running.stack.bootstrap})
    raw.produce(orders, b"not an event", key=b"poison")
    assert raw.flush(30) == 0
    producer = EventProducer(running.stack.bootstrap)
    bad_payload = Envelope(
        type="order-created", source="/tests", key="poison", data=b'{"order_id": 7}'
    )
    producer.publish(orders, bad_payload)
    producer.close()

    def counted() -> bool:
        text = scrape(running, "inventory")
        other = {"type": "other", "reason": "invalid-envelope"}
        created = {"type": "order-created", "reason": "invalid-payload"}
        assert metric_total(text, "events_dead_lettered_total", **other) == 1
        assert metric_total(text, "events_dead_lettered_total", **created) == 1
        assert metric_total(text, "events_consumed_total", topic=orders) - consumed_before == 2
        return True

    eventually(counted, timeout=30, message="inventory dead-letters both")
    eventually(
        lambda: set(lag_of_inventory_on_orders(running).values()) == {0},
        message="dead letters are committed like applied events",
    )
