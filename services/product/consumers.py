"""Kafka entrypoints: decode, call one handler."""

from __future__ import annotations

from services.product import handlers
from services.product.events import STOCK_CHANGED, StockChanged
from shared.envelope import Envelope
from shared.router import EventRouter
from shared.unit_of_work import Unit

events = EventRouter()


@events.on(STOCK_CHANGED, StockChanged)
def on_stock_changed(unit: Unit, _event: Envelope, payload: StockChanged) -> None:
    handlers.apply_stock_changed(unit, payload)
