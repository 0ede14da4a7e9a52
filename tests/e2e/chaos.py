"""Load with retrying clients, and the invariants that must hold after any failure."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from confluent_kafka import Message

from shared.messaging.connection import Bootstrap
from tests.helpers import eventually, read_topic
from tools.ops.client import ShopClient, not_learnt_yet, retry_after

RETRYABLE = (httpx.TransportError,)


@dataclass
class Catalogue:
    customers: list[ShopClient]
    """Signed in; the load takes turns among them (each user's rate is limited)."""
    stock: dict[str, int]
    """Product id → the stock that was set."""


@dataclass
class LoadResult:
    orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Accepted order id → its lines."""
    cancelled: set[str] = field(default_factory=set)
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_catalogue(
    shop: ShopClient, ample: int = 4, scarce: int = 3, customers: int = 8
) -> Catalogue:
    """Products made by `shop` (the operator), and `customers` users signed in."""
    stock: dict[str, int] = {}
    for n in range(ample + scarce):
        product_id = shop.create_product(f"p{n}", 100)["id"]
        amount = 100_000 if n < ample else 25
        shop.set_stock_eventually(product_id, amount, timeout=90)
        stock[product_id] = amount
    return Catalogue([shop.sign_up(f"Load {n}") for n in range(customers)], stock)


def retrying(
    call: Callable[[], httpx.Response], result: LoadResult, deadline: float
) -> httpx.Response:
    """Repeat `call` through connection errors and 5xx (a service restarting), 429 (as
    long as `Retry-After` says) and a user or product the order service has not learnt
    yet (a fresh order service, or one restarted on an empty consumer position)."""
    while True:
        wait = 0.2
        try:
            response = call()
            later = retry_after(response)
            if response.status_code < 500 and later is None and not not_learnt_yet(response):
                return response
            wait = later or wait
        except RETRYABLE:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("service did not come back in time")
        with result.lock:
            result.retries += 1
        time.sleep(wait)


def run_load(
    urls: dict[str, str],
    catalogue: Catalogue,
    count: int,
    *,
    threads: int = 8,
    cancel_share: float = 0.1,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
    timeout: float = 600,
) -> LoadResult:
    """Place `count` orders, taking turns among the customers; each POST retries with its
    Idempotency-Key until accepted. Some confirmed orders are cancelled, also with
    retries."""
    result = LoadResult()
    products = list(catalogue.stock)
    deadline = time.monotonic() + timeout
    done = 0

    def one(n: int) -> None:
        nonlocal done
        rng = random.Random(seed * 100_003 + n)
        lines = [
            {"product_id": p, "quantity": rng.randint(1, 3)}
            for p in rng.sample(products, rng.randint(1, 3))
        ]
        body = {"items": lines}
        customer = catalogue.customers[n % len(catalogue.customers)]
        auth = {"Authorization": f"Bearer {customer.token}"}
        key = {"Idempotency-Key": f"load-{seed}-{n}"}
        with httpx.Client(timeout=10, headers=auth) as http:
            response = retrying(
                lambda: http.post(f"{urls['order']}/orders", json=body, headers=key),
                result,
                deadline,
            )
            assert response.status_code == 202, response.text
            order_id = response.json()["id"]
            with result.lock:
                result.orders[order_id] = lines
            if rng.random() < cancel_share:
                status = _final_status(http, urls, order_id, result, deadline)
                if status == "CONFIRMED":
                    cancel = retrying(
                        lambda: http.post(f"{urls['order']}/orders/{order_id}/cancel"),
                        result,
                        deadline,
                    )
                    assert cancel.status_code == 200, cancel.text
                    with result.lock:
                        result.cancelled.add(order_id)
        with result.lock:
            done += 1
            if progress:
                progress(done)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(one, n) for n in range(count)]:
            future.result()
    return result


def _final_status(
    http: httpx.Client, urls: dict[str, str], order_id: str, result: LoadResult, deadline: float
) -> str:
    while True:
        response = retrying(
            lambda: http.get(f"{urls['order']}/orders/{order_id}"), result, deadline
        )
        status = str(response.json()["status"])
        if status != "PENDING" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def check_invariants(
    shop: ShopClient,
    bootstrap: Bootstrap,
    topic_prefix: str,
    catalogue: Catalogue,
    load: LoadResult,
    timeout: float = 180,
) -> dict[str, int]:
    """Every accepted order has exactly one outcome; stock adds up. Returns the tallies."""
    order_ids = set(load.orders)

    def outcomes_complete(messages: list[Message]) -> bool:
        decided = {m.key() for m in messages if _type(m) in ("order-confirmed", "order-rejected")}
        return len(decided & {o.encode() for o in order_ids}) == len(order_ids)

    order_events = read_topic(
        bootstrap, f"{topic_prefix}orders", until=outcomes_complete, timeout=timeout
    )
    distinct = _distinct_by_type(order_events)
    assert set(distinct["order-created"]) == order_ids, "an order was lost or created twice"
    for kind in ("order-created", "order-confirmed", "order-rejected", "order-cancelled"):
        doubled = {k: ids for k, ids in distinct[kind].items() if len(ids) > 1}
        assert not doubled, f"{kind} applied twice: {doubled}"
    outcome_keys = set(distinct["order-confirmed"]) | set(distinct["order-rejected"])
    assert outcome_keys == order_ids, "an accepted order has no outcome"
    assert not set(distinct["order-confirmed"]) & set(distinct["order-rejected"])
    assert set(distinct["order-cancelled"]) == load.cancelled

    confirmed = set(distinct["order-confirmed"]) - load.cancelled
    expected_reserved: dict[str, int] = defaultdict(int)
    for order_id in confirmed:
        for line in load.orders[order_id]:
            expected_reserved[line["product_id"]] += line["quantity"]

    def stock_adds_up() -> bool:
        for product_id, total in catalogue.stock.items():
            stock = shop.stock(product_id)
            assert stock["available"] >= 0 and stock["reserved"] >= 0, stock
            assert stock["available"] + stock["reserved"] == total, stock
            assert stock["reserved"] == expected_reserved[product_id], (
                stock,
                expected_reserved[product_id],
            )
        return True

    eventually(stock_adds_up, timeout=60, message="stock adds up")
    stock_events = read_topic(
        bootstrap,
        f"{topic_prefix}stock",
        timeout=timeout,
        until=lambda got: (
            len({m.key() for m in got} & {o.encode() for o in order_ids}) == len(order_ids)
        ),
    )
    stock_distinct = _distinct_by_type(stock_events)
    for kind in ("stock-reserved", "stock-shortage", "stock-released"):
        doubled = {k: ids for k, ids in stock_distinct[kind].items() if len(ids) > 1}
        assert not doubled, f"inventory applied an order twice ({kind}): {doubled}"
    return {
        "orders": len(order_ids),
        "confirmed": len(distinct["order-confirmed"]),
        "rejected": len(distinct["order-rejected"]),
        "cancelled": len(load.cancelled),
        "redeliveries": len(order_events)
        - sum(len(ids) for by_key in distinct.values() for ids in by_key.values()),
        "client_retries": load.retries,
    }


def _type(message: Message) -> str:
    return dict(message.headers() or []).get("ce_type", b"").decode()


def _distinct_by_type(messages: list[Message]) -> dict[str, dict[str, set[str]]]:
    """type → order id → distinct event ids. Byte-identical redeliveries (same id and same
    payload) collapse; a second id for the same fact is a double."""
    seen: dict[str, bytes] = {}
    by_type: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for message in messages:
        headers = dict(message.headers() or [])
        event_id = headers["ce_id"].decode()
        value = message.value() or b""
        assert seen.setdefault(event_id, value) == value, f"event {event_id} changed payload"
        order_id = orjson.loads(value)["order_id"]
        by_type[headers["ce_type"].decode()][order_id].add(event_id)
    return by_type
