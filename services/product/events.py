"""The product service's event contract: what it publishes and what it consumes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from shared.messaging.events import Event


class ProductCreated(Event, type="product-created", topic="products", key="product_id"):
    """A new product in the catalogue. `version` grows with every change of one product."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "product_id": "c3a9e1f7-2b4d-4f6a-8e0c-5d7b9a1f3e28",
                    "name": "Brass gear",
                    "price_cents": 1250,
                    "version": 1,
                }
            ]
        }
    )

    product_id: str = Field(min_length=1, max_length=64, description="The product's id: the key.")
    name: str = Field(description="Its name in the catalogue.")
    price_cents: int = Field(description="Its price, in cents.")
    version: int = Field(1, description="Grows with every change of the product.")


PUBLISHES = (ProductCreated,)


class StockChanged(Event, type="stock-changed", topic="stock-changes", key="product_id"):
    """Consumed from `stock-changes` (published by inventory), keyed by product id."""

    product_id: str
    available: int
    version: int
