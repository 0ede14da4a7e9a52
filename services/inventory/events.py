"""The inventory service's event contract: what it consumes and what it publishes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.messaging.events import Event

# Consumed


class ProductCreated(Event, type="product-created", topic="products", key="product_id"):
    """Published by product, keyed by product id."""

    product_id: str = Field(min_length=1, max_length=64)
    version: int = 1


class OrderLine(BaseModel):
    product_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0)


class OrderCreated(Event, type="order-created", topic="orders", key="order_id"):
    """Published by order, keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)
    items: list[OrderLine]


class OrderCancelled(Event, type="order-cancelled", topic="orders", key="order_id"):
    """Published by order, keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)


# Published


class StockChanged(Event, type="stock-changed", topic="stock-changes", key="product_id"):
    """A product's availability. `version` grows with every change of one product, so a
    reader can drop changes older than what it holds."""

    product_id: str
    available: int
    version: int


class StockLine(BaseModel):
    product_id: str
    quantity: int


class StockReserved(Event, type="stock-reserved", topic="stock", key="order_id"):
    """Every line of the order is held for it. One line per product: duplicate order
    lines are summed."""

    order_id: str
    items: list[StockLine]


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


class StockShortage(Event, type="stock-shortage", topic="stock", key="order_id"):
    """Nothing was reserved, because these products lack stock (a product inventory
    does not know has 0 available)."""

    order_id: str
    shortages: list[Shortage]


class StockReleased(Event, type="stock-released", topic="stock", key="order_id"):
    """What the cancelled order held is available again."""

    order_id: str
    items: list[StockLine]


PUBLISHES = (StockReserved, StockShortage, StockReleased, StockChanged)
