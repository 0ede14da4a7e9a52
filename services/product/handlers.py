from __future__ import annotations

import uuid

from sqlalchemy import select, update

from services.product.events import PRODUCT_CREATED, PRODUCTS, ProductCreated, StockChanged
from services.product.models import Product
from services.product.schemas import ProductIn
from shared.http import NotFound
from shared.unit_of_work import Unit


class ProductNotFound(NotFound):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"product {product_id} not found")
        self.product_id = product_id


def create_product(unit: Unit, command: ProductIn) -> Product:
    product = Product(
        id=str(uuid.uuid4()),
        name=command.name,
        price_cents=command.price_cents,
        in_stock=False,
        stock_version=0,
    )
    unit.session.add(product)
    unit.outbox.emit(
        PRODUCTS,
        PRODUCT_CREATED,
        product.id,
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


def apply_stock_changed(unit: Unit, change: StockChanged) -> None:
    """Keep `in_stock` from inventory's events, ignoring any older than what we hold."""
    unit.session.execute(
        update(Product)
        .where(Product.id == change.product_id, Product.stock_version < change.version)
        .values(in_stock=change.available > 0, stock_version=change.version)
    )
