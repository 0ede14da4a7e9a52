"""Pub/sub as easy to read as an in-process event bus: one decorator per handler.

    events = EventRouter()

    @events.on
    def reserve_stock(unit: Unit, order: OrderCreated) -> None: ...

    @events.on                                  # a batch: consecutive events of the type
    def apply_changes(unit: Unit, changes: Sequence[StockChanged]) -> None: ...

The router reads the handler's annotations: the `Event` subclass (or a sequence of it)
says which type it handles, and so which topic the service subscribes to. It passes by
name whatever the handler asks for: the `Unit`, its `Session`, the `Envelope` (or, in a
batch, the envelopes, as the causes of what the handler emits) and the payload. A handler
with `*payloads: OrderCreated` gets a run of payloads positionally.

The consumer loop (shared.messaging.consumer) decodes each record once, claims a fetched
run of events in one statement and calls `dispatch` inside that transaction. Tests call
`dispatch` (or `deliver`) to drive handlers without a broker."""

from __future__ import annotations

import collections.abc
import inspect
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from shared.messaging import tracing
from shared.messaging.envelope import Envelope
from shared.messaging.events import Event, is_event
from shared.messaging.unit_of_work import Unit

P = TypeVar("P")
H = TypeVar("H", bound=Callable[..., Any])

_SEQUENCES = {collections.abc.Sequence, list, tuple}


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
    arguments: tuple[tuple[str, str, str], ...]
    """(how, parameter, what): `how` is "arg", "star" or "kw"; `what` is what `_value`
    takes."""

    @property
    def event_type(self) -> str:
        return self.model.event_type

    def call(self, unit: Unit, run: Sequence[Received[Any]]) -> None:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for how, name, what in self.arguments:
            value = _value(what, unit, run)
            if how == "arg":
                args.append(value)
            elif how == "star":
                args.extend(value)
            else:
                kwargs[name] = value
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
                with tracing.consuming_batch([item.event for item in received[i:j]]):
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

    def deliver(self, unit: Unit, *payloads: Event, **envelope: Any) -> list[Envelope]:
        """Hand payloads to their handlers as if consumed, each in a fresh envelope (for
        tests and tools); `envelope` may set `correlation_id` and `caused_by`."""
        received = [
            Received(
                tracing.new_event(
                    p.event_type, p.event_key, p, source="/test", **_envelope_fields(envelope)
                ),
                p,
            )
            for p in payloads
        ]
        self.dispatch(unit, received)
        return [item.event for item in received]


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
    if what == "payloads":
        return [item.payload for item in run]
    if what == "one":
        return run[0]
    return run  # "received"


def _envelope_fields(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - {"correlation_id", "caused_by"}
    if unknown:
        raise TypeError(f"deliver() does not set {sorted(unknown)}")
    return fields


def _route_for(handler: Callable[..., None]) -> Route:
    """Read what `handler` handles and what it asks for from its annotations."""
    hints = typing.get_type_hints(handler)
    model: type[Event] | None = None
    batch: bool | None = None
    arguments: list[tuple[str, str, str]] = []
    for param in inspect.signature(handler).parameters.values():
        hint = hints.get(param.name)
        star = param.kind is inspect.Parameter.VAR_POSITIONAL
        what, found, many = _what(hint, star)
        if what is None:
            if param.kind is inspect.Parameter.VAR_KEYWORD or star:
                continue
            if param.default is inspect.Parameter.empty or (
                param.kind is not inspect.Parameter.KEYWORD_ONLY and _has_star(handler)
            ):  # a default before *payloads would take the first payload
                raise TypeError(f"{handler.__qualname__}: nothing to pass as {param.name!r}")
            continue
        if found is not None:
            if model is not None and found is not model:
                raise TypeError(f"{handler.__qualname__} names two event types")
            model = found
        if many is not None:
            if batch is not None and batch != many:
                raise TypeError(f"{handler.__qualname__} mixes one event and a batch")
            batch = many
        positional = param.kind is inspect.Parameter.POSITIONAL_ONLY or (
            param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and _has_star(handler)
        )
        how = "star" if star else "arg" if positional else "kw"
        arguments.append((how, param.name, what))
    if model is None:
        raise TypeError(f"{handler.__qualname__}: no parameter is annotated with an Event")
    return Route(model, handler, bool(batch), tuple(arguments))


def _what(hint: Any, star: bool) -> tuple[str | None, type[Event] | None, bool | None]:
    """What to pass for a parameter annotated `hint`: (value, its event model, batch?)."""
    if hint is Unit:
        return "unit", None, None
    if hint is Session:
        return "session", None, None
    if hint is Envelope:
        return ("events", None, True) if star else ("event", None, False)
    if is_event(hint):
        return ("payloads", hint, True) if star else ("payload", hint, False)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Received and args and is_event(args[0]):
        return "one", args[0], False
    if origin in _SEQUENCES and args:
        inner = _unless_none(args[0])
        if inner is Envelope:
            return "events", None, True
        if is_event(inner):
            return "payloads", inner, True
        if typing.get_origin(inner) is Received and is_event(typing.get_args(inner)[0]):
            return "received", typing.get_args(inner)[0], True
    return None, None, None


def _unless_none(hint: Any) -> Any:
    """`X` for `X | None`; anything else as it is."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return (
        args[0]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
        else hint
    )


def _has_star(handler: Callable[..., None]) -> bool:
    return any(
        p.kind is inspect.Parameter.VAR_POSITIONAL
        for p in inspect.signature(handler).parameters.values()
    )
