from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import bindparam, select, update

from services.product.events import ProductCreated, StockChanged
from services.product.models import Product
from shared.errors import NotFound
from shared.messaging.unit_of_work import Unit


class ProductNotFound(NotFound):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"product {product_id} not found")
        self.product_id = product_id


def create_product(unit: Unit, name: str, price_cents: int) -> Product:
    product = Product(
        id=str(uuid.uuid4()),
        name=name,
        price_cents=price_cents,
        in_stock=False,
        stock_version=0,
    )
    unit.session.add(product)
    unit.outbox.emit(
        ProductCreated(product_id=product.id, name=product.name, price_cents=product.price_cents),
    )
    return product


def get_product(unit: Unit, product_id: str) -> Product:
    product = unit.session.get(Product, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    return product


def list_products(unit: Unit) -> list[Product]:
    return list(unit.session.scalars(select(Product).order_by(Product.created_at, Product.id)))


def apply_stock_changed(unit: Unit, changes: Sequence[StockChanged]) -> None:
    """Keep `in_stock` from inventory's events, ignoring any older than what we hold; a run
    of changes is one statement, with the newest change of each product."""
    newest: dict[str, StockChanged] = {}
    for change in changes:
        if change.product_id not in newest or newest[change.product_id].version < change.version:
            newest[change.product_id] = change
    unit.session.connection().execute(
        _APPLY_STOCK,
        [
            {"b_id": c.product_id, "b_version": c.version, "b_in_stock": c.available > 0}
            for c in newest.values()
        ],
    )


_table = Product.__table__
_APPLY_STOCK = (
    update(_table)
    .where(_table.c.id == bindparam("b_id"), _table.c.stock_version < bindparam("b_version"))
    .values(in_stock=bindparam("b_in_stock"), stock_version=bindparam("b_version"))
)
