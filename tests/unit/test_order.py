"""The order service's handlers against a real SQLite database; no broker, no server."""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from sqlalchemy import event as sql_event
from sqlalchemy import func, select, text

from services.order import chain, handlers
from services.order.config import OrderSettings
from services.order.consumers import events
from services.order.events import (
    PUBLISHES,
    Line,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderRejected,
    ProductCreated,
    Shortage,
    StockReleased,
    StockReserved,
    StockShortage,
    UserRegistered,
)
from services.order.main import SPEC, create_app
from services.order.models import (
    IdempotencyKey,
    KnownProduct,
    KnownUser,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
    OutboxMessage,
)
from services.order.schemas import LineIn, OrderIn, OrderOut
from shared.errors import Conflict, NotFound
from shared.messaging import exporters, tracing
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.events import Event
from shared.messaging.outbox import row_to_envelope
from shared.messaging.router import Received
from shared.messaging.tracing import Cause
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.errors import answer_to
from shared.runtime.groupcommit import GroupCommit, Item
from shared.runtime.keys import SigningKeys, learn_keys
from shared.runtime.limits import RateLimiter
from shared.runtime.service import ServiceSpec
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import alembic_config, upgrade
from tests.helpers import deliver
from tests.unit.signing import Signer, ring

pytestmark = pytest.mark.unit

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def random_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(autouse=True)
def _tracer() -> None:
    exporters.configure("test")


@pytest.fixture
def uow(service_uow: Callable[[ServiceSpec], UnitOfWork]) -> UnitOfWork:
    return service_uow(SPEC)


def emitted(uow: UnitOfWork, event_type: str | None = None) -> list[tuple[str, Envelope]]:
    """(topic, event) of each event in the outbox, oldest first."""
    with uow() as unit:
        rows = unit.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        events = [(row.topic, row_to_envelope(row)) for row in rows]
    return [(t, e) for t, e in events if event_type is None or e.type == event_type]


def count(uow: UnitOfWork, model: type[Any]) -> int:
    with uow() as unit:
        return unit.session.scalar(select(func.count()).select_from(model)) or 0


def known(uow: UnitOfWork, products: int = 2) -> tuple[str, list[str]]:
    """A user and `products` products the order service has learned of."""
    user_id, product_ids = random_id(), [random_id() for _ in range(products)]
    with uow() as unit:
        handlers.remember_user(unit, UserRegistered(user_id=user_id))
        for product_id in product_ids:
            handlers.remember_product(unit, ProductCreated(product_id=product_id, name="Lamp"))
    return user_id, product_ids


def command(*lines: tuple[str, int]) -> list[Line]:
    return [Line(product_id=p, quantity=q) for p, q in lines]


def place(
    uow: UnitOfWork, user_id: str, lines: list[Line], key: str | None = None
) -> dict[str, Any]:
    """What POST /orders answers (services.order.api) for the order placed."""
    with uow() as unit:
        placed = handlers.place_order(unit, lines, user_id, key)
    return OrderOut.model_validate(placed).model_dump(mode="json")


def pending_order(uow: UnitOfWork) -> str:
    user_id, (product_id, _) = known(uow)
    return str(place(uow, user_id, command((product_id, 1)))["id"])


def status(uow: UnitOfWork, order_id: str) -> OrderStatus:
    with uow() as unit:
        return handlers.get_order(unit, order_id).status


def reserve(uow: UnitOfWork, order_id: str) -> None:
    with uow() as unit:
        handlers.confirm_order(unit, [StockReserved(order_id=order_id, items=[])])


def short(uow: UnitOfWork, order_id: str, *shortages: Shortage) -> None:
    with uow() as unit:
        handlers.reject_order(unit, StockShortage(order_id=order_id, shortages=list(shortages)))


def cancel(uow: UnitOfWork, order_id: str) -> Order:
    with uow() as unit:
        return handlers.cancel_order(unit, order_id)


def in_status(uow: UnitOfWork, wanted: OrderStatus) -> str:
    order_id = pending_order(uow)
    move: dict[OrderStatus, Callable[[], object]] = {
        OrderStatus.PENDING: lambda: None,
        OrderStatus.CONFIRMED: lambda: reserve(uow, order_id),
        OrderStatus.REJECTED: lambda: short(
            uow, order_id, Shortage(product_id="p", requested=1, available=0)
        ),
        OrderStatus.CANCELLED: lambda: cancel(uow, order_id),
    }
    move[wanted]()
    assert status(uow, order_id) is wanted
    return order_id


# Placing an order


def test_place_order_records_a_pending_order_and_returns_it(uow: UnitOfWork) -> None:
    user_id, (lamp, desk) = known(uow)

    response = place(uow, user_id, command((lamp, 3), (desk, 1)))

    assert response["status"] == "PENDING"
    assert response["user_id"] == user_id
    assert response["reason"] is None
    assert response["items"] == [
        {"product_id": lamp, "quantity": 3},
        {"product_id": desk, "quantity": 1},
    ]
    assert uuid.UUID(response["id"])
    assert status(uow, response["id"]) is OrderStatus.PENDING


