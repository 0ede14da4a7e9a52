"""The order saga end to end: four services as real processes, a real broker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.conftest import free_port
from tests.e2e.conftest import RunningStack
from tests.helpers import eventually, read_topic, unique
from tools.local.stack import ServiceProcess
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def customer(shop: ShopClient, name: str = "Ada") -> ShopClient:
    """A new user, signed in."""
    return shop.sign_up(name)


def product_with_stock(shop: ShopClient, available: int, name: str = "widget") -> str:
    """A product the operator (`shop`) made and stocked."""
    product_id = shop.create_product(name, 250)["id"]
    shop.set_stock_eventually(product_id, available)
    return product_id


def order(
    customer: ShopClient,
    product_id: str,
    quantity: int = 1,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    return customer.place_order_eventually(
        [{"product_id": product_id, "quantity": quantity}], headers
    )


def events_of(running: RunningStack, order_id: str, counts: dict[str, int]) -> list[Message]:
    """The Kafka records about one order, once each topic holds `counts[topic]` of them."""

    def mine(messages: list[Message]) -> list[Message]:
        return [m for m in messages if m.key() == order_id.encode()]

    found: list[Message] = []
    for topic, count in counts.items():
        found += mine(
            read_topic(
                running.stack.bootstrap,
                running.topic(topic),
                timeout=30,
                until=lambda got, n=count: len(mine(got)) >= n,
            )
        )
    return found


def header(message: Message, name: str) -> str:
    return dict(message.headers() or [])[name].decode()


def test_an_order_within_stock_is_confirmed_and_the_user_notified(shop: ShopClient):
    ada = customer(shop)
    product_id = product_with_stock(shop, 5)
    placed = order(ada, product_id, 2)
    assert placed["status"] == "PENDING" and placed["user_id"] == ada.user_id

    confirmed = ada.wait_for_status(placed["id"])
    assert confirmed["status"] == "CONFIRMED" and confirmed["reason"] is None
    assert shop.stock(product_id) == {"product_id": product_id, "available": 3, "reserved": 2}
    eventually(lambda: shop.product(product_id)["in_stock"], message="product view in stock")
    notes = eventually(ada.notifications, message="notification")
    assert [(n["order_id"], n["type"]) for n in notes] == [(placed["id"], "order-confirmed")]


def test_an_order_beyond_stock_is_rejected_naming_the_short_product(shop: ShopClient):
    ada = customer(shop)
    plenty, scarce = product_with_stock(shop, 10), product_with_stock(shop, 1)
    placed = ada.place_order_eventually(
        [{"product_id": plenty, "quantity": 2}, {"product_id": scarce, "quantity": 3}]
    )
    rejected = ada.wait_for_status(placed["id"])
    assert rejected["status"] == "REJECTED"
    assert scarce in rejected["reason"] and plenty not in rejected["reason"]
    assert shop.stock(plenty) == {"product_id": plenty, "available": 10, "reserved": 0}
    notes = eventually(ada.notifications, message="notification")
    assert notes[0]["type"] == "order-rejected" and scarce in notes[0]["message"]


def test_fifty_concurrent_orders_for_ten_in_stock_confirm_exactly_ten(shop: ShopClient):
    ada = customer(shop)
    product_id = product_with_stock(shop, 10)
    outcomes = place_concurrently(ada, product_id, 50)
    assert outcomes.count("CONFIRMED") == 10 and outcomes.count("REJECTED") == 40
    assert shop.stock(product_id) == {"product_id": product_id, "available": 0, "reserved": 10}


def place_concurrently(customer: ShopClient, product_id: str, count: int) -> list[str]:
    """Place `count` one-unit orders from 10 threads; return their final statuses."""

    def place(_: int) -> str:
        return str(order(customer, product_id)["id"])

    with ThreadPoolExecutor(max_workers=10) as pool:
        order_ids = list(pool.map(place, range(count)))
    return [customer.wait_for_status(order_id, timeout=60)["status"] for order_id in order_ids]


def test_an_idempotency_key_replays_the_first_response_and_conflicts_on_another_body(
    shop: ShopClient,
):
    ada = customer(shop)
    product_id = product_with_stock(shop, 5)
    key = {"Idempotency-Key": unique("key")}
    first = order(ada, product_id, 1, key)
    again = ada.place_order([{"product_id": product_id, "quantity": 1}], key)
    assert again.status_code == 202 and again.json() == first
    other = ada.place_order([{"product_id": product_id, "quantity": 2}], key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    bob = customer(shop, "Bob")
    bobs = bob.place_order_eventually([{"product_id": product_id, "quantity": 1}])
    ada.wait_for_status(first["id"])
    assert [o["id"] for o in ada.orders()] == [first["id"]]
    assert [o["id"] for o in bob.orders()] == [bobs["id"]]
    bob.wait_for_status(bobs["id"])
    assert shop.stock(product_id)["reserved"] == 2


def test_cancelling_a_confirmed_order_releases_its_stock(shop: ShopClient):
    ada = customer(shop)
    product_id = product_with_stock(shop, 4)
    placed = order(ada, product_id, 3)
    assert ada.wait_for_status(placed["id"])["status"] == "CONFIRMED"
    cancelled = ada.cancel(placed["id"])
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    eventually(
        lambda: shop.stock(product_id) == {"product_id": product_id, "available": 4, "reserved": 0},
        message="stock released",
    )
    types = eventually(
        lambda: [n["type"] for n in notes] if len(notes := ada.notifications()) == 2 else None
    )
    assert types == ["order-confirmed", "order-cancelled"]


def test_cancel_before_inventory_answers_holds_no_stock(running: RunningStack):
    shop = running.operator
    ada = customer(shop)
    product_id = product_with_stock(shop, 4)
    order(ada, product_id, 1)  # the order service knows user and product
    inventory = running.stack.services["inventory"]
    inventory.stop()
    try:
        placed = ada.place_order([{"product_id": product_id, "quantity": 2}]).json()
        cancelled = ada.cancel(placed["id"]).json()
        assert cancelled["status"] == "CANCELLED"
    finally:
        inventory.start()
        inventory.wait_ready()
    eventually(
        lambda: "stock-released" in [e["type"] for e in ada.order_events(placed["id"])],
        message="inventory reserved, then released on the cancel",
    )
    assert ada.order(placed["id"])["status"] == "CANCELLED"
    assert shop.stock(product_id) == {"product_id": product_id, "available": 3, "reserved": 1}


def test_events_carry_cloudevents_headers_and_a_causation_chain(running: RunningStack):
    shop = running.operator
    ada = customer(shop)
    product_id = product_with_stock(shop, 5)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    order(ada, product_id)  # the order service knows user and product
    response = ada.place_order(
        [{"product_id": product_id, "quantity": 1}], {"traceparent": traceparent}
    )
    assert response.status_code == 202, response.text
    order_id = response.json()["id"]
    request_id = response.headers["x-request-id"]
    assert response.headers["x-trace-id"] == trace_id
    ada.wait_for_status(order_id)

    records = {
        header(m, "ce_type"): m for m in events_of(running, order_id, {"orders": 2, "stock": 1})
    }
    assert set(records) >= {"order-created", "stock-reserved", "order-confirmed"}
    for kind, record in records.items():
        names = dict(record.headers() or [])
        assert {
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_time",
            "content-type",
            "ce_correlationid",
            "ce_causationid",
            "traceparent",
        } <= set(names), kind
        assert header(record, "ce_correlationid") == order_id
        assert header(record, "traceparent").split("-")[1] == trace_id, kind
        assert orjson.loads(record.value())["order_id"] == order_id
    created, reserved, confirmed = (
        records[t] for t in ("order-created", "stock-reserved", "order-confirmed")
    )
    assert header(created, "ce_causationid") == request_id
    assert header(reserved, "ce_causationid") == header(created, "ce_id")
    assert header(confirmed, "ce_causationid") == header(reserved, "ce_id")
    assert header(created, "ce_source") == "/services/order"
    assert header(reserved, "ce_source") == "/services/inventory"

    chain = eventually(
        lambda: len(events := ada.order_events(order_id)) >= 3 and events,
        message="chain filed",
    )
    assert [e["type"] for e in chain] == ["order-created", "stock-reserved", "order-confirmed"]
    assert [e["id"] for e in chain] == [
        header(created, "ce_id"),
        header(reserved, "ce_id"),
        header(confirmed, "ce_id"),
    ]
    assert chain[1]["offset"] == reserved.offset() and chain[1]["topic"] == reserved.topic()


def test_bad_requests_answer_4xx_and_publish_nothing(running: RunningStack):
    shop = running.operator
    ada = customer(shop)
    product_id = product_with_stock(shop, 5)
    first = order(ada, product_id)  # known to the order service from here on
    ghost_product = unique("ghost-product")
    ghost = [{"product_id": ghost_product, "quantity": 1}]
    json_type = {"content-type": "application/json"}
    bad = [
        running.client.place_order(ghost),  # no token
        ada.place_order(ghost, {"Authorization": "Bearer not-a-token"}),
        ada.place_order(ghost),
        ada.place_order([]),
        ada.place_order([{"product_id": product_id, "quantity": 0}]),
        ada.request("POST", "order", "/orders", content=b"{not json", headers=json_type),
        ada.request(  # the user comes from the token, never from the body
            "POST",
            "order",
            "/orders",
            json={"user_id": ada.user_id, "items": [{"product_id": product_id, "quantity": 1}]},
        ),
        ada.request("POST", "order", "/orders", content=b"x" * 100_000, headers=json_type),
    ]
    assert [r.status_code for r in bad] == [401, 401, 422, 422, 422, 422, 422, 413]
    assert all(r.headers["www-authenticate"].startswith("Bearer") for r in bad[:2])
    assert ghost_product in bad[2].json()["detail"]
    control = order(ada, product_id)
    published = read_topic(
        running.stack.bootstrap,
        running.topic("orders"),
        until=lambda got: any(m.key() == control["id"].encode() for m in got),
    )
    text = b"".join(m.value() or b"" for m in published)
    assert control["id"].encode() in text and ghost_product.encode() not in text
    assert {o["id"] for o in ada.orders()} == {first["id"], control["id"]}


def test_replaying_every_topic_from_offset_zero_into_inventory_changes_no_stock(
    running: RunningStack,
):
    shop = running.operator
    ada = customer(shop)
    products = [product_with_stock(shop, 3) for _ in range(2)]
    for quantity in (1, 2, 5):
        placed = order(ada, products[0], quantity)
        ada.wait_for_status(placed["id"])
    cancelled = order(ada, products[1], 2)
    ada.wait_for_status(cancelled["id"])
    ada.cancel(cancelled["id"])
    eventually(lambda: shop.stock(products[1])["reserved"] == 0, message="released")
    before = [shop.stock(p) for p in products]

    inventory = running.stack.services["inventory"]
    group = f"{running.topic_prefix}inventory"
    topics = [running.topic("products"), running.topic("orders")]
    inventory.stop()
    try:
        rewind_group(running.stack.bootstrap, group, topics)
    finally:
        inventory.start()
        inventory.wait_ready()
    eventually(
        lambda: group_caught_up(running.stack.bootstrap, group, topics),
        timeout=60,
        message="inventory re-consumed every topic",
    )
    assert [shop.stock(p) for p in products] == before


def rewind_group(bootstrap: str, group: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=10)
    partitions = [TopicPartition(t, p, 0) for t in topics for p in metadata.topics[t].partitions]
    future = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, partitions)])
    for result in future.values():
        result.result(30)


def group_caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        metadata = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions]
        committed = consumer.committed(partitions, timeout=10)
        return all(
            tp.offset == consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed
        )
    finally:
        consumer.close()


def test_two_inventory_processes_on_postgres_confirm_exactly_the_stock(
    running: RunningStack, tmp_path: Path
):
    if running.backend != "postgres":
        pytest.skip("two processes share one database only on PostgreSQL")
    shop = running.operator
    first = running.stack.services["inventory"]
    second = ServiceProcess("inventory", free_port(), tmp_path, first.env)
    second.start()
    try:
        second.wait_ready()
        group = f"{running.topic_prefix}inventory"
        eventually(
            lambda: assigned_members(running.stack.bootstrap, group) == 2,
            timeout=60,
            message="both inventory processes own partitions",
        )
        ada = customer(shop)
        product_id = product_with_stock(shop, 10)
        outcomes = place_concurrently(ada, product_id, 50)
    finally:
        second.stop()
    assert outcomes.count("CONFIRMED") == 10 and outcomes.count("REJECTED") == 40
    assert shop.stock(product_id) == {"product_id": product_id, "available": 0, "reserved": 10}


def assigned_members(bootstrap: str, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (description,) = [f.result(10) for f in admin.describe_consumer_groups([group]).values()]
    return sum(1 for m in description.members if m.assignment.topic_partitions)
