"""The order story, told against the running stack (`make up` first).

    python -m tools.demo

Registers a customer, creates two products with a little stock, places orders until one
is rejected for a stock shortage, cancels one, and prints every order with its event
chain: every event with its place on Kafka and the event that caused it."""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import httpx

from tools.client import ShopClient


def say(text: str = "") -> None:
    print(text, flush=True)


def show_chain(shop: ShopClient, order: dict[str, Any]) -> None:
    chain = shop.order_events(order["id"])
    trace_ids = {e["traceparent"].split("-")[1] for e in chain if e["traceparent"]}
    say(
        f"  order {order['id']}  {order['status']}"
        + (f"  ({order['reason']})" if order["reason"] else "")
    )
    say(f"    trace {', '.join(sorted(trace_ids))}  correlation {chain[0]['correlation_id']}")
    names = {e["id"]: e["type"] for e in chain}
    for event in chain:
        cause = names.get(event["causation_id"] or "", f"request {event['causation_id'][:8]}")
        say(
            f"    {event['type']:<16} {event['source']:<21} "
            f"{event['topic']}[{event['partition']}]@{event['offset']:<5} caused by {cause}"
        )


def settle(shop: ShopClient, order_id: str, types: int) -> dict[str, Any]:
    """Wait until the order has reached an outcome and its chain has `types` events."""
    deadline = time.monotonic() + 30
    while True:
        order = shop.wait_for_status(order_id)
        if len(shop.order_events(order_id)) >= types or time.monotonic() > deadline:
            return order
        time.sleep(0.1)


def main() -> int:
    shop = ShopClient()
    try:
        shop.http.get(f"{shop.urls['order']}/health").raise_for_status()
    except httpx.HTTPError:
        say("The stack is not running: start it with `make up`.")
        return 1

    say("1. A customer registers with the user service.")
    user = shop.register_user("Ada Lovelace", f"ada-{uuid.uuid4().hex[:6]}@example.com")
    say(f"   user {user['id']} <{user['email']}>  → user-registered")

    say("2. Two products are created, and inventory gets a little stock of each.")
    gear = shop.create_product("Brass gear", 1250)
    cards = shop.create_product("Punched cards (box)", 300)
    shop.set_stock_eventually(gear["id"], 3)
    shop.set_stock_eventually(cards["id"], 5)
    say(f"   {gear['name']:<20} {gear['id']}  stock 3")
    say(f"   {cards['name']:<20} {cards['id']}  stock 5")

    say("3. Ada orders two gears at a time until inventory runs short.")
    orders = []
    while True:
        placed = shop.place_order_eventually(
            user["id"], [{"product_id": gear["id"], "quantity": 2}]
        )
        order = settle(shop, placed["id"], 3)
        orders.append(order)
        say(f"   order {order['id'][:8]}… → {order['status']}")
        if order["status"] == "REJECTED":
            break

    say("4. Ada orders cards, then changes her mind and cancels.")
    placed = shop.place_order_eventually(user["id"], [{"product_id": cards["id"], "quantity": 4}])
    shop.wait_for_status(placed["id"])
    shop.cancel(placed["id"]).raise_for_status()
    orders.append(settle(shop, placed["id"], 5))
    say(f"   order {placed['id'][:8]}… → CANCELLED; stock of cards: {shop.stock(cards['id'])}")

    say("\n5. Every order and its event chain, with each event's place on Kafka:")
    for order in orders:
        show_chain(shop, shop.order(order["id"]))

    say("\n6. Ada's notifications (user service, from the outcome events):")
    for note in shop.notifications(user["id"]):
        say(f"   {note['created_at'][:19]}  {note['message']}")
    say(f"\nStock now: gears {shop.stock(gear['id'])}, cards {shop.stock(cards['id'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
