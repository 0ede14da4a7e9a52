"""Kafka entrypoints: the handlers of the events inventory consumes."""

from __future__ import annotations

from services.inventory import handlers
from shared.messaging.router import EventRouter
from shared.runtime.keys import learn_keys

events = EventRouter()
events.on(learn_keys)
events.on(handlers.register_product)  # a batch
events.on(handlers.reserve_stock)  # a batch: every fetched order-created in one go
events.on(handlers.release_stock)
