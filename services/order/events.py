"""The order service's event contract: what it publishes and what it consumes."""

from __future__ import annotations

from pydantic import BaseModel, Field

ORDERS = "orders"
STOCK = "stock"
USERS = "users"
PRODUCTS = "products"

ORDER_CREATED = "order-created"
ORDER_CANCELLED = "order-cancelled"
ORDER_CONFIRMED = "order-confirmed"
ORDER_REJECTED = "order-rejected"
STOCK_RESERVED = "stock-reserved"
STOCK_SHORTAGE = "stock-shortage"
STOCK_RELEASED = "stock-released"
USER_REGISTERED = "user-registered"
PRODUCT_CREATED = "product-created"


class Line(BaseModel):
    product_id: str
    quantity: int = Field(ge=1)


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


# Published on `orders`, keyed by order id.


class OrderCreated(BaseModel):
    order_id: str
    user_id: str
    items: list[Line]


class OrderCancelled(BaseModel):
    order_id: str
    user_id: str


class OrderConfirmed(BaseModel):
    order_id: str
    user_id: str


class OrderRejected(BaseModel):
    order_id: str
    user_id: str
    reason: str
    shortages: list[Shortage]


# Consumed from `stock` (inventory), keyed by order id.


class StockReserved(BaseModel):
    order_id: str
    items: list[Line]


class StockShortage(BaseModel):
    order_id: str
    shortages: list[Shortage]


class StockReleased(BaseModel):
    order_id: str
    items: list[Line]


# Consumed from `users` and `products`, keyed by user id and product id.


class UserRegistered(BaseModel):
    user_id: str
    version: int = 1


class ProductCreated(BaseModel):
    product_id: str
    name: str
    version: int = 1


class OrderRef(BaseModel):
    """Any event on `orders` or `stock`: enough to file it in the order's chain."""

    order_id: str
