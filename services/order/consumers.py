"""Kafka entrypoints. Inventory's events about an order are filed in the order's chain
(the service's own are filed as the outbox relay publishes them)."""

from __future__ import annotations

from collections.abc import Sequence

from services.order import chain, handlers
from services.order.events import StockReleased, StockReserved, StockShortage
from shared.messaging.envelope import Envelope
from shared.messaging.router import EventRouter
from shared.messaging.unit_of_work import Unit
from shared.runtime.keys import learn_keys

events = EventRouter()
events.on(learn_keys)
events.on(handlers.remember_user)
events.on(handlers.remember_product)


@events.on
def on_stock_reserved(
    unit: Unit, answers: Sequence[StockReserved], causes: Sequence[Envelope]
) -> None:
    chain.file_events(unit.session, [(e, a.order_id) for e, a in zip(causes, answers, strict=True)])
    handlers.confirm_order(unit, answers, causes)


@events.on
def on_stock_shortage(unit: Unit, event: Envelope, shortage: StockShortage) -> None:
    chain.record_event(unit, event, shortage.order_id)
    handlers.reject_order(unit, shortage)


@events.on
def on_stock_released(unit: Unit, event: Envelope, released: StockReleased) -> None:
    chain.record_event(unit, event, released.order_id)
