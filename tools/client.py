"""A small HTTP client for the four services, used by the demo, tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from tools.stack import PORTS

DEFAULT_URLS = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
FINAL = {"CONFIRMED", "REJECTED", "CANCELLED"}


class ShopClient:
    def __init__(self, urls: Mapping[str, str] = DEFAULT_URLS, timeout: float = 10) -> None:
        self.urls = dict(urls)
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _ok(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def register_user(self, name: str, email: str) -> dict[str, Any]:
        return self._ok(
            self.http.post(f"{self.urls['user']}/users", json={"name": name, "email": email})
        )

    def create_product(self, name: str, price_cents: int) -> dict[str, Any]:
        return self._ok(
            self.http.post(
                f"{self.urls['product']}/products", json={"name": name, "price_cents": price_cents}
            )
        )

    def set_stock(self, product_id: str, available: int) -> dict[str, Any]:
        return self._ok(
            self.http.put(
                f"{self.urls['inventory']}/stock/{product_id}", json={"available": available}
            )
        )

    def set_stock_eventually(
        self, product_id: str, available: int, timeout: float = 30
    ) -> dict[str, Any]:
        """Set stock, retrying while inventory has not yet learned the product from its
        `product-created` event (404)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.set_stock(product_id, available)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def stock(self, product_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"{self.urls['inventory']}/stock/{product_id}"))

    def product(self, product_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"{self.urls['product']}/products/{product_id}"))

    def place_order(
        self, user_id: str, items: list[dict[str, Any]], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return self.http.post(
            f"{self.urls['order']}/orders",
            json={"user_id": user_id, "items": items},
            headers=dict(headers or {}),
        )

    def order(self, order_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"{self.urls['order']}/orders/{order_id}"))

    def cancel(self, order_id: str) -> httpx.Response:
        return self.http.post(f"{self.urls['order']}/orders/{order_id}/cancel")

    def order_events(self, order_id: str) -> list[dict[str, Any]]:
        return self._ok(self.http.get(f"{self.urls['order']}/orders/{order_id}/events"))

    def notifications(self, user_id: str) -> list[dict[str, Any]]:
        return self._ok(self.http.get(f"{self.urls['user']}/users/{user_id}/notifications"))

    def place_order_eventually(
        self,
        user_id: str,
        items: list[dict[str, Any]],
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Place an order, retrying while the order service has not yet learned the user or
        products from their events (422 "unknown ..."); a 422 creates nothing."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.place_order(user_id, items, headers)
            unknown = response.status_code == 422 and "unknown" in response.text
            if not unknown or time.monotonic() > deadline:
                return self._ok(response)
            time.sleep(0.1)

    def wait_for_status(
        self, order_id: str, statuses: set[str] = FINAL, timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            order = self.order(order_id)
            if order["status"] in statuses:
                return order
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} still {order['status']}")
            time.sleep(0.05)
