"""Kafka entrypoints: decode, call one handler."""

from __future__ import annotations

from collections.abc import Sequence

from services.user import handlers
from services.user.events import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    ORDER_REJECTED,
    OrderCancelled,
    OrderConfirmed,
    OrderRejected,
)
from shared.messaging.envelope import Envelope
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Unit

events = EventRouter()
events.ignore(ORDER_CREATED)


@events.on(ORDER_CONFIRMED, OrderConfirmed, batch=True)
def on_order_confirmed(unit: Unit, received: Sequence[Received[OrderConfirmed]]) -> None:
    handlers.notify_order_confirmed(unit, *(r.payload for r in received))


@events.on(ORDER_REJECTED, OrderRejected)
def on_order_rejected(unit: Unit, _event: Envelope, payload: OrderRejected) -> None:
    handlers.notify_order_rejected(unit, payload)


@events.on(ORDER_CANCELLED, OrderCancelled)
def on_order_cancelled(unit: Unit, _event: Envelope, payload: OrderCancelled) -> None:
    handlers.notify_order_cancelled(unit, payload)
