"""Kafka entrypoints: decode, call one handler."""

from __future__ import annotations

from services.inventory import handlers
from services.inventory.events import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    ORDER_REJECTED,
    PRODUCT_CREATED,
    OrderCancelled,
    OrderCreated,
    ProductCreated,
)
from shared.envelope import Envelope
from shared.router import EventRouter
from shared.unit_of_work import Unit

events = EventRouter()
events.ignore(ORDER_CONFIRMED, ORDER_REJECTED)


@events.on(PRODUCT_CREATED, ProductCreated)
def on_product_created(unit: Unit, _event: Envelope, payload: ProductCreated) -> None:
    handlers.register_product(unit, payload)


@events.on(ORDER_CREATED, OrderCreated)
def on_order_created(unit: Unit, _event: Envelope, payload: OrderCreated) -> None:
    handlers.reserve_stock(unit, payload)


@events.on(ORDER_CANCELLED, OrderCancelled)
def on_order_cancelled(unit: Unit, _event: Envelope, payload: OrderCancelled) -> None:
    handlers.release_stock(unit, payload)
