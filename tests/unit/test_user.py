"""The user service's handlers against a real SQLite database; no broker, no server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from services.user import handlers
from services.user.consumers import events
from services.user.events import (
    PUBLISHES,
    OrderCancelled,
    OrderConfirmed,
    OrderRejected,
    Shortage,
)
from services.user.main import SPEC
from services.user.models import Notification, OutboxMessage, User
from services.user.passwords import hash_password
from services.user.schemas import NotificationOut, UserIn, UserOut
from shared.errors import Conflict, NotFound
from shared.messaging.envelope import Envelope
from shared.messaging.outbox import row_to_envelope
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade
from tests.helpers import deliver

pytestmark = pytest.mark.unit


def random_id() -> str:
    return str(uuid.uuid4())


def random_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


PASSWORD = "correct horse battery staple"


@pytest.fixture
def uow(tmp_path: Path) -> Iterator[UnitOfWork]:
    engine = make_engine(f"sqlite:///{tmp_path}/user.db")
    upgrade(engine, SPEC.migrations)
    yield UnitOfWork(make_sessions(engine), OutboxMessage, "/services/user")
    engine.dispose()


def emitted(uow: UnitOfWork) -> list[tuple[str, Envelope]]:
    with uow() as unit:
        rows = unit.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        return [(row.topic, row_to_envelope(row)) for row in rows]


def register_body(unit: Unit, body: UserIn) -> User:
    """As POST /users does with its body: the schema normalised the e-mail."""
    return handlers.register_user(unit, body.name, body.email, hash_password(body.password))


def register(uow: UnitOfWork, name: str = "Ann", email: str | None = None) -> str:
    with uow() as unit:
        body = UserIn(name=name, email=email or random_email(), password=PASSWORD)
        return register_body(unit, body).id


def notifications(uow: UnitOfWork, user_id: str) -> list[NotificationOut]:
    with uow() as unit:
        return [
            NotificationOut.model_validate(n) for n in handlers.list_notifications(unit, user_id)
        ]


# Registration


def test_register_emits_user_registered_keyed_by_the_user_id(uow: UnitOfWork) -> None:
    email = random_email()
    user_id = register(uow, "Ann", email)

    [(topic, event)] = emitted(uow)
    assert topic == "users"
    assert event.type == "user-registered"
    assert event.key == user_id
    assert event.json() == {"user_id": user_id, "name": "Ann", "email": email, "version": 1}
    assert uuid.UUID(user_id)


def test_registered_user_can_be_read_back_with_the_email_in_lower_case(uow: UnitOfWork) -> None:
    local = uuid.uuid4().hex[:12]
    user_id = register(uow, "Ann", f"Ann.{local}@Example.COM")

    with uow() as unit:
        user = handlers.get_user(unit, user_id)
    assert (user.name, user.email) == ("Ann", f"ann.{local}@example.com")


@pytest.mark.parametrize("transform", [str, str.upper], ids=["same-case", "other-case"])
def test_registering_a_taken_email_is_a_conflict_and_emits_nothing(
    uow: UnitOfWork, transform: Callable[[str], str]
) -> None:
    email = random_email()
    first = register(uow, "Ann", email)

    with pytest.raises(handlers.EmailAlreadyRegistered) as caught, uow() as unit:
        register_body(unit, UserIn(name="Bob", email=transform(email), password=PASSWORD))

    assert isinstance(caught.value, Conflict)
    assert caught.value.email == email
    assert email in caught.value.message
    assert [event.key for _, event in emitted(uow)] == [first]


@pytest.mark.parametrize(
    "email",
    ["ann", "ann@example", "ann@@example.com", "a..b@example.com", "ann@-x.com", "a b@x.io"],
)
def test_an_address_that_is_not_an_email_is_refused(email: str) -> None:
    with pytest.raises(ValidationError):
        UserIn(name="Ann", email=email, password=PASSWORD)


def test_registration_refuses_unknown_fields_and_empty_names() -> None:
    UserIn(name="Ann", email=random_email(), password=PASSWORD)  # the valid baseline
    with pytest.raises(ValidationError):
        UserIn.model_validate(
            {"name": "Ann", "email": random_email(), "password": PASSWORD, "admin": True}
        )
    with pytest.raises(ValidationError):
        UserIn(name="", email=random_email(), password=PASSWORD)


@pytest.mark.parametrize("password", [None, "", "seven77", "x" * 129])
def test_registration_needs_a_password_of_8_to_128_characters(password: str | None) -> None:
    body = {"name": "Ann", "email": random_email(), "password": password}
    with pytest.raises(ValidationError):
        UserIn.model_validate({k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize("password", ["x" * 8, "x" * 128])
def test_a_password_of_8_or_128_characters_is_taken_as_it_is(password: str) -> None:
    assert UserIn(name="Ann", email=random_email(), password=password).password == password


def test_the_password_is_write_only_in_the_api_schema() -> None:
    schema = UserIn.model_json_schema()
    assert schema["properties"]["password"].get("writeOnly") is True
    assert "password" not in UserOut.model_fields


def test_an_unknown_user_is_not_found(uow: UnitOfWork) -> None:
    user_id = random_id()
    with pytest.raises(handlers.UserNotFound) as caught, uow() as unit:
        handlers.get_user(unit, user_id)
    assert isinstance(caught.value, NotFound)
    assert caught.value.user_id == user_id


# Notifications


def test_a_confirmed_order_notifies_its_user(uow: UnitOfWork) -> None:
    user_id, order_id = register(uow), random_id()
    with uow() as unit:
        handlers.notify_order_confirmed(unit, [OrderConfirmed(order_id=order_id, user_id=user_id)])

    [note] = notifications(uow, user_id)
    assert (note.order_id, note.type) == (order_id, "order-confirmed")
    assert note.message == f"Order {order_id} is confirmed."
    assert note.created_at.tzinfo is not None


def test_a_rejected_order_names_each_short_product(uow: UnitOfWork) -> None:
    user_id, order_id = register(uow), random_id()
    rejected = OrderRejected(
        order_id=order_id,
        user_id=user_id,
        reason="insufficient-stock",
        shortages=[
            Shortage(product_id="p-1", requested=3, available=1),
            Shortage(product_id="p-2", requested=2, available=0),
        ],
    )
    with uow() as unit:
        handlers.notify_order_rejected(unit, rejected)

    [note] = notifications(uow, user_id)
    assert note.type == "order-rejected"
    assert note.message == (
        f"Order {order_id} was rejected: not enough stock of p-1 (requested 3, available 1)"
        " and p-2 (requested 2, available 0)."
    )


def test_a_rejection_with_one_short_product_reads_as_one_sentence(uow: UnitOfWork) -> None:
    user_id, order_id = register(uow), random_id()
    shortage = Shortage(product_id="p-1", requested=3, available=1)
    with uow() as unit:
        handlers.notify_order_rejected(
            unit,
            OrderRejected(order_id=order_id, user_id=user_id, reason="x", shortages=[shortage]),
        )

    [note] = notifications(uow, user_id)
    assert note.message == (
        f"Order {order_id} was rejected: not enough stock of p-1 (requested 3, available 1)."
    )


def test_a_rejection_without_shortages_gives_the_reason(uow: UnitOfWork) -> None:
    user_id, order_id = register(uow), random_id()
    with uow() as unit:
        handlers.notify_order_rejected(
            unit, OrderRejected(order_id=order_id, user_id=user_id, reason="unknown product")
        )

    [note] = notifications(uow, user_id)
    assert note.message == f"Order {order_id} was rejected: unknown product."


def test_a_cancelled_order_notifies_its_user(uow: UnitOfWork) -> None:
    user_id, order_id = register(uow), random_id()
    with uow() as unit:
        handlers.notify_order_cancelled(unit, OrderCancelled(order_id=order_id, user_id=user_id))

    [note] = notifications(uow, user_id)
    assert (note.type, note.message) == ("order-cancelled", f"Order {order_id} was cancelled.")


def test_notifications_are_listed_oldest_first_and_only_for_their_user(uow: UnitOfWork) -> None:
    user_id, other, order_id = register(uow), register(uow), random_id()
    with uow() as unit:
        handlers.notify_order_confirmed(unit, [OrderConfirmed(order_id=order_id, user_id=user_id)])
    with uow() as unit:
        handlers.notify_order_cancelled(unit, OrderCancelled(order_id=order_id, user_id=user_id))
    with uow() as unit:
        handlers.notify_order_confirmed(unit, [OrderConfirmed(order_id=random_id(), user_id=other)])

    assert [n.type for n in notifications(uow, user_id)] == ["order-confirmed", "order-cancelled"]
    assert len(notifications(uow, other)) == 1


def test_notifications_of_an_unknown_user_are_not_found(uow: UnitOfWork) -> None:
    with pytest.raises(handlers.UserNotFound), uow() as unit:
        handlers.list_notifications(unit, random_id())


def test_a_notification_for_an_unknown_user_is_still_stored(uow: UnitOfWork) -> None:
    user_id, order_id = random_id(), random_id()
    with uow() as unit:
        handlers.notify_order_confirmed(unit, [OrderConfirmed(order_id=order_id, user_id=user_id)])

    with uow() as unit:
        stored = unit.session.scalars(select(Notification)).all()
    assert [(n.user_id, n.order_id, n.type) for n in stored] == [
        (user_id, order_id, "order-confirmed")
    ]


def test_a_repeated_outcome_for_an_order_is_a_no_op(uow: UnitOfWork) -> None:
    user_id, order_id = register(uow), random_id()
    confirmed = OrderConfirmed(order_id=order_id, user_id=user_id)
    with uow() as unit:
        handlers.notify_order_confirmed(unit, [confirmed])
    with uow() as unit:  # the same outcome again, e.g. re-emitted under a new event id
        handlers.notify_order_confirmed(unit, [confirmed])
        handlers.notify_order_cancelled(unit, OrderCancelled(order_id=order_id, user_id=user_id))

    assert [n.type for n in notifications(uow, user_id)] == ["order-confirmed", "order-cancelled"]
    assert emitted(uow)[1:] == []  # notifications emit nothing


def test_the_consumer_handles_each_order_outcome_and_skips_order_created() -> None:
    assert {t: r.model for t, r in events.routes.items()} == {
        "order-confirmed": OrderConfirmed,
        "order-rejected": OrderRejected,
        "order-cancelled": OrderCancelled,
    }
    assert events.routes["order-confirmed"].batch, "one insert for a run of confirmations"
    assert not events.routes["order-rejected"].batch
    assert not events.routes["order-cancelled"].batch
    assert "order-created" not in events.routes  # on `orders`, which user does not own
    assert SPEC.subscribes == events.topics == ["orders"]
    assert SPEC.owns == ["users"]
    assert [(e.event_type, e.topic, e.key_field) for e in PUBLISHES] == [
        ("user-registered", "users", "user_id"),
        ("signing-keys", "users", "issuer"),
    ]
    assert "signing-keys" not in events.routes, "user trusts the keys it publishes itself"


def test_order_outcomes_delivered_through_the_router_notify_their_users(uow: UnitOfWork) -> None:
    user_id = register(uow)
    confirmed, other, rejected, cancelled = (random_id() for _ in range(4))

    with uow() as unit:
        deliver(
            events,
            unit,
            OrderConfirmed(order_id=confirmed, user_id=user_id),
            OrderConfirmed(order_id=other, user_id=user_id),
            OrderRejected(order_id=rejected, user_id=user_id, reason="no stock"),
            OrderCancelled(order_id=cancelled, user_id=user_id),
        )

    assert [(n.order_id, n.type) for n in notifications(uow, user_id)] == [
        (confirmed, "order-confirmed"),
        (other, "order-confirmed"),
        (rejected, "order-rejected"),
        (cancelled, "order-cancelled"),
    ]
