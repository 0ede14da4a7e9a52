"""The order service's event contract: what it publishes and what it consumes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.messaging.events import Event

ORDER_ID = Field(min_length=1, max_length=64)


class Line(BaseModel):
    product_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1)


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


# Published on `orders`, keyed by order id.


class OrderCreated(Event, type="order-created", topic="orders", key="order_id"):
    """A PENDING order: inventory reserves its lines or reports a shortage."""

    order_id: str = ORDER_ID
    user_id: str = Field(min_length=1, max_length=64)
    items: list[Line] = Field(min_length=1)


class OrderCancelled(Event, type="order-cancelled", topic="orders", key="order_id"):
    """The customer cancelled; a CONFIRMED order's stock is released."""

    order_id: str = ORDER_ID
    user_id: str = Field(min_length=1, max_length=64)


class OrderConfirmed(Event, type="order-confirmed", topic="orders", key="order_id"):
    """Every line was reserved."""

    order_id: str = ORDER_ID
    user_id: str = Field(min_length=1, max_length=64)


class OrderRejected(Event, type="order-rejected", topic="orders", key="order_id"):
    """Nothing was reserved: `shortages` says which products lacked stock."""

    order_id: str = ORDER_ID
    user_id: str = Field(min_length=1, max_length=64)
    reason: str
    shortages: list[Shortage]


PUBLISHES = (OrderCreated, OrderCancelled, OrderConfirmed, OrderRejected)


# Consumed from `stock` (inventory), keyed by order id.


class StockReserved(Event, type="stock-reserved", topic="stock", key="order_id"):
    order_id: str
    items: list[Line]


class StockShortage(Event, type="stock-shortage", topic="stock", key="order_id"):
    order_id: str
    shortages: list[Shortage]


class StockReleased(Event, type="stock-released", topic="stock", key="order_id"):
    order_id: str


# Consumed from `users` and `products`, keyed by user id and product id.


class UserRegistered(Event, type="user-registered", topic="users", key="user_id"):
    user_id: str
    version: int = 1


class ProductCreated(Event, type="product-created", topic="products", key="product_id"):
    product_id: str
    name: str
    version: int = 1
