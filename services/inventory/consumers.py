"""Kafka entrypoints: decode, call one handler."""

from __future__ import annotations

from collections.abc import Sequence

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
from shared.messaging.envelope import Envelope
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Unit

events = EventRouter()
events.ignore(ORDER_CONFIRMED, ORDER_REJECTED)


@events.on(PRODUCT_CREATED, ProductCreated)
def on_product_created(unit: Unit, _event: Envelope, payload: ProductCreated) -> None:
    handlers.register_product(unit, payload)


@events.on(ORDER_CREATED, OrderCreated, batch=True)
def on_order_created(unit: Unit, received: Sequence[Received[OrderCreated]]) -> None:
    handlers.reserve_stock(unit, *(r.payload for r in received), causes=[r.event for r in received])


@events.on(ORDER_CANCELLED, OrderCancelled)
def on_order_cancelled(unit: Unit, _event: Envelope, payload: OrderCancelled) -> None:
    handlers.release_stock(unit, payload)
