"""The order story, told against the running stack (`make up` first).

    python -m tools.ops.demo

The operator signs in (with the password `make up` wrote to .run/operator-password) and
creates two products with a little stock; a customer registers with a password, gets a
token, places orders until one is rejected for a stock shortage, cancels one, and reads
every order with its event chain (every event with its place on Kafka and the event that
caused it) and her notifications. Each order is placed with a sampled `traceparent`, so
its trace is exported whatever ratio the stack samples at."""

from __future__ import annotations

import secrets
import sys
import time
import uuid
from typing import Any

import httpx

from tools.ops.client import OPERATOR_EMAIL, ShopClient


def say(text: str = "") -> None:
    print(text, flush=True)


def traced() -> dict[str, str]:
    """A new trace whose caller says sampled: a parent-based sampler keeps it."""
    return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}


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


def notifications(ada: ShopClient, count: int) -> list[dict[str, Any]]:
    """Ada's notifications, once there are `count` of them (or 30 s have passed)."""
    deadline = time.monotonic() + 30
    while len(notes := ada.notifications()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return notes


def someone_else(shop: ShopClient, ada: ShopClient) -> str:
    bob = shop.sign_up("Bob")
    answer = bob.request("GET", "user", f"/users/{ada.user_id}/notifications")
    return f"Bob's GET /users/{ada.user_id}/notifications → {answer.status_code}"


def main() -> int:
    shop = ShopClient()
    try:
        shop.http.get(f"{shop.urls['order']}/health").raise_for_status()
    except httpx.HTTPError:
        say("The stack is not running: start it with `make up`.")
        return 1

    say("1. The operator signs in (POST /token): a token with the scope `operator`.")
    try:
        staff = shop.as_operator()
    except FileNotFoundError as exc:
        say(f"No operator password ({exc.filename}): start the stack with `make up`.")
        return 1
    say(f"   {OPERATOR_EMAIL} ({staff.user_id}) signed in")

    say("2. The operator creates two products, and inventory gets a little stock of each.")
    gear = staff.create_product("Brass gear", 1250)
    cards = staff.create_product("Punched cards (box)", 300)
    staff.set_stock_eventually(gear["id"], 3)
    staff.set_stock_eventually(cards["id"], 5)
    say(f"   {gear['name']:<20} {gear['id']}  stock 3")
    say(f"   {cards['name']:<20} {cards['id']}  stock 5")

    say("3. A customer registers with a password, and signs in for a token.")
    email, password = f"ada-{uuid.uuid4().hex[:6]}@example.com", secrets.token_urlsafe(12)
    user = shop.register_user("Ada Lovelace", email, password)
    say(f"   user {user['id']} <{user['email']}>  → user-registered")
    ada = shop.sign_in(email, password)
    say(f"   POST /token → a bearer token for {ada.user_id}")

    say("4. Ada orders two gears at a time until inventory runs short.")
    orders = []
    while True:
        placed = ada.place_order_eventually([{"product_id": gear["id"], "quantity": 2}], traced())
        order = settle(ada, placed["id"], 3)
        orders.append(order)
        say(f"   order {order['id'][:8]}… → {order['status']}")
        if order["status"] == "REJECTED":
            break

    say("5. Ada orders cards, then changes her mind and cancels.")
    placed = ada.place_order_eventually([{"product_id": cards["id"], "quantity": 4}], traced())
    ada.wait_for_status(placed["id"])
    ada.cancel(placed["id"]).raise_for_status()
    orders.append(settle(ada, placed["id"], 5))
    say(f"   order {placed['id'][:8]}… → CANCELLED; stock of cards: {shop.stock(cards['id'])}")

    say("\n6. Ada's orders and their event chains, with each event's place on Kafka:")
    for order in orders:
        show_chain(ada, ada.order(order["id"]))

    say("\n7. Ada's notifications (user service, from the outcome events):")
    for note in notifications(ada, len(orders) + 1):
        say(f"   {note['created_at'][:19]}  {note['message']}")
    say(f"   Nobody else may read them: {someone_else(shop, ada)}")
    say(f"\nStock now: gears {shop.stock(gear['id'])}, cards {shop.stock(cards['id'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
