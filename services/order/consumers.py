"""Kafka entrypoints: decode, call one handler. Inventory's events about an order are filed
in the order's chain (the service's own are filed as the outbox relay publishes them)."""

from __future__ import annotations

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
from shared.envelope import Envelope
from shared.router import EventRouter
from shared.unit_of_work import Unit

events = EventRouter()


@events.on(STOCK_RESERVED, StockReserved)
def on_stock_reserved(unit: Unit, event: Envelope, payload: StockReserved) -> None:
    handlers.record_event(unit, event, payload.order_id)
    handlers.confirm_order(unit, payload)


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
