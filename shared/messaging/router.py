"""Pub/sub as easy to read as an in-process event bus: one decorator per handler.

    events = EventRouter()

    @events.on                                  # one event at a time
    def reserve_stock(unit: Unit, order: OrderCreated) -> None: ...

    @events.on                                  # a run: consecutive events of the type
    def apply_changes(unit: Unit, changes: Sequence[StockChanged]) -> None: ...

The router reads the handler's annotations, and passes each parameter by what it is
annotated with, whatever its name:

    Unit                the unit of work (session + outbox) of the transaction
    Session             its session
    SomeEvent           the payload (an `Event` subclass: the type handled)
    Envelope            the payload's envelope (id, time, causation, place on Kafka)
    Sequence[SomeEvent] a run's payloads
    Sequence[Envelope]  the run's envelopes, in the same order (the causes of what the
                        handler emits for each: `emit(..., caused_by=envelope)`)

A handler takes one event or a run, never both. Any other annotation naming an event,
an envelope, the unit or the session (a `list[...]`, `*payloads`, `X | None`) is refused
with a TypeError, as is a parameter the router has nothing to pass unless it has a
default. The event type handled says which topic the service subscribes to.

The consumer loop (shared.messaging.consumer) decodes each record once, claims a fetched
run of events in one statement and calls `dispatch` inside that transaction."""

from __future__ import annotations

import collections.abc
import inspect
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from shared.messaging import spans, tracing
from shared.messaging.envelope import Envelope
from shared.messaging.events import Event, is_event
from shared.messaging.unit_of_work import Unit

P = TypeVar("P")
H = TypeVar("H", bound=Callable[..., Any])

ACCEPTED = (
    "Unit, Session, an Event subclass (the payload), Envelope, Sequence[AnEvent] (a run's"
    " payloads) or Sequence[Envelope] (the run's envelopes)"
)
"""What a handler's parameters may be annotated with."""


@dataclass(frozen=True, slots=True)
class Received(Generic[P]):
    """A consumed event with its validated payload (and its Kafka record, when it has one)."""

    event: Envelope
    payload: P
    message: Any = None


@dataclass(frozen=True, slots=True)
class Route:
    model: type[Event]
    handler: Callable[..., None]
    batch: bool
    """The handler gets every consecutive event of its type at once."""
    arguments: tuple[tuple[bool, str, str], ...]
    """(positional, parameter, what): `what` is what `_value` takes."""

    @property
    def event_type(self) -> str:
        return self.model.event_type

    def call(self, unit: Unit, run: Sequence[Received[Any]]) -> None:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for positional, name, what in self.arguments:
            if positional:
                args.append(_value(what, unit, run))
            else:
                kwargs[name] = _value(what, unit, run)
        self.handler(*args, **kwargs)


class EventRouter:
    """Maps event types to handlers; the topics of their models are the subscriptions."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def on(self, handler: H) -> H:
        """Register `handler` for the event type its annotations name; return it as is."""
        route = _route_for(handler)
        if route.event_type in self.routes:
            raise ValueError(f"{route.event_type} already has a handler")
        self.routes[route.event_type] = route
        return handler

    @property
    def topics(self) -> list[str]:
        """The topics this router's handlers consume, which the service subscribes to."""
        return sorted({route.model.topic for route in self.routes.values()})

    @property
    def models(self) -> list[type[Event]]:
        return [route.model for route in self.routes.values()]

    def dispatch(
        self,
        unit: Unit,
        received: Sequence[Received[Any]],
        underway: list[Any] | None = None,
        timed: Callable[[str, float], None] | None = None,
    ) -> None:
        """Run the handlers of `received` in order, inside `unit`'s transaction.

        A per-event handler runs in the event's trace context, as its cause; a batch
        handler gets each run of consecutive events of its type in one call. `underway`,
        if given, holds the one event a per-event handler is handling (empty while a
        batch handler runs), so that a caller can tell which event a failure belongs to.
        `timed`, if given, gets each handler call's event type and seconds once it returns."""
        clock = time.perf_counter
        i, n = 0, len(received)
        while i < n:
            route = self.routes[received[i].event.type]
            if underway is not None:
                underway[:] = [] if route.batch else [received[i]]
            if route.batch:
                j = i + 1
                while j < n and received[j].event.type == route.event_type:
                    j += 1
                began = clock()
                with spans.consuming_batch([item.event for item in received[i:j]]):
                    route.call(unit, received[i:j])
                if timed is not None:
                    timed(route.event_type, clock() - began)
                i = j
                continue
            with tracing.consuming(received[i].event):
                began = clock()
                route.call(unit, received[i : i + 1])
                if timed is not None:
                    timed(route.event_type, clock() - began)
            i += 1


def _value(what: str, unit: Unit, run: Sequence[Received[Any]]) -> Any:
    if what == "unit":
        return unit
    if what == "session":
        return unit.session
    if what == "event":
        return run[0].event
    if what == "payload":
        return run[0].payload
    if what == "events":
        return [item.event for item in run]
    return [item.payload for item in run]  # "payloads"


def _route_for(handler: Callable[..., None]) -> Route:
    """Read what `handler` handles and what it asks for from its annotations."""
    name = handler.__qualname__
    hints = typing.get_type_hints(handler)
    model: type[Event] | None = None
    batch: bool | None = None
    arguments: list[tuple[bool, str, str]] = []
    for param in inspect.signature(handler).parameters.values():
        hint = hints.get(param.name)
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(
                f"{name}: the router passes no *args or **kwargs ({param.name!r});"
                f" annotate each parameter as one of: {ACCEPTED}"
            )
        taken = _what(hint)
        if taken is None:
            if _names_what_is_passed(hint):
                raise TypeError(
                    f"{name}: {param.name!r} is annotated {_shown(hint)}, which the router"
                    f" does not pass; it passes {ACCEPTED}"
                )
            if param.default is inspect.Parameter.empty:
                raise TypeError(
                    f"{name}: nothing to pass as {param.name!r}; the router passes {ACCEPTED}"
                )
            continue  # keeps its default
        what, found, many = taken
        if found is not None:
            if model is not None and found is not model:
                raise TypeError(f"{name} names two event types")
            model = found
        if many is not None:
            if batch is not None and batch != many:
                raise TypeError(f"{name} mixes one event and a batch")
            batch = many
        positional = param.kind is inspect.Parameter.POSITIONAL_ONLY
        arguments.append((positional, param.name, what))
    if model is None:
        raise TypeError(f"{name}: no parameter is annotated with an Event")
    return Route(model, handler, bool(batch), tuple(arguments))


def _what(hint: Any) -> tuple[str, type[Event] | None, bool | None] | None:
    """What to pass for a parameter annotated `hint`, (value, its event model, batch?),
    if it is one of the accepted annotations."""
    if hint is Unit:
        return "unit", None, None
    if hint is Session:
        return "session", None, None
    if hint is Envelope:
        return "event", None, False
    if is_event(hint):
        return "payload", hint, False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is collections.abc.Sequence and len(args) == 1:
        if args[0] is Envelope:
            return "events", None, True
        if is_event(args[0]):
            return "payloads", args[0], True
    return None


def _names_what_is_passed(hint: Any) -> bool:
    """Whether `hint` names, anywhere inside it, something the router passes."""
    if hint in (Unit, Session, Envelope, Received) or is_event(hint):
        return True
    return any(_names_what_is_passed(arg) for arg in typing.get_args(hint))


def _shown(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)