def test_place_order_emits_order_created_keyed_and_correlated_by_the_order_id(
    uow: UnitOfWork,
) -> None:
    user_id, (lamp, desk) = known(uow)

    order_id = place(uow, user_id, command((lamp, 3), (desk, 1)))["id"]

    [(topic, event)] = emitted(uow)
    assert (topic, event.type, event.source) == ("orders", "order-created", "/services/order")
    assert event.key == event.correlation_id == order_id
    assert event.json() == {
        "order_id": order_id,
        "user_id": user_id,
        "items": [{"product_id": lamp, "quantity": 3}, {"product_id": desk, "quantity": 1}],
    }


def test_order_created_is_caused_by_the_request_and_its_trace_is_kept_for_the_order(
    uow: UnitOfWork,
) -> None:
    user_id, (lamp, _) = known(uow)

    with tracing.span(
        "POST /orders", cause=Cause("request-1", "client-saga"), traceparent=TRACEPARENT
    ):
        order_id = place(uow, user_id, command((lamp, 1)))["id"]

    [(_, event)] = emitted(uow)
    assert event.causation_id == "request-1"
    assert event.correlation_id == order_id, "the order id, not the caller's correlation id"
    assert event.traceparent is not None
    assert event.traceparent.split("-")[1] == TRACEPARENT.split("-")[1]
    with uow() as unit:
        assert handlers.get_order(unit, order_id).traceparent == event.traceparent


