"""The event API without a broker: Event classes that name their type, topic and key;
the outbox's `emit`, which takes all three from the payload's class; and the router,
which reads what a handler handles and what it asks for from its annotations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared.messaging import exporters
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.events import Event, is_event
from shared.messaging.outbox import row_to_envelope
from shared.messaging.router import ACCEPTED, EventRouter, Received
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.storage.db import make_sessions
from tests.helpers import deliver
from tests.schema import Base, Outbox

pytestmark = pytest.mark.unit


class Line(BaseModel):
    sku: str
    quantity: int


class Placed(Event, type="placed", topic="orders", key="order_id"):
    order_id: str
    lines: list[Line] = []


class Cancelled(Event, type="cancelled", topic="orders", key="order_id"):
    order_id: str


class Restocked(Event, type="restocked", topic="stock", key="sku"):
    sku: str
    available: int


class Numbered(Event, type="numbered", topic="numbers", key="number"):
    number: int


class Express(Placed, topic="express-orders"):
    """Inherits its parent's type and key, names another topic."""


class Abstract(Event):
    """A base of events: no type, topic or key, so no event of its own."""

    order_id: str


@pytest.fixture
def uow(sqlite_engine: Engine) -> UnitOfWork:
    Base.metadata.create_all(sqlite_engine)
    return UnitOfWork(make_sessions(sqlite_engine), Outbox, "/tests")


@pytest.fixture(autouse=True)
def _tracer() -> None:
    exporters.configure("test")


def outbox(uow: UnitOfWork) -> list[tuple[str, str, str, Any]]:
    """(topic, key, type, payload) of each row in the outbox, oldest first."""
    with uow() as unit:
        rows = unit.session.scalars(select(Outbox).order_by(Outbox.id))
        return [(row.topic, row.key, row.event_type, row_to_envelope(row).json()) for row in rows]


def rows(uow: UnitOfWork) -> list[Outbox]:
    with uow() as unit:
        return list(unit.session.scalars(select(Outbox).order_by(Outbox.id)))


def handler_of(model: type[Event]) -> Callable[..., None]:
    """A handler of `model` that does nothing."""

    def handle(payload: Any) -> None: ...

    handle.__annotations__ = {"payload": model, "return": None}
    return handle


def received(*payloads: Event) -> list[Received[Any]]:
    """Payloads as the consumer hands them to `dispatch`: each in an envelope of its type."""
    return [
        Received(Envelope(type=p.event_type, source="/t", key=p.event_key, data=dump_json(p)), p)
        for p in payloads
    ]


# Declaring events


def test_an_event_class_names_its_type_topic_and_key_field() -> None:
    assert (Placed.event_type, Placed.topic, Placed.key_field) == ("placed", "orders", "order_id")
    assert (Restocked.event_type, Restocked.topic, Restocked.key_field) == (
        "restocked",
        "stock",
        "sku",
    )


def test_the_event_key_is_the_value_of_the_key_field_as_text() -> None:
    assert Placed(order_id="o-1").event_key == "o-1"
    assert Restocked(sku="lamp", available=3).event_key == "lamp"
    assert Numbered(number=7).event_key == "7"


def test_a_subclass_inherits_what_it_does_not_name() -> None:
    assert (Express.event_type, Express.topic, Express.key_field) == (
        "placed",
        "express-orders",
        "order_id",
    )
    assert Placed.topic == "orders", "the parent keeps its own topic"


def test_only_a_class_with_type_topic_and_key_is_an_event() -> None:
    assert is_event(Placed) and is_event(Express)
    assert not is_event(Event)
    assert not is_event(Abstract)
    assert not is_event(Placed(order_id="o-1")), "an instance is no event class"
    assert not is_event(Line)


def test_a_key_that_is_not_a_field_is_refused() -> None:
    with pytest.raises(TypeError, match="'id' is not one of its fields"):

        class Bad(Event, type="bad", topic="bads", key="id"):
            order_id: str


@pytest.mark.parametrize(
    "keywords",
    [
        {"type": "bad"},
        {"type": "bad", "topic": "bads"},
        {"type": "bad", "key": "order_id"},
        {"topic": "bads", "key": "order_id"},
        {"topic": "bads"},
        {"key": "order_id"},
    ],
    ids=lambda keywords: "-".join(keywords),
)
def test_a_class_naming_only_some_of_type_topic_and_key_is_refused(
    keywords: dict[str, str],
) -> None:
    with pytest.raises(TypeError, match="type, topic and key together"):

        class Bad(Event, **keywords):
            order_id: str


