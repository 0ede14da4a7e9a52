"""The product service's event contract: what it publishes and what it consumes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from shared.messaging.events import Event


class ProductCreated(Event, type="product-created", topic="products", key="product_id"):
    """A new product in the catalogue. `version` grows with every change of one product."""

    product_id: str
    name: str
    price_cents: int
    version: int = 1


PUBLISHES = (ProductCreated,)


class StockChanged(Event, type="stock-changed", topic="stock-changes", key="product_id"):
    """Consumed from `stock-changes` (published by inventory), keyed by product id."""

    product_id: str
    available: int
    version: int
