"""The product service's derived view: each product's availability, rebuilt from the
`stock-changes` topic by `python -m tools.replay product` (docs/replay.md)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.product import handlers
from services.product.models import Product
from shared.messaging.replay import View


def _reset_availability(session: Session) -> None:
    session.execute(update(Product).values(in_stock=False, stock_version=0))


def _availability(session: Session) -> list[tuple[object, ...]]:
    query = select(Product.id, Product.in_stock, Product.stock_version).order_by(Product.id)
    return [tuple(row) for row in session.execute(query)]


VIEWS = (
    View(
        name="availability",
        tables=("products.in_stock", "products.stock_version"),
        handlers=(handlers.apply_stock_changed,),
        reset=_reset_availability,
        rows=_availability,
        about="in stock or not, from inventory's stock-changed",
    ),
)