def test_a_consumer_model_ignores_fields_it_does_not_declare() -> None:
    published = b'{"order_id": "o-1", "user_id": "u-1", "lines": [], "coupon": "X"}'

    assert Placed.model_validate_json(published) == Placed(order_id="o-1")


# Emitting


def test_emit_writes_the_row_on_the_class_topic_keyed_by_its_key_field(uow: UnitOfWork) -> None:
    with uow() as unit:
        placed = unit.outbox.emit(Placed(order_id="o-1", lines=[Line(sku="lamp", quantity=2)]))
        restocked = unit.outbox.emit(Restocked(sku="lamp", available=5))
        numbered = unit.outbox.emit(Numbered(number=42))

    assert outbox(uow) == [
        (
            "orders",
            "o-1",
            "placed",
            {"order_id": "o-1", "lines": [{"sku": "lamp", "quantity": 2}]},
        ),
        ("stock", "lamp", "restocked", {"sku": "lamp", "available": 5}),
        ("numbers", "42", "numbered", {"number": 42}),
    ]
    assert (placed.type, placed.key, placed.source) == ("placed", "o-1", "/tests")
    assert (restocked.type, restocked.key) == ("restocked", "lamp")
    assert numbered.key == "42"


def test_emit_of_a_subclass_goes_to_the_topic_it_names(uow: UnitOfWork) -> None:
    with uow() as unit:
        unit.outbox.emit(Express(order_id="o-2"))

    assert outbox(uow) == [("express-orders", "o-2", "placed", {"order_id": "o-2", "lines": []})]


def test_emit_puts_the_unit_of_works_prefix_before_the_topic(uow: UnitOfWork) -> None:
    prefixed = UnitOfWork(uow.sessions, Outbox, "/tests", topic_prefix="run-7.")
    with prefixed() as unit:
        unit.outbox.emit(Placed(order_id="o-1"))

    assert [topic for topic, *_ in outbox(uow)] == ["run-7.orders"]


def test_emit_takes_a_correlation_id_and_a_cause(uow: UnitOfWork) -> None:
    cause = Envelope(type="paid", source="/t", key="o-1", data=b"{}", correlation_id="saga-1")
    with uow() as unit:
        correlated = unit.outbox.emit(Placed(order_id="o-1"), correlation_id="saga-9")
        caused = unit.outbox.emit(Cancelled(order_id="o-1"), caused_by=cause)

    assert correlated.correlation_id == "saga-9"
    assert (caused.causation_id, caused.correlation_id) == (cause.id, "saga-1")
    assert [event.id for event in map(row_to_envelope, rows(uow))] == [correlated.id, caused.id]


def test_emit_refuses_the_old_topic_type_key_form(uow: UnitOfWork) -> None:
    with pytest.raises(TypeError), uow() as unit:
        unit.outbox.emit("orders", "placed", "o-1", Placed(order_id="o-1"))  # type: ignore[arg-type, call-arg]

    assert outbox(uow) == []


# Registering handlers


def test_on_registers_the_type_its_annotation_names_and_returns_the_handler() -> None:
    router = EventRouter()

    def handle(unit: Unit, placed: Placed) -> None: ...

    assert router.on(handle) is handle
    assert set(router.routes) == {"placed"}
    route = router.routes["placed"]
    assert (route.model, route.handler, route.batch) == (Placed, handle, False)


def test_on_works_as_a_decorator() -> None:
    router = EventRouter()

    @router.on
    def handle(restocked: Restocked) -> None: ...

    assert router.routes["restocked"].handler is handle
    assert router.models == [Restocked]


def test_a_sequence_of_an_event_makes_a_batch_handler() -> None:
    router = EventRouter()

    @router.on
    def handle(unit: Unit, placed: Sequence[Placed], causes: Sequence[Envelope]) -> None: ...

    route = router.routes["placed"]
    assert (route.model, route.batch) == (Placed, True)


def a_list(unit: Unit, placed: list[Placed]) -> None: ...


def a_tuple(unit: Unit, placed: tuple[Placed, ...]) -> None: ...


