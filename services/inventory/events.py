"""The inventory service's event contract: what it consumes and what it publishes.

Consumed payloads ignore fields they do not know, so producers can add fields freely."""

from __future__ import annotations

from pydantic import BaseModel, Field

PRODUCTS = "products"
ORDERS = "orders"
STOCK = "stock"
STOCK_CHANGES = "stock-changes"

PRODUCT_CREATED = "product-created"
ORDER_CREATED = "order-created"
ORDER_CANCELLED = "order-cancelled"
ORDER_CONFIRMED = "order-confirmed"
ORDER_REJECTED = "order-rejected"

STOCK_CHANGED = "stock-changed"
STOCK_RESERVED = "stock-reserved"
STOCK_SHORTAGE = "stock-shortage"
STOCK_RELEASED = "stock-released"


# Consumed


class ProductCreated(BaseModel):
    """Consumed from `products` (published by product), keyed by product id."""

    product_id: str = Field(min_length=1, max_length=64)
    name: str
    price_cents: int
    version: int = 1


class OrderLine(BaseModel):
    product_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0)


class OrderCreated(BaseModel):
    """Consumed from `orders` (published by order), keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)
    user_id: str
    items: list[OrderLine]


class OrderCancelled(BaseModel):
    """Consumed from `orders` (published by order), keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)
    user_id: str


# Published


class StockChanged(BaseModel):
    """Published on `stock-changes`, keyed by product id. `version` grows with every
    change of one product, so a reader can drop changes older than what it holds."""

    product_id: str
    available: int
    version: int


class StockLine(BaseModel):
    product_id: str
    quantity: int


class StockReserved(BaseModel):
    """Published on `stock`, keyed by order id: every line of the order is held for it.
    One line per product: duplicate order lines are summed."""

    order_id: str
    items: list[StockLine]


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


class StockShortage(BaseModel):
    """Published on `stock`, keyed by order id: nothing was reserved, because these
    products lack stock (a product inventory does not know has 0 available)."""

    order_id: str
    shortages: list[Shortage]


class StockReleased(BaseModel):
    """Published on `stock`, keyed by order id: what the cancelled order held is
    available again."""

    order_id: str
    items: list[StockLine]
