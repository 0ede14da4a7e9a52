"""Kafka entrypoints: the handlers of the events the user service consumes."""

from __future__ import annotations

from services.user import handlers
from shared.messaging.router import EventRouter

events = EventRouter()
events.on(handlers.notify_order_confirmed)  # a batch: one insert for a run of them
events.on(handlers.notify_order_rejected)
events.on(handlers.notify_order_cancelled)