def test_an_order_of_an_unknown_user_is_refused_and_emits_nothing(uow: UnitOfWork) -> None:
    _, (lamp, _) = known(uow)
    ghost = random_id()

    with pytest.raises(handlers.UnknownUser) as caught, uow() as unit:
        handlers.place_order(unit, command((lamp, 1)), ghost)

    assert caught.value.user_id == ghost
    assert answer_to(caught.value) == (
        401,  # the token names no user order knows
        {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="unknown user"'},
    )
    assert ghost in caught.value.message
    assert emitted(uow) == []
    assert count(uow, Order) == 0


def test_an_order_of_unknown_products_is_refused_naming_each_and_emits_nothing(
    uow: UnitOfWork,
) -> None:
    user_id, (lamp, _) = known(uow)
    ghosts = sorted([random_id(), random_id()])

    with pytest.raises(handlers.UnknownProducts) as caught, uow() as unit:
        handlers.place_order(unit, command((ghosts[1], 1), (lamp, 1), (ghosts[0], 2)), user_id)

    assert caught.value.product_ids == ghosts
    assert answer_to(caught.value) == (422, None)
    assert all(ghost in caught.value.message for ghost in ghosts)
    assert lamp not in caught.value.message
    assert emitted(uow) == []
    assert count(uow, Order) == 0


def test_an_order_must_have_items_of_positive_quantity() -> None:
    with pytest.raises(ValidationError):
        OrderIn(items=[])
    with pytest.raises(ValidationError):
        LineIn(product_id="p", quantity=0)


# Idempotency-Key


def test_the_same_request_with_the_same_key_replays_the_first_response(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)
    body = command((lamp, 2))

    first = place(uow, user_id, body, "key-1")
    again = place(uow, user_id, command((lamp, 2)), "key-1")

    assert again == first
    assert [e.key for _, e in emitted(uow)] == [first["id"]]
    assert count(uow, Order) == 1


def test_the_replay_answers_the_first_response_even_after_the_order_moved_on(
    uow: UnitOfWork,
) -> None:
    user_id, (lamp, _) = known(uow)
    first = place(uow, user_id, command((lamp, 2)), "key-1")
    reserve(uow, first["id"])

    again = place(uow, user_id, command((lamp, 2)), "key-1")

    assert again == first
    assert again["status"] == "PENDING"


def test_a_key_stored_by_the_previous_version_replays_its_stored_response(
    uow: UnitOfWork,
) -> None:
    """Before, the key kept the response body itself (OrderOut as JSON, `Z` times) and
    hashed the request body as OrderIn dumped it: both still answer a replay."""
    user_id, (lamp, _) = known(uow)
    stored = {
        "id": random_id(),
        "user_id": user_id,
        "items": [{"product_id": lamp, "quantity": 2}],
        "status": "PENDING",
        "reason": None,
        "created_at": "2025-03-04T05:06:07.089000Z",
    }
    body = OrderIn(items=[LineIn(product_id=lamp, quantity=2)])
    request_hash = hashlib.sha256(
        orjson.dumps([user_id, body.model_dump()], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    with uow() as unit:
        unit.session.add(
            IdempotencyKey(
                user_id=user_id,
                key="old-key",
                request_hash=request_hash,
                order_id=stored["id"],
                response=stored,
            )
        )

    assert place(uow, user_id, command((lamp, 2)), "old-key") == stored
    assert count(uow, Order) == 0


def statements_of(uow: UnitOfWork, do: Callable[[Any], object]) -> list[str]:
    """The SQL statements `do(unit)` runs (the unit's own commit and outbox insert aside)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split()[0])

    with uow() as unit:
        engine = unit.session.connection().engine  # the transaction has begun
        sql_event.listen(engine, "before_cursor_execute", note)
        try:
            do(unit)
        finally:
            sql_event.remove(engine, "before_cursor_execute", note)
    return seen


def test_placing_an_order_takes_one_statement_more_with_a_key_than_without(
    uow: UnitOfWork,
) -> None:
    """The hot path of POST /orders: the user and products are checked, the key's claim
    keeps the order as placed in the same insert, the order and its lines inserted."""
    user_id, (lamp, desk) = known(uow)
    lines = command((lamp, 1), (desk, 2))

    plain = statements_of(uow, lambda unit: handlers.place_order(unit, lines, user_id))
    keyed = statements_of(uow, lambda unit: handlers.place_order(unit, lines, user_id, "k-1"))

    assert plain == ["SELECT", "SELECT", "INSERT", "INSERT"]
    assert keyed == ["SELECT", "SELECT", "INSERT", "INSERT", "INSERT"]


def requested(n: int, user_id: str, lines: list[Line], key: str | None = None) -> Item[Any]:
    """Request `n`'s order, as the group commit hands it over: in a context of its own."""
    with tracing.span("POST /orders", cause=Cause(f"request-{n}", f"client-{n}")):
        context = contextvars.copy_context()
    return Item(handlers.OrderRequest(user_id, tuple(lines), key), context)


def test_a_group_of_orders_costs_the_statements_of_one_and_each_keeps_its_own_cause(
    uow: UnitOfWork,
) -> None:
    ann, (lamp, desk) = known(uow)
    bob, _ = known(uow, products=0)
    ghost, unknown_product = random_id(), random_id()
    group = [
        requested(0, ann, command((lamp, 1))),
        requested(1, bob, command((desk, 2), (lamp, 1))),
        requested(2, ghost, command((lamp, 1))),
        requested(3, ann, command((unknown_product, 1))),
        requested(4, bob, command((lamp, 5)), key="k-1"),
    ]
    answers: list[Any] = []

    seen = statements_of(uow, lambda unit: answers.extend(handlers.place_orders(unit, group)))

    assert seen == ["SELECT", "SELECT", "INSERT", "INSERT", "INSERT"]  # the key's claim
    assert isinstance(answers[2], handlers.UnknownUser) and answers[2].user_id == ghost
    assert isinstance(answers[3], handlers.UnknownProducts)
    assert answers[3].product_ids == [unknown_product]
    placed = [answers[i] for i in (0, 1, 4)]
    assert [p.user_id for p in placed] == [ann, bob, bob]
    created = [e for _, e in emitted(uow, "order-created")]
    assert [e.key for e in created] == [p.id for p in placed]
    assert [e.causation_id for e in created] == ["request-0", "request-1", "request-4"]
    assert count(uow, Order) == 3
    with uow.read() as unit:
        assert sorted(unit.session.scalars(select(OrderLine.order_id))) == sorted(
            [placed[0].id, placed[1].id, placed[1].id, placed[2].id]
        )


def test_the_same_key_with_another_request_conflicts_and_adds_nothing(uow: UnitOfWork) -> None:
    user_id, (lamp, desk) = known(uow)
    first = place(uow, user_id, command((lamp, 2)), "key-1")
    before = emitted(uow)

    for other in (command((lamp, 3)), command((desk, 2))):
        with pytest.raises(handlers.IdempotencyKeyReused) as caught, uow() as unit:
            handlers.place_order(unit, other, user_id, "key-1")
        assert isinstance(caught.value, Conflict)
        assert caught.value.key == "key-1"

    assert emitted(uow) == before
    assert count(uow, Order) == 1
    assert place(uow, user_id, command((lamp, 2)), "key-1") == first


def test_distinct_keys_place_distinct_orders(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)

    first = place(uow, user_id, command((lamp, 2)), "key-1")
    second = place(uow, user_id, command((lamp, 2)), "key-2")
    third = place(uow, user_id, command((lamp, 2)))

    assert len({first["id"], second["id"], third["id"]}) == 3
    assert len(emitted(uow, "order-created")) == 3


def test_a_refused_request_leaves_its_key_free_for_a_retry(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)
    late_user = random_id()

    with pytest.raises(handlers.UnknownUser), uow() as unit:
        handlers.place_order(unit, command((lamp, 1)), late_user, "key-1")
    with uow() as unit:
        handlers.remember_user(unit, UserRegistered(user_id=late_user))
    placed = place(uow, late_user, command((lamp, 1)), "key-1")

    assert placed["user_id"] == late_user
    assert [e.key for _, e in emitted(uow)] == [placed["id"]]


def test_concurrent_requests_with_one_key_place_one_order(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)
    barrier = threading.Barrier(4)
    responses: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            barrier.wait()
            responses.append(place(uow, user_id, command((lamp, 1)), "key-1"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []
    assert len(responses) == 4 and all(r == responses[0] for r in responses)
    assert len(emitted(uow, "order-created")) == 1


# Inventory's answer


def test_stock_reserved_confirms_a_pending_order_and_emits_order_confirmed(
    uow: UnitOfWork,
) -> None:
    order_id = pending_order(uow)
    with uow() as unit:
        user_id = handlers.get_order(unit, order_id).user_id

    reserve(uow, order_id)

    assert status(uow, order_id) is OrderStatus.CONFIRMED
    [(topic, event)] = emitted(uow, "order-confirmed")
    assert (topic, event.key) == ("orders", order_id)
    assert event.json() == {"order_id": order_id, "user_id": user_id}


def test_the_answer_of_inventory_is_caused_by_and_correlated_with_its_event(
    uow: UnitOfWork,
) -> None:
    order_id = pending_order(uow)
    reserved = Envelope(
        type="stock-reserved",
        source="/services/inventory",
        key=order_id,
        data=dump_json(StockReserved(order_id=order_id, items=[])),
        correlation_id=order_id,
        traceparent=TRACEPARENT,
    )

    with tracing.consuming(reserved), uow() as unit:
        handlers.confirm_order(unit, [reserved.payload(StockReserved)])

    [(_, confirmed)] = emitted(uow, "order-confirmed")
    assert (confirmed.causation_id, confirmed.correlation_id) == (reserved.id, order_id)
    assert confirmed.traceparent is not None
    assert confirmed.traceparent.split("-")[1] == TRACEPARENT.split("-")[1]


def test_stock_shortage_rejects_a_pending_order_with_a_reason_naming_the_short_products(
    uow: UnitOfWork,
) -> None:
    order_id = pending_order(uow)
    shortages = [
        Shortage(product_id="p-1", requested=3, available=1),
        Shortage(product_id="p-2", requested=2, available=0),
    ]

    short(uow, order_id, *shortages)

    reason = "insufficient stock: p-1 (requested 3, available 1), p-2 (requested 2, available 0)"
    with uow() as unit:
        order = handlers.get_order(unit, order_id)
        assert (order.status, order.reason) == (OrderStatus.REJECTED, reason)
        user_id = order.user_id
    [(topic, event)] = emitted(uow, "order-rejected")
    assert (topic, event.key) == ("orders", order_id)
    assert event.json() == {
        "order_id": order_id,
        "user_id": user_id,
        "reason": reason,
        "shortages": [s.model_dump() for s in shortages],
    }


@pytest.mark.parametrize(
    "start", [OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.CANCELLED]
)
@pytest.mark.parametrize("answer", ["reserved", "shortage"])
def test_inventory_answers_move_only_pending_orders(
    uow: UnitOfWork, start: OrderStatus, answer: str
) -> None:
    order_id = in_status(uow, start)
    before = emitted(uow)

    if answer == "reserved":
        reserve(uow, order_id)
    else:
        short(uow, order_id, Shortage(product_id="p", requested=9, available=0))

    assert status(uow, order_id) is start
    assert emitted(uow) == before


def test_a_cancelled_order_stays_cancelled_when_stock_is_reserved(uow: UnitOfWork) -> None:
    order_id = pending_order(uow)
    cancel(uow, order_id)

    reserve(uow, order_id)

    assert status(uow, order_id) is OrderStatus.CANCELLED
    assert [e.type for _, e in emitted(uow)] == ["order-created", "order-cancelled"]


def test_an_answer_for_an_unknown_order_is_not_found(uow: UnitOfWork) -> None:
    ghost = random_id()

    with pytest.raises(handlers.OrderNotFound) as caught, uow() as unit:
        handlers.confirm_order(unit, [StockReserved(order_id=ghost, items=[])])

    assert isinstance(caught.value, NotFound)
    assert caught.value.order_id == ghost


# Cancelling


@pytest.mark.parametrize("start", [OrderStatus.PENDING, OrderStatus.CONFIRMED])
def test_cancel_of_a_pending_or_confirmed_order_emits_order_cancelled(
    uow: UnitOfWork, start: OrderStatus
) -> None:
    order_id = in_status(uow, start)

    cancelled = cancel(uow, order_id)

    assert cancelled.status is OrderStatus.CANCELLED
    assert status(uow, order_id) is OrderStatus.CANCELLED
    [(topic, event)] = emitted(uow, "order-cancelled")
    assert (topic, event.key) == ("orders", order_id)
    assert event.json() == {"order_id": order_id, "user_id": cancelled.user_id}


def test_cancel_of_a_cancelled_order_is_a_no_op(uow: UnitOfWork) -> None:
    order_id = in_status(uow, OrderStatus.CANCELLED)
    before = emitted(uow)

    again = cancel(uow, order_id)

    assert again.status is OrderStatus.CANCELLED
    assert emitted(uow) == before


def test_cancel_of_a_rejected_order_conflicts(uow: UnitOfWork) -> None:
    order_id = in_status(uow, OrderStatus.REJECTED)
    before = emitted(uow)

    with pytest.raises(handlers.OrderNotCancellable) as caught, uow() as unit:
        handlers.cancel_order(unit, order_id)

    assert isinstance(caught.value, Conflict)
    assert caught.value.order_id == order_id
    assert status(uow, order_id) is OrderStatus.REJECTED
    assert emitted(uow) == before


def test_cancel_of_an_unknown_order_is_not_found(uow: UnitOfWork) -> None:
    with pytest.raises(handlers.OrderNotFound), uow() as unit:
        handlers.cancel_order(unit, random_id())


def test_a_cancel_request_without_a_trace_joins_the_trace_of_the_order(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)
    with tracing.span("POST /orders", cause=Cause("request-1"), traceparent=TRACEPARENT):
        order_id = place(uow, user_id, command((lamp, 1)))["id"]

    with tracing.span("POST /cancel", cause=Cause("request-2")):
        cancel(uow, order_id)

    [(_, event)] = emitted(uow, "order-cancelled")
    assert event.causation_id == "request-2"
    assert event.traceparent is not None
    assert event.traceparent.split("-")[1] == TRACEPARENT.split("-")[1]


def test_order_cancelled_is_correlated_by_the_order_id_like_the_rest_of_the_saga(
    uow: UnitOfWork,
) -> None:
    order_id = pending_order(uow)

    with tracing.span("POST /cancel", cause=Cause("request-2")):
        cancel(uow, order_id)

    [(_, event)] = emitted(uow, "order-cancelled")
    assert event.correlation_id == order_id


# Whose order it is


def test_place_order_stores_the_caller_as_the_owner(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)

    order_id = place(uow, user_id, command((lamp, 1)))["id"]

    with uow() as unit:
        assert handlers.get_order(unit, order_id, user_id).user_id == user_id
        assert [o.id for o in handlers.list_orders(unit, user_id, 10)] == [order_id]


def test_the_body_of_an_order_cannot_name_its_user() -> None:
    with pytest.raises(ValidationError):
        OrderIn.model_validate(
            {"user_id": "someone-else", "items": [{"product_id": "p", "quantity": 1}]}
        )


def test_another_users_order_is_not_found_to_read_cancel_or_trace(uow: UnitOfWork) -> None:
    order_id = pending_order(uow)
    other, _ = known(uow, products=0)
    before = emitted(uow)

    for attempt in (handlers.get_order, handlers.cancel_order, chain.order_events):
        with pytest.raises(handlers.OrderNotFound) as caught, uow() as unit:
            attempt(unit, order_id, other)
        assert caught.value.order_id == order_id
        assert caught.value.message == f"order {order_id} not found", "as if it did not exist"

    assert status(uow, order_id) is OrderStatus.PENDING
    assert emitted(uow) == before
    with uow() as unit:
        assert handlers.list_orders(unit, other, 10) == []


def test_the_owner_cancels_their_own_order(uow: UnitOfWork) -> None:
    user_id, (lamp, _) = known(uow)
    order_id = place(uow, user_id, command((lamp, 1)))["id"]

    with uow() as unit:
        assert handlers.cancel_order(unit, order_id, user_id).status is OrderStatus.CANCELLED
    with uow() as unit:
        assert chain.order_events(unit, order_id, user_id) == []


def test_the_same_key_from_another_user_places_that_users_own_order(uow: UnitOfWork) -> None:
    """Each user has a key space of their own: nothing of ann's order reaches bob."""
    ann, (lamp, _) = known(uow)
    bob, _ = known(uow, products=0)
    first = place(uow, ann, command((lamp, 2)), "key-1")

    bobs = place(uow, bob, command((lamp, 2)), "key-1")

    assert bobs["id"] != first["id"] and bobs["user_id"] == bob
    assert count(uow, Order) == 2
    assert place(uow, ann, command((lamp, 2)), "key-1") == first
    assert place(uow, bob, command((lamp, 2)), "key-1") == bobs
    with pytest.raises(handlers.IdempotencyKeyReused), uow() as unit:
        handlers.place_order(unit, command((lamp, 3)), bob, "key-1")


@pytest.fixture
def any_uow(database_url: str) -> Iterator[UnitOfWork]:
    """The order service's schema on SQLite and on PostgreSQL."""
    engine = make_engine(database_url)
    upgrade(engine, SPEC.migrations)
    yield UnitOfWork(make_sessions(engine), SPEC.outbox_model, "/services/order")
    engine.dispose()


def test_idempotency_keys_are_scoped_to_their_user_on_every_database(any_uow: UnitOfWork) -> None:
    ann, (lamp, _) = known(any_uow)
    bob, _ = known(any_uow, products=0)

    first = place(any_uow, ann, command((lamp, 1)), "shared-key")
    bobs = place(any_uow, bob, command((lamp, 1)), "shared-key")

    assert first["id"] != bobs["id"]
    assert place(any_uow, ann, command((lamp, 1)), "shared-key") == first
    assert count(any_uow, Order) == 2


IDEMPOTENCY_REVISION = "e7bb5d2824c6"
"""The order service's revision that scopes idempotency keys to their user."""


def test_the_migration_gives_each_stored_key_its_orders_user(database_url: str) -> None:
    from alembic import command as alembic

    engine = make_engine(database_url)
    config = alembic_config(SPEC.migrations)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic.upgrade(config, f"{IDEMPOTENCY_REVISION}-1")
        now = datetime.now(UTC)
        connection.execute(
            text(
                "INSERT INTO orders (id, user_id, status, created_at, updated_at)"
                " VALUES ('o-1', 'ann', 'PENDING', :now, :now)"
            ),
            {"now": now},
        )
        for key, order_id in (("k-1", "o-1"), ("k-2", "o-gone")):
            connection.execute(
                text(
                    "INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)"
                    " VALUES (:key, 'h', :order_id, :now)"
                ),
                {"key": key, "order_id": order_id, "now": now},
            )
        alembic.upgrade(config, "head")
        rows = connection.execute(text("SELECT user_id, key FROM idempotency_keys")).all()
        connection.execute(
            text(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id, created_at)"
                " VALUES ('bob', 'k-1', 'h', 'o-2', :now)"
            ),
            {"now": now},
        )
    engine.dispose()
    assert [tuple(row) for row in rows] == [("ann", "k-1")], "a key without its order is dropped"


# The local views of users and products


def user_version(uow: UnitOfWork, user_id: str) -> int | None:
    with uow() as unit:
        user = unit.session.get(KnownUser, user_id)
        return user.version if user else None


def product_view(uow: UnitOfWork, product_id: str) -> tuple[str, int] | None:
    with uow() as unit:
        product = unit.session.get(KnownProduct, product_id)
        return (product.name, product.version) if product else None


@pytest.mark.parametrize("versions", list(itertools.permutations([1, 2, 3])))
def test_remember_user_keeps_the_newest_version_whatever_the_arrival_order(
    uow: UnitOfWork, versions: tuple[int, ...]
) -> None:
    user_id = random_id()

    for version in versions:
        with uow() as unit:
            handlers.remember_user(unit, UserRegistered(user_id=user_id, version=version))

    assert user_version(uow, user_id) == 3


@pytest.mark.parametrize("versions", list(itertools.permutations([1, 2, 3])))
def test_remember_product_keeps_the_newest_version_whatever_the_arrival_order(
    uow: UnitOfWork, versions: tuple[int, ...]
) -> None:
    product_id = random_id()
    names = {1: "Lamp", 2: "Desk lamp", 3: "Desk lamp, brass"}

    for version in versions:
        with uow() as unit:
            handlers.remember_product(
                unit, ProductCreated(product_id=product_id, name=names[version], version=version)
            )

    assert product_view(uow, product_id) == ("Desk lamp, brass", 3)


def test_a_redelivered_version_of_a_product_changes_nothing(uow: UnitOfWork) -> None:
    product_id = random_id()
    with uow() as unit:
        handlers.remember_product(unit, ProductCreated(product_id=product_id, name="Lamp"))
    with uow() as unit:
        handlers.remember_product(unit, ProductCreated(product_id=product_id, name="Other"))

    assert product_view(uow, product_id) == ("Lamp", 1)


def test_learning_users_and_products_emits_nothing(uow: UnitOfWork) -> None:
    known(uow, products=3)

    assert emitted(uow) == []


# The order's event chain


T0 = datetime(2024, 5, 6, 7, 0, tzinfo=UTC)


def chain_event(
    order_id: str,
    event_type: str,
    seconds: float,
    cause: Envelope | str | None = None,
    offset: int = 0,
) -> Envelope:
    return Envelope(
        type=event_type,
        source="/tests",
        key=order_id,
        data=dump_json(Ref(order_id=order_id)),
        time=T0 + timedelta(seconds=seconds),
        correlation_id=order_id,
        causation_id=cause.id if isinstance(cause, Envelope) else cause,
    ).at("orders", 1, offset)


class Ref(BaseModel):
    order_id: str


def record(uow: UnitOfWork, order_id: str, *events: Envelope) -> None:
    for event in events:
        with uow() as unit:
            chain.record_event(unit, event, order_id)


def chain_of(uow: UnitOfWork, order_id: str) -> list[str]:
    with uow() as unit:
        return [e.event_id for e in chain.order_events(unit, order_id)]


def test_record_event_files_the_event_with_where_it_sits_on_kafka(uow: UnitOfWork) -> None:
    order_id = pending_order(uow)
    created = chain_event(order_id, "order-created", 0, "request-1", offset=17)

    record(uow, order_id, created)

    with uow() as unit:
        [row] = chain.order_events(unit, order_id)
        filed = {c: getattr(row, c) for c in ("event_id", "type", "source", "time")}
        position = (row.topic, row.partition, row.offset, row.causation_id, row.correlation_id)
    assert filed == {
        "event_id": created.id,
        "type": "order-created",
        "source": "/tests",
        "time": created.time,
    }
    assert position == ("orders", 1, 17, "request-1", order_id)


def test_record_event_is_idempotent(uow: UnitOfWork) -> None:
    order_id = pending_order(uow)
    created = chain_event(order_id, "order-created", 0)

    record(uow, order_id, created, created)
    with uow() as unit:
        chain.record_event(unit, created, order_id)
        chain.record_event(unit, created, order_id)

    assert chain_of(uow, order_id) == [created.id]
    assert count(uow, OrderEvent) == 1


def test_order_events_lists_each_event_after_its_cause_even_against_the_clock(
    uow: UnitOfWork,
) -> None:
    order_id = pending_order(uow)
    created = chain_event(order_id, "order-created", 10, "request-1")
    reserved = chain_event(order_id, "stock-reserved", 5, created)  # inventory's clock is behind
    confirmed = chain_event(order_id, "order-confirmed", 11, reserved)

    record(uow, order_id, confirmed, reserved, created)

    assert chain_of(uow, order_id) == [created.id, reserved.id, confirmed.id]


def test_order_events_orders_two_roots_by_time_each_followed_by_what_it_caused(
    uow: UnitOfWork,
) -> None:
    order_id = pending_order(uow)
    created = chain_event(order_id, "order-created", 0, "request-1")
    reserved = chain_event(order_id, "stock-reserved", 1, created)
    confirmed = chain_event(order_id, "order-confirmed", 2, reserved)
    cancelled = chain_event(order_id, "order-cancelled", 30, "request-2")
    released = chain_event(order_id, "stock-released", 31, cancelled)
    other_order = chain_event(random_id(), "order-created", 15, "request-3")

    record(uow, order_id, released, cancelled, confirmed, reserved, created)
    record(uow, other_order.key, other_order)

    assert chain_of(uow, order_id) == [
        created.id,
        reserved.id,
        confirmed.id,
        cancelled.id,
        released.id,
    ]


def test_order_events_of_an_unknown_order_is_not_found(uow: UnitOfWork) -> None:
    with pytest.raises(handlers.OrderNotFound), uow() as unit:
        chain.order_events(unit, random_id())


def test_an_order_without_events_read_back_has_an_empty_chain(uow: UnitOfWork) -> None:
    assert chain_of(uow, pending_order(uow)) == []


# The consumer


def test_the_consumer_handles_inventorys_answers_and_learns_users_and_products() -> None:
    assert {t: r.model for t, r in events.routes.items()} == {
        "stock-reserved": StockReserved,
        "stock-shortage": StockShortage,
        "stock-released": StockReleased,
        "user-registered": UserRegistered,
        "product-created": ProductCreated,
        "signing-keys": SigningKeys,
    }
    assert events.routes["signing-keys"].handler is learn_keys
    assert events.routes["stock-reserved"].batch, "one update confirms a run of answers"
    assert not any(r.batch for t, r in events.routes.items() if t != "stock-reserved")
    assert events.routes["user-registered"].handler is handlers.remember_user
    assert events.routes["product-created"].handler is handlers.remember_product
    assert SPEC.subscribes == events.topics == ["products", "stock", "users"]
    assert SPEC.owns == ["orders"]


def test_order_publishes_its_events_on_orders_keyed_by_the_order_id() -> None:
    assert set(PUBLISHES) == {OrderCreated, OrderCancelled, OrderConfirmed, OrderRejected}
    assert {(e.event_type, e.topic, e.key_field) for e in PUBLISHES} == {
        ("order-created", "orders", "order_id"),
        ("order-cancelled", "orders", "order_id"),
        ("order-confirmed", "orders", "order_id"),
        ("order-rejected", "orders", "order_id"),
    }


def consumed(payload: Event, offset: int) -> Received[Any]:
    """`payload` as the consumer hands it over: in an envelope at its place on `stock`."""
    event = Envelope(
        type=payload.event_type,
        source="/services/inventory",
        key=payload.event_key,
        data=dump_json(payload),
        correlation_id=payload.event_key,
    ).at(payload.topic, 0, offset)
    return Received(event, payload)


def test_inventorys_answers_move_their_orders_and_are_filed_in_their_chains(
    uow: UnitOfWork,
) -> None:
    confirmed, also_confirmed, rejected = (pending_order(uow) for _ in range(3))
    run = [
        consumed(StockReserved(order_id=confirmed, items=[]), 0),
        consumed(StockReserved(order_id=also_confirmed, items=[]), 1),
        consumed(StockShortage(order_id=rejected, shortages=[]), 2),
    ]

    with uow() as unit:
        events.dispatch(unit, run)

    assert [status(uow, o) for o in (confirmed, also_confirmed, rejected)] == [
        OrderStatus.CONFIRMED,
        OrderStatus.CONFIRMED,
        OrderStatus.REJECTED,
    ]
    for order_id, item in zip((confirmed, also_confirmed, rejected), run, strict=True):
        assert chain_of(uow, order_id) == [item.event.id]
    answers = {e.key: e for _, e in emitted(uow) if e.type != "order-created"}
    assert {key: (e.type, e.causation_id) for key, e in answers.items()} == {
        confirmed: ("order-confirmed", run[0].event.id),
        also_confirmed: ("order-confirmed", run[1].event.id),
        rejected: ("order-rejected", run[2].event.id),
    }


def test_stock_released_is_filed_in_the_chain_of_its_order(uow: UnitOfWork) -> None:
    order_id = in_status(uow, OrderStatus.CANCELLED)
    published = {"order_id": order_id, "items": [{"product_id": "p-1", "quantity": 2}]}
    released = consumed(StockReleased.model_validate(published), 7)

    with uow() as unit:
        events.dispatch(unit, [released])

    assert chain_of(uow, order_id) == [released.event.id]
    assert status(uow, order_id) is OrderStatus.CANCELLED


def test_users_and_products_delivered_through_the_router_are_remembered(uow: UnitOfWork) -> None:
    user_id, product_id = random_id(), random_id()

    with uow() as unit:
        deliver(
            events,
            unit,
            UserRegistered(user_id=user_id, version=2),
            ProductCreated(product_id=product_id, name="Lamp", version=3),
        )

    assert user_version(uow, user_id) == 2
    assert product_view(uow, product_id) == ("Lamp", 3)


# Entrypoints: the routes with a real token check, group commit and limits, no broker

SIGNER = Signer()


@pytest.fixture
def order_app(uow: UnitOfWork) -> Iterator[FastAPI]:
    settings = OrderSettings()
    app = create_app(settings)
    keys, _ = ring(SIGNER.trusted())
    writes = GroupCommit(uow, name="order")
    writes.start()
    app.state.runtime = SimpleNamespace(
        uow=uow,
        writes=writes,
        keys=keys,
        settings=settings,
        per_subject=RateLimiter(50, 100),
        per_address=RateLimiter(500, 1000),
    )
    yield app
    writes.stop()


def signed_in(app: FastAPI, user_id: str) -> TestClient:
    token = SIGNER.token(user_id, issuer=app.state.settings.auth_issuer)
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def items(*product_ids: str) -> dict[str, Any]:
    return {"items": [{"product_id": p, "quantity": 1} for p in product_ids]}


def test_post_orders_places_an_order_that_only_its_user_sees(
    order_app: FastAPI, uow: UnitOfWork
) -> None:
    ann, (lamp, _) = known(uow)
    bob, _ = known(uow, products=0)
    as_ann, as_bob = signed_in(order_app, ann), signed_in(order_app, bob)

    placed = as_ann.post("/orders", json=items(lamp))
    order_id = placed.json()["id"]

    assert (placed.status_code, placed.json()["user_id"]) == (202, ann)
    assert as_ann.get(f"/orders/{order_id}").status_code == 200
    assert [o["id"] for o in as_ann.get("/orders").json()] == [order_id]
    for answer in (
        as_bob.get(f"/orders/{order_id}"),
        as_bob.post(f"/orders/{order_id}/cancel"),
        as_bob.get(f"/orders/{order_id}/events"),
    ):
        assert answer.status_code == 404
    assert as_bob.get("/orders").json() == []
    assert status(uow, order_id) is OrderStatus.PENDING


def test_orders_without_a_token_are_401_with_a_bearer_challenge(
    order_app: FastAPI, uow: UnitOfWork
) -> None:
    _, (lamp, _) = known(uow)
    anonymous = TestClient(order_app)

    for answer in (anonymous.post("/orders", json=items(lamp)), anonymous.get("/orders")):
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert count(uow, Order) == 0


def test_a_token_of_a_user_order_has_not_learnt_is_401_not_422(
    order_app: FastAPI, uow: UnitOfWork
) -> None:
    _, (lamp, _) = known(uow)
    ghost = random_id()

    answer = signed_in(order_app, ghost).post("/orders", json=items(lamp))

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="unknown user"'
    )
    assert answer.json() == {"detail": f"unknown user {ghost}"}
    assert count(uow, Order) == 0


def test_an_idempotency_key_another_user_used_places_their_own_order_over_http(
    order_app: FastAPI, uow: UnitOfWork
) -> None:
    ann, (lamp, _) = known(uow)
    bob, _ = known(uow, products=0)
    key = {"Idempotency-Key": "shared-key"}

    first = signed_in(order_app, ann).post("/orders", json=items(lamp), headers=key)
    bobs = signed_in(order_app, bob).post("/orders", json=items(lamp), headers=key)
    again = signed_in(order_app, ann).post("/orders", json=items(lamp), headers=key)

    assert (first.status_code, bobs.status_code, again.status_code) == (202, 202, 202)
    assert first.json()["id"] not in bobs.text
    assert bobs.json()["user_id"] == bob
    assert again.json() == first.json()


@pytest.mark.parametrize("key", [b"", b"k" * 256, b"two words", "cl\u00e9".encode(), b"a\x00b"])
def test_an_invalid_idempotency_key_is_400_and_places_nothing(
    order_app: FastAPI, uow: UnitOfWork, key: bytes
) -> None:
    ann, (lamp, _) = known(uow)

    answer = signed_in(order_app, ann).post(
        "/orders", json=items(lamp), headers={"Idempotency-Key": key}
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "detail": "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces"
    }
    assert count(uow, Order) == 0
    assert emitted(uow) == []


def test_the_idempotency_key_is_documented_with_its_400(order_app: FastAPI) -> None:
    operation = order_app.openapi()["paths"]["/orders"]["post"]

    assert "Idempotency-Key" in operation["responses"]["400"]["description"]
    (header,) = [p for p in operation["parameters"] if p["name"] == "idempotency-key"]
    assert "255 printable ASCII" in header["description"]


@pytest.mark.parametrize("request_id", [b"r" * 10_000, b"abc\x00def", "r\u00e9quest".encode(), b""])
def test_an_order_with_a_hostile_request_id_is_placed_and_caused_by_a_fresh_id(
    order_app: FastAPI, uow: UnitOfWork, request_id: bytes
) -> None:
    ann, (lamp, _) = known(uow)

    answer = signed_in(order_app, ann).post(
        "/orders", json=items(lamp), headers={"x-request-id": request_id}
    )

    assert answer.status_code == 202
    echoed = answer.headers["x-request-id"]
    assert re.fullmatch(r"[A-Za-z0-9._:/+=-]{1,64}", echoed) and echoed.encode() != request_id
    [(_, created)] = emitted(uow, "order-created")
    assert created.causation_id == echoed


def test_placing_orders_too_fast_is_429_with_retry_after_per_user(
    order_app: FastAPI, uow: UnitOfWork
) -> None:
    ann, (lamp, _) = known(uow)
    bob, _ = known(uow, products=0)
    order_app.state.runtime.per_subject = RateLimiter(rate=0.01, burst=1)

    first = signed_in(order_app, ann).post("/orders", json=items(lamp))
    second = signed_in(order_app, ann).post("/orders", json=items(lamp))
    other = signed_in(order_app, bob).post("/orders", json=items(lamp))

    assert (first.status_code, second.status_code, other.status_code) == (202, 429, 202)
    assert 1 <= int(second.headers["Retry-After"]) <= 100
    assert count(uow, Order) == 2
