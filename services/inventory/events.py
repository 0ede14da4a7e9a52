"""The inventory service's event contract: what it consumes and what it publishes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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


# Published. The examples follow one order through the saga.

AN_ORDER = "5f0c7a4e-8b1d-4c1e-9a57-2d3f8e6b9c10"
A_PRODUCT = "c3a9e1f7-2b4d-4f6a-8e0c-5d7b9a1f3e28"
ANOTHER_PRODUCT = "9d2b6f0a-7e3c-4a1b-8c5d-1f4e7a2b6c93"
ORDER_ID = Field(description="The order's id: the key.")
HELD = [{"product_id": A_PRODUCT, "quantity": 2}, {"product_id": ANOTHER_PRODUCT, "quantity": 1}]


class StockChanged(Event, type="stock-changed", topic="stock-changes", key="product_id"):
    """A product's availability. `version` grows with every change of one product, so a
    reader can drop changes older than what it holds."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"product_id": A_PRODUCT, "available": 8, "version": 3}]}
    )

    product_id: str = Field(description="The product: the key.")
    available: int = Field(description="How many can be reserved now.")
    version: int = Field(description="Grows with every change of this product's stock.")


class StockLine(BaseModel):
    product_id: str = Field(min_length=1, max_length=64, description="A product held.")
    quantity: int = Field(ge=1, description="How many of it (the order's lines summed).")


class StockReserved(Event, type="stock-reserved", topic="stock", key="order_id"):
    """Every line of the order is held for it. One line per product: duplicate order
    lines are summed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": AN_ORDER, "items": HELD}]}
    )

    order_id: str = ORDER_ID
    items: list[StockLine] = Field(description="What is held, one line per product.")


class Shortage(BaseModel):
    product_id: str = Field(description="A product that lacks stock.")
    requested: int = Field(description="How many the order asked for (its lines summed).")
    available: int = Field(description="How many there are (0 for a product not known).")


class StockShortage(Event, type="stock-shortage", topic="stock", key="order_id"):
    """Nothing was reserved, because these products lack stock (a product inventory
    does not know has 0 available)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": AN_ORDER,
                    "shortages": [{"product_id": A_PRODUCT, "requested": 2, "available": 1}],
                }
            ]
        }
    )

    order_id: str = ORDER_ID
    shortages: list[Shortage] = Field(description="Each product that lacks stock.")


class StockReleased(Event, type="stock-released", topic="stock", key="order_id"):
    """What the cancelled order held is available again."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": AN_ORDER, "items": HELD}]}
    )

    order_id: str = ORDER_ID
    items: list[StockLine] = Field(description="What was released, one line per product.")


PUBLISHES = (StockReserved, StockShortage, StockReleased, StockChanged)
