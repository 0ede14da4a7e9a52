"""Kafka entrypoints: decode, call one handler. Every event of an order, including the
service's own (read back from `orders`), is filed in the order's chain."""

from __future__ import annotations

from services.order import handlers
from services.order.events import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    ORDER_REJECTED,
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
from shared.consumer import EventRouter
from shared.envelope import Envelope
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


def on_order_event(unit: Unit, event: Envelope, payload: OrderRef) -> None:
    handlers.record_event(unit, event, payload.order_id)


for _type in (ORDER_CREATED, ORDER_CANCELLED, ORDER_CONFIRMED, ORDER_REJECTED, STOCK_RELEASED):
    events.on(_type, OrderRef)(on_order_event)


@events.on(USER_REGISTERED, UserRegistered)
def on_user_registered(unit: Unit, _event: Envelope, payload: UserRegistered) -> None:
    handlers.remember_user(unit, payload)


@events.on(PRODUCT_CREATED, ProductCreated)
def on_product_created(unit: Unit, _event: Envelope, payload: ProductCreated) -> None:
    handlers.remember_product(unit, payload)
