"""The product service's event contract: what it publishes and what it consumes."""

from __future__ import annotations

from pydantic import BaseModel

PRODUCTS = "products"
STOCK_CHANGES = "stock-changes"

PRODUCT_CREATED = "product-created"
STOCK_CHANGED = "stock-changed"


class ProductCreated(BaseModel):
    """Published on `products`, keyed by product id."""

    product_id: str
    name: str
    price_cents: int
    version: int = 1


class StockChanged(BaseModel):
    """Consumed from `stock-changes` (published by inventory), keyed by product id."""

    product_id: str
    available: int
    version: int
