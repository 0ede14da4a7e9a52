"""Kafka entrypoints: decode, call one handler. Inventory's events about an order are filed
in the order's chain (the service's own are filed as the outbox relay publishes them)."""

from __future__ import annotations

from collections.abc import Sequence

from services.order import handlers
from services.order.events import (
    PRODUCT_CREATED,
    STOCK_RELEASED,
    STOCK_RESERVED,
    STOCK_SHORTAGE,
    USER_REGISTERED,
    OrderRef,
    ProductCreated,
    StockReserved,
    StockShortage,
    UserRegistered,
)
from shared.messaging.envelope import Envelope
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Unit

events = EventRouter()


@events.on(STOCK_RESERVED, StockReserved, batch=True)
def on_stock_reserved(unit: Unit, received: Sequence[Received[StockReserved]]) -> None:
    handlers.file_events(unit.session, [(r.event, r.payload.order_id) for r in received])
    handlers.confirm_order(unit, *(r.payload for r in received), causes=[r.event for r in received])


@events.on(STOCK_SHORTAGE, StockShortage)
def on_stock_shortage(unit: Unit, event: Envelope, payload: StockShortage) -> None:
    handlers.record_event(unit, event, payload.order_id)
    handlers.reject_order(unit, payload)


@events.on(STOCK_RELEASED, OrderRef)
def on_stock_released(unit: Unit, event: Envelope, payload: OrderRef) -> None:
    handlers.record_event(unit, event, payload.order_id)


@events.on(USER_REGISTERED, UserRegistered)
def on_user_registered(unit: Unit, _event: Envelope, payload: UserRegistered) -> None:
    handlers.remember_user(unit, payload)


@events.on(PRODUCT_CREATED, ProductCreated)
def on_product_created(unit: Unit, _event: Envelope, payload: ProductCreated) -> None:
    handlers.remember_product(unit, payload)
