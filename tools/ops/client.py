"""A small HTTP client for the four services, used by the demo, tests and benchmarks.

A client speaks for at most one signed-in user, whose bearer token it sends with every
request; `sign_in`, `sign_up` and `as_operator` return another client for that account,
sharing the same connections:

    shop = ShopClient()
    staff = shop.as_operator()                   # the password `make up` wrote
    gear = staff.create_product("Brass gear", 1250)
    ada = shop.sign_up("Ada", "ada@example.com", "correct horse battery")
    ada.place_order_eventually([{"product_id": gear["id"], "quantity": 1}])

Every request waits politely, for at most `patience` seconds: through 429 (rate limited)
and 503 with a `Retry-After` (a service that has not learnt the signing keys yet) for as
long as that header says, and it signs in again once if the token has expired."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt

from tools.local.stack import PORTS, RUN_DIR

DEFAULT_URLS = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
FINAL = {"CONFIRMED", "REJECTED", "CANCELLED"}
OPERATOR_EMAIL = "operator@example.com"
OPERATOR_PASSWORD_FILE = RUN_DIR / "operator-password"
"""Where `make up` (tools/local/stack.py) writes the operator's password."""


class ShopClient:
    def __init__(
        self,
        urls: Mapping[str, str] = DEFAULT_URLS,
        timeout: float = 10,
        *,
        patience: float = 30,
        http: httpx.Client | None = None,
    ) -> None:
        self.urls = dict(urls)
        self.http = http or httpx.Client(timeout=timeout)
        self.patience = patience
        self.token: str | None = None
        self.user_id: str | None = None
        """The signed-in user's id (the token's subject)."""
        self._credentials: tuple[str, str] | None = None

    def close(self) -> None:
        self.http.close()

    # -- sending -----------------------------------------------------------------------

    def request(self, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with the token; wait out 429 and 503 as told by their `Retry-After`, and
        sign in again once on an expired token."""
        deadline = time.monotonic() + self.patience
        extra = dict(kwargs.pop("headers", None) or {})
        signed_in_again = False
        while True:
            bearer = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            response = self.http.request(
                method, self.urls[service] + path, headers={**bearer, **extra}, **kwargs
            )
            if _expired(response) and self._credentials and not signed_in_again:
                self.token = self._get_token(*self._credentials)
                signed_in_again = True
                continue
            wait = retry_after(response)
            if wait is None or time.monotonic() + wait > deadline:
                return response
            time.sleep(wait)

    def _ok(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    # -- accounts ----------------------------------------------------------------------

    def register_user(self, name: str, email: str, password: str) -> dict[str, Any]:
        body = {"name": name, "email": email, "password": password}
        return self._ok(self.request("POST", "user", "/users", json=body))

    def sign_in(self, email: str, password: str) -> ShopClient:
        """A client for this account (POST /token, OAuth2's password flow)."""
        signed_in = ShopClient(self.urls, patience=self.patience, http=self.http)
        signed_in._credentials = (email, password)
        signed_in.token = signed_in._get_token(email, password)
        claims = jwt.decode(signed_in.token, options={"verify_signature": False})
        signed_in.user_id = claims["sub"]
        return signed_in

    def sign_up(
        self, name: str = "Ada", email: str | None = None, password: str | None = None
    ) -> ShopClient:
        """Register (a fresh e-mail and password unless given) and sign in."""
        email = email or f"{uuid.uuid4().hex[:12]}@example.com"
        password = password or secrets.token_urlsafe(12)
        self.register_user(name, email, password)
        return self.sign_in(email, password)

    def as_operator(
        self, password: str | None = None, password_file: Path = OPERATOR_PASSWORD_FILE
    ) -> ShopClient:
        """A client for the operator account (scope `operator`: products and stock)."""
        return self.sign_in(OPERATOR_EMAIL, password or password_file.read_text().strip())

    def _get_token(self, email: str, password: str) -> str:
        form = {"username": email, "password": password}
        token: str = self._ok(self.request("POST", "user", "/token", data=form))["access_token"]
        return token

    def me(self) -> dict[str, Any]:
        return self._ok(self.request("GET", "user", "/users/me"))

    def notifications(self) -> list[dict[str, Any]]:
        return self._ok(self.request("GET", "user", f"/users/{self.user_id}/notifications"))

    # -- catalogue: the operator writes, anyone reads ----------------------------------

    def create_product(self, name: str, price_cents: int) -> dict[str, Any]:
        body = {"name": name, "price_cents": price_cents}
        return self._ok(self.request("POST", "product", "/products", json=body))

    def set_stock(self, product_id: str, available: int) -> dict[str, Any]:
        body = {"available": available}
        return self._ok(self.request("PUT", "inventory", f"/stock/{product_id}", json=body))

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
        return self._ok(self.request("GET", "inventory", f"/stock/{product_id}"))

    def product(self, product_id: str) -> dict[str, Any]:
        return self._ok(self.request("GET", "product", f"/products/{product_id}"))

    # -- orders of the signed-in user --------------------------------------------------

    def place_order(
        self, items: list[dict[str, Any]], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return self.request(
            "POST", "order", "/orders", json={"items": items}, headers=dict(headers or {})
        )

    def place_order_eventually(
        self,
        items: list[dict[str, Any]],
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Place an order, retrying while the order service has not yet learned the user
        (401 "unknown user") or the products (422 "unknown ...") from their events; such
        an answer creates nothing."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.place_order(items, headers)
            if not not_learnt_yet(response) or time.monotonic() > deadline:
                return self._ok(response)
            time.sleep(0.1)

    def orders(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._ok(self.request("GET", "order", "/orders", params={"limit": limit}))

    def order(self, order_id: str) -> dict[str, Any]:
        return self._ok(self.request("GET", "order", f"/orders/{order_id}"))

    def cancel(self, order_id: str) -> httpx.Response:
        return self.request("POST", "order", f"/orders/{order_id}/cancel")

    def order_events(self, order_id: str) -> list[dict[str, Any]]:
        return self._ok(self.request("GET", "order", f"/orders/{order_id}/events"))

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


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before asking again, if the answer says "later"."""
    if response.status_code not in (429, 503) or "retry-after" not in response.headers:
        return None
    try:
        return max(0.05, float(response.headers["retry-after"]))
    except ValueError:
        return 1.0


def _expired(response: httpx.Response) -> bool:
    challenge = response.headers.get("www-authenticate", "")
    return response.status_code == 401 and "token expired" in challenge


def not_learnt_yet(response: httpx.Response) -> bool:
    """The order service has not yet consumed the user's or a product's event."""
    challenge = response.headers.get("www-authenticate", "")
    if response.status_code == 401:
        return "unknown user" in challenge
    return response.status_code == 422 and "unknown" in response.text
