"""The order service's event contract: what it publishes and what it consumes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.messaging.events import Event

ORDER_ID = Field(min_length=1, max_length=64, description="The order's id: the key.")
USER_ID = Field(min_length=1, max_length=64, description="The customer who placed the order.")

# The examples follow one order through the saga.
AN_ORDER = "5f0c7a4e-8b1d-4c1e-9a57-2d3f8e6b9c10"
A_USER = "0b7e4d2a-3c5f-4e8a-b1d9-6f2a7c8e4b35"
A_PRODUCT = "c3a9e1f7-2b4d-4f6a-8e0c-5d7b9a1f3e28"
ANOTHER_PRODUCT = "9d2b6f0a-7e3c-4a1b-8c5d-1f4e7a2b6c93"


class Line(BaseModel):
    product_id: str = Field(min_length=1, max_length=64, description="The product ordered.")
    quantity: int = Field(ge=1, description="How many of it.")


class Shortage(BaseModel):
    product_id: str = Field(description="A product that lacked stock.")
    requested: int = Field(description="How many the order asked for.")
    available: int = Field(description="How many inventory had.")


# Published on `orders`, keyed by order id.


class OrderCreated(Event, type="order-created", topic="orders", key="order_id"):
    """A PENDING order: inventory reserves its lines or reports a shortage."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": AN_ORDER,
                    "user_id": A_USER,
                    "items": [
                        {"product_id": A_PRODUCT, "quantity": 2},
                        {"product_id": ANOTHER_PRODUCT, "quantity": 1},
                    ],
                }
            ]
        }
    )

    order_id: str = ORDER_ID
    user_id: str = USER_ID
    items: list[Line] = Field(min_length=1, description="The order's lines, as placed.")


class OrderCancelled(Event, type="order-cancelled", topic="orders", key="order_id"):
    """The customer cancelled; a CONFIRMED order's stock is released."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": AN_ORDER, "user_id": A_USER}]}
    )

    order_id: str = ORDER_ID
    user_id: str = USER_ID


class OrderConfirmed(Event, type="order-confirmed", topic="orders", key="order_id"):
    """Every line was reserved."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": AN_ORDER, "user_id": A_USER}]}
    )

    order_id: str = ORDER_ID
    user_id: str = USER_ID


class OrderRejected(Event, type="order-rejected", topic="orders", key="order_id"):
    """Nothing was reserved: `shortages` says which products lacked stock."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": AN_ORDER,
                    "user_id": A_USER,
                    "reason": f"insufficient stock: {A_PRODUCT} (requested 2, available 1)",
                    "shortages": [{"product_id": A_PRODUCT, "requested": 2, "available": 1}],
                }
            ]
        }
    )

    order_id: str = ORDER_ID
    user_id: str = USER_ID
    reason: str = Field(description="Why, for people: the shortages in words, cut to fit.")
    shortages: list[Shortage] = Field(description="Each product that lacked stock.")


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
