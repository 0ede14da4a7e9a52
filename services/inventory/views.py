"""The inventory service's derived view: which products it knows, rebuilt from the
`products` topic by `python -m tools.replay inventory` (docs/replay.md)."""

from __future__ import annotations

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from services.inventory import handlers
from services.inventory.models import Reservation, Stock
from shared.messaging.replay import View


def _reset_products(session: Session) -> None:
    """Forget the products whose stock row holds nothing of the source of truth: never
    stocked, never reserved (an operator's quantities are kept; replay re-adds the rest)."""
    session.execute(
        delete(Stock).where(
            Stock.available == 0,
            Stock.reserved == 0,
            Stock.version == 0,
            ~exists().where(Reservation.product_id == Stock.product_id),
        )
    )


def _products(session: Session) -> list[tuple[object, ...]]:
    return [(row,) for row in session.scalars(select(Stock.product_id).order_by(Stock.product_id))]


VIEWS = (
    View(
        name="known-products",
        tables=("stock.product_id",),
        handlers=(handlers.register_product,),
        reset=_reset_products,
        rows=_products,
        about="a stock row for every product, from product's product-created",
    ),
)
