"""Kafka entrypoints: the handlers of the events the product service consumes."""

from __future__ import annotations

from services.product import handlers
from shared.messaging.router import EventRouter
from shared.runtime.keys import learn_keys

events = EventRouter()
events.on(learn_keys)
events.on(handlers.apply_stock_changed)  # a batch: one statement for a run of them