def varargs(unit: Unit, *placed: Placed) -> None: ...


def keyword_arguments(placed: Placed, **context: Any) -> None: ...


def a_received(item: Received[Placed]) -> None: ...


def a_sequence_of_received(items: Sequence[Received[Placed]]) -> None: ...


def optional_causes(placed: Sequence[Placed], causes: Sequence[Envelope | None] = ()) -> None: ...


def an_optional_event(unit: Unit, placed: Placed | None = None) -> None: ...


def a_list_of_envelopes(placed: Sequence[Placed], causes: list[Envelope] = []) -> None: ...  # noqa: B006


def an_optional_unit(placed: Placed, unit: Unit | None = None) -> None: ...


@pytest.mark.parametrize(
    "handler",
    [
        a_list,
        a_tuple,
        varargs,
        keyword_arguments,
        a_received,
        a_sequence_of_received,
        optional_causes,
        an_optional_event,
        a_list_of_envelopes,
        an_optional_unit,
    ],
    ids=lambda handler: handler.__name__,
)
def test_any_other_spelling_is_refused_naming_the_accepted_ones(
    handler: Callable[..., None],
) -> None:
    """One spelling each: a default does not make a misspelt batch or cause pass unseen."""
    router = EventRouter()

    with pytest.raises(TypeError) as refused:
        router.on(handler)

    assert ACCEPTED in str(refused.value)
    assert handler.__qualname__ in str(refused.value)
    assert router.routes == {}


def test_a_second_handler_for_one_type_is_refused() -> None:
    router = EventRouter()
    router.on(handler_of(Placed))

    with pytest.raises(ValueError, match="placed already has a handler"):
        router.on(handler_of(Placed))


def test_a_handler_with_an_unannotated_required_parameter_is_refused() -> None:
    def handle(unit: Unit, placed: Placed, extra) -> None: ...  # type: ignore[no-untyped-def]

    def with_unknown_annotation(placed: Placed, count: int) -> None: ...

    for handler, name in ((handle, "extra"), (with_unknown_annotation, "count")):
        with pytest.raises(TypeError, match=f"nothing to pass as '{name}'") as refused:
            EventRouter().on(handler)
        assert ACCEPTED in str(refused.value)


def test_a_parameter_with_a_default_and_nothing_to_pass_keeps_its_default(
    uow: UnitOfWork,
) -> None:
    router = EventRouter()
    calls: list[tuple[Placed, str]] = []

    @router.on
    def handle(placed: Placed, note="as declared") -> None:  # type: ignore[no-untyped-def]
        calls.append((placed, note))

    with uow() as unit:
        deliver(router, unit, Placed(order_id="o-1"))

    assert calls == [(Placed(order_id="o-1"), "as declared")]


def test_a_handler_naming_two_event_types_is_refused() -> None:
    def two(placed: Placed, cancelled: Cancelled) -> None: ...

    def two_in_a_batch(placed: Sequence[Placed], cancelled: Sequence[Cancelled]) -> None: ...

    for handler in (two, two_in_a_batch):
        with pytest.raises(TypeError, match="names two event types"):
            EventRouter().on(handler)


def test_a_handler_mixing_one_event_and_a_batch_is_refused() -> None:
    def mixed(placed: Placed, causes: Sequence[Envelope]) -> None: ...

    with pytest.raises(TypeError, match="mixes one event and a batch"):
        EventRouter().on(mixed)


def only_the_unit(unit: Unit) -> None: ...


def only_the_envelope(unit: Unit, event: Envelope) -> None: ...


def an_abstract_event(unit: Unit, order: Abstract | None = None) -> None: ...


def a_plain_model(unit: Unit, line: Line | None = None) -> None: ...


@pytest.mark.parametrize(
    "handler",
    [only_the_unit, only_the_envelope, an_abstract_event, a_plain_model],
    ids=lambda handler: handler.__name__,
)
def test_a_handler_without_an_event_parameter_is_refused(handler: Callable[..., None]) -> None:
    with pytest.raises(TypeError, match="no parameter is annotated with an Event"):
        EventRouter().on(handler)


def test_a_refused_handler_leaves_the_router_as_it_was() -> None:
    router = EventRouter()

    def two(placed: Placed, cancelled: Cancelled) -> None: ...

    with pytest.raises(TypeError):
        router.on(two)

    assert router.routes == {} and router.topics == []


