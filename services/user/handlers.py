from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.user.events import (
    OrderCancelled,
    OrderConfirmed,
    OrderRejected,
    Shortage,
    UserRegistered,
)
from services.user.models import Notification, User
from shared.errors import Conflict, NotFound
from shared.messaging.unit_of_work import Unit
from shared.storage.db import insert

log = logging.getLogger(__name__)


class UserNotFound(NotFound):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} not found")
        self.user_id = user_id


class EmailAlreadyRegistered(Conflict):
    def __init__(self, email: str) -> None:
        super().__init__(f"a user with email {email} is already registered")
        self.email = email


def register_user(unit: Unit, name: str, email: str, password_hash: str) -> User:
    """Register a user; the unique key on email, not a prior lookup, rejects a second one.
    `email` is normalised already (lower case); `password_hash` is the password's hash
    (services.user.passwords), made before the transaction: hashing takes a while."""
    user = User(id=str(uuid.uuid4()), name=name, email=email, password_hash=password_hash)
    try:
        with unit.session.begin_nested():
            unit.session.add(user)
    except IntegrityError as exc:
        raise EmailAlreadyRegistered(email) from exc
    unit.outbox.emit(
        UserRegistered(user_id=user.id, name=user.name, email=user.email),
    )
    return user


def user_exists(unit: Unit, user_id: str) -> bool:
    return unit.session.get(User, user_id) is not None


def get_user(unit: Unit, user_id: str) -> User:
    user = unit.session.get(User, user_id)
    if user is None:
        raise UserNotFound(user_id)
    return user


def list_notifications(unit: Unit, user_id: str) -> list[Notification]:
    """A user's notifications, oldest first."""
    get_user(unit, user_id)
    return list(
        unit.session.scalars(
            select(Notification)
            .where(Notification.user_id == user_id)
            .order_by(Notification.created_at, Notification.id)
        )
    )


def notify_order_confirmed(unit: Unit, confirmed: Sequence[OrderConfirmed]) -> None:
    """One notification per confirmed order, for a whole run of events in one insert."""
    _notify_all(
        unit,
        [
            {
                "user_id": event.user_id,
                "order_id": event.order_id,
                "type": OrderConfirmed.event_type,
                "message": f"Order {event.order_id} is confirmed.",
            }
            for event in confirmed
        ],
    )


def notify_order_rejected(unit: Unit, event: OrderRejected) -> None:
    if event.shortages:
        why = "not enough stock of " + _and_join(_describe(s) for s in event.shortages)
    else:
        why = event.reason.rstrip(".") or "no reason given"
    message = f"Order {event.order_id} was rejected: {why}."
    _notify(unit, event.user_id, event.order_id, OrderRejected.event_type, message)


def notify_order_cancelled(unit: Unit, event: OrderCancelled) -> None:
    message = f"Order {event.order_id} was cancelled."
    _notify(unit, event.user_id, event.order_id, OrderCancelled.event_type, message)


def _notify(unit: Unit, user_id: str, order_id: str, type_: str, message: str) -> None:
    """Store one notification per (order, outcome); a second one for the same pair is a no-op.

    The consumer already drops redelivered events; this catches the same outcome arriving
    under another event id."""
    inserted = unit.session.execute(
        insert(unit.session, Notification.__table__)
        .values(user_id=user_id, order_id=order_id, type=type_, message=message)
        .on_conflict_do_nothing()
        .returning(Notification.order_id)
    ).first()
    if inserted is None:
        log.info("order %s already has a %s notification; skipped", order_id, type_)


def _notify_all(unit: Unit, rows: list[dict[str, str]]) -> None:
    """`_notify` for many notifications in one statement."""
    if rows:
        statement = insert(unit.session, Notification.__table__).on_conflict_do_nothing()
        unit.session.execute(statement, rows)


def _describe(shortage: Shortage) -> str:
    return f"{shortage.product_id} (requested {shortage.requested}, available {shortage.available})"


def _and_join(parts: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(parts)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
