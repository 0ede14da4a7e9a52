"""Pub/sub as easy to read as an in-process event bus: handlers registered per event type.

    events = EventRouter()

    @events.on("order-created", OrderCreated)
    def on_order_created(unit, event, payload):
        handlers.reserve_stock(unit, payload)

    @events.on("stock-changed", StockChanged, batch=True)
    def on_stock_changed(unit, received):       # consecutive events of the type, in order
        handlers.apply_stock_changes(unit, [r.payload for r in received])

The consumer loop (shared.messaging.consumer) decodes each record once, validates its
payload against
the model, claims a fetched run of events in one statement and calls `dispatch` inside
that transaction. Tests call `dispatch` directly to drive handlers without a broker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared.messaging import tracing
from shared.messaging.envelope import Envelope, InvalidEnvelope
from shared.messaging.unit_of_work import Unit

P = TypeVar("P")
Handler = Callable[[Unit, Envelope, Any], None]
BatchHandler = Callable[[Unit, Sequence["Received[Any]"]], None]


class UnknownEventType(InvalidEnvelope):
    """A type on a subscribed topic that is neither handled nor ignored."""


@dataclass(frozen=True, slots=True)
class Received(Generic[P]):
    """A consumed event with its validated payload (and its Kafka record, when it has one)."""

    event: Envelope
    payload: P
    message: Any = None


@dataclass(frozen=True, slots=True)
class Route:
    event_type: str
    model: type[BaseModel]
    handler: Callable[..., None]
    batch: bool = False
    """The handler takes `(unit, received)`: every consecutive event of its type at once,
    and names each one as the cause of what it emits (`emit(..., caused_by=event)`)."""


class EventRouter:
    """Maps event types to handlers. Types on a subscribed topic that this service does
    not handle must be declared with `ignore`; anything else is an unknown type."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.ignored: set[str] = set()

    def on(
        self, event_type: str, model: type[BaseModel], *, batch: bool = False
    ) -> Callable[[Callable[..., None]], Callable[..., None]]:
        def register(handler: Callable[..., None]) -> Callable[..., None]:
            if event_type in self.routes:
                raise ValueError(f"{event_type} already has a handler")
            self.routes[event_type] = Route(event_type, model, handler, batch)
            return handler

        return register

    def ignore(self, *event_types: str) -> None:
        self.ignored.update(event_types)

    def dispatch(
        self, unit: Unit, received: Sequence[Received[Any]], underway: list[Any] | None = None
    ) -> None:
        """Run the handlers of `received` in order, inside `unit`'s transaction.

        A per-event handler runs in the event's trace context, as its cause; a batch
        handler gets each run of consecutive events of its type in one call. `underway`,
        if given, holds the one event a per-event handler is handling (empty while a
        batch handler runs), so that a caller can tell which event a failure belongs to."""
        i, n = 0, len(received)
        while i < n:
            route = self.routes[received[i].event.type]
            if underway is not None:
                underway[:] = [] if route.batch else [received[i]]
            if route.batch:
                j = i + 1
                while j < n and received[j].event.type == route.event_type:
                    j += 1
                route.handler(unit, received[i:j])
                i = j
                continue
            item = received[i]
            with tracing.consuming(item.event):
                route.handler(unit, item.event, item.payload)
            i += 1