# Topics


def test_the_routers_topics_follow_its_handlers_sorted_and_once_each() -> None:
    router = EventRouter()
    assert router.topics == []

    router.on(handler_of(Restocked))
    assert router.topics == ["stock"]

    router.on(handler_of(Placed))
    router.on(handler_of(Cancelled))  # a second type on `orders`
    assert router.topics == ["orders", "stock"]

    router.on(handler_of(Numbered))
    assert router.topics == ["numbers", "orders", "stock"]


# Calling handlers


def test_a_per_event_handler_gets_unit_session_envelope_and_payload_by_annotation(
    uow: UnitOfWork,
) -> None:
    router = EventRouter()
    calls: list[tuple[Any, ...]] = []

    @router.on  # names and order are the handler's own
    def handle(session: Session, payload: Placed, e: Envelope, u: Unit) -> None:
        calls.append((session, payload, e, u))

    first, second = Placed(order_id="o-1"), Placed(order_id="o-2")
    with uow() as unit:
        envelopes = deliver(router, unit, first, second)

    assert [(e.type, e.key) for e in envelopes] == [("placed", "o-1"), ("placed", "o-2")]
    assert calls == [
        (unit.session, first, envelopes[0], unit),
        (unit.session, second, envelopes[1], unit),
    ]


def test_a_sequence_handler_gets_each_run_of_its_type_with_the_envelopes(uow: UnitOfWork) -> None:
    router = EventRouter()
    calls: list[tuple[str, list[str], list[str]]] = []

    @router.on
    def placed(unit: Unit, orders: Sequence[Placed], causes: Sequence[Envelope]) -> None:
        assert isinstance(unit, Unit)
        calls.append(("placed", [o.order_id for o in orders], [c.key for c in causes]))

    @router.on
    def cancelled(event: Envelope, cancellation: Cancelled) -> None:
        calls.append(("cancelled", [cancellation.order_id], [event.key]))

    run = received(
        Placed(order_id="a"),
        Placed(order_id="b"),
        Cancelled(order_id="c"),
        Placed(order_id="d"),
    )
    with uow() as unit:
        router.dispatch(unit, run)

    assert calls == [
        ("placed", ["a", "b"], ["a", "b"]),
        ("cancelled", ["c"], ["c"]),
        ("placed", ["d"], ["d"]),
    ]


def test_a_batch_handler_with_a_default_for_its_causes_gets_them_from_the_router(
    uow: UnitOfWork,
) -> None:
    """The shape of a service's batch handler (inventory's reserve_stock): the default
    is for callers that have no envelopes, never for the router."""
    router = EventRouter()
    calls: list[tuple[Unit, list[Restocked], list[Envelope]]] = []

    def restock(unit: Unit, changes: Sequence[Restocked], causes: Sequence[Envelope] = ()) -> None:
        calls.append((unit, list(changes), list(causes)))

    router.on(restock)
    changes = [Restocked(sku="lamp", available=1), Restocked(sku="desk", available=2)]
    run = received(*changes)
    with uow() as unit:
        router.dispatch(unit, run)

    assert router.routes["restocked"].batch
    assert calls == [(unit, changes, [item.event for item in run])]


def test_positional_only_parameters_are_passed_by_position(uow: UnitOfWork) -> None:
    router = EventRouter()
    calls: list[tuple[Unit, Placed]] = []

    @router.on
    def handle(u: Unit, placed: Placed, /) -> None:
        calls.append((u, placed))

    with uow() as unit:
        deliver(router, unit, Placed(order_id="o-1"))

    assert calls == [(unit, Placed(order_id="o-1"))]


def test_what_a_per_event_handler_emits_is_caused_by_the_event(uow: UnitOfWork) -> None:
    router = EventRouter()

    @router.on
    def cancel_on_place(unit: Unit, placed: Placed) -> None:
        unit.outbox.emit(Cancelled(order_id=placed.order_id))

    with uow() as unit:
        [cause] = deliver(router, unit, Placed(order_id="o-1"), correlation_id="saga-3")

    [row] = rows(uow)
    emitted = row_to_envelope(row)
    assert (row.topic, emitted.type, emitted.key) == ("orders", "cancelled", "o-1")
    assert (emitted.causation_id, emitted.correlation_id) == (cause.id, "saga-3")
