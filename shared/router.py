"""Pub/sub as easy to read as an in-process event bus: handlers registered per event type.

    events = EventRouter()

    @events.on("order-created", OrderCreated)
    def on_order_created(unit, event, payload):
        handlers.reserve_stock(unit, payload)

The consumer loop (shared.consumer) decodes each record, validates its payload against the
model, and calls the handler inside the transaction that claims the event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.envelope import Envelope, InvalidEnvelope
from shared.unit_of_work import Unit

Handler = Callable[[Unit, Envelope, Any], None]


class UnknownEventType(InvalidEnvelope):
    """A type on a subscribed topic that is neither handled nor ignored."""


@dataclass(frozen=True, slots=True)
class Route:
    event_type: str
    model: type[BaseModel]
    handler: Handler


class EventRouter:
    """Maps event types to handlers. Types on a subscribed topic that this service does
    not handle must be declared with `ignore`; anything else is an unknown type."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.ignored: set[str] = set()

    def on(self, event_type: str, model: type[BaseModel]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if event_type in self.routes:
                raise ValueError(f"{event_type} already has a handler")
            self.routes[event_type] = Route(event_type, model, handler)
            return handler

        return register

    def ignore(self, *event_types: str) -> None:
        self.ignored.update(event_types)
