"""Kafka entrypoints: decode, call one handler."""

from __future__ import annotations

from collections.abc import Sequence

from services.product import handlers
from services.product.events import STOCK_CHANGED, StockChanged
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Unit

events = EventRouter()


@events.on(STOCK_CHANGED, StockChanged, batch=True)
def on_stock_changed(unit: Unit, received: Sequence[Received[StockChanged]]) -> None:
    handlers.apply_stock_changed(unit, *(r.payload for r in received))
