"""The order service's derived views: what it keeps only from other services' events,
rebuilt from their topics by `python -m tools.replay order` (docs/replay.md)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.order import chain, handlers
from services.order.events import (
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderRejected,
    StockReleased,
    StockReserved,
    StockShortage,
)
from services.order.models import KnownProduct, KnownUser, OrderEvent
from shared.messaging.envelope import Envelope
from shared.messaging.replay import View
from shared.messaging.unit_of_work import Unit


def _reset_users(session: Session) -> None:
    session.execute(delete(KnownUser))


def _users(session: Session) -> list[tuple[object, ...]]:
    query = select(KnownUser.id, KnownUser.version).order_by(KnownUser.id)
    return [tuple(row) for row in session.execute(query)]


def _reset_products(session: Session) -> None:
    session.execute(delete(KnownProduct))


def _products(session: Session) -> list[tuple[object, ...]]:
    query = select(KnownProduct.id, KnownProduct.name, KnownProduct.version)
    return [tuple(row) for row in session.execute(query.order_by(KnownProduct.id))]


def _file(unit: Unit, events: Sequence[Envelope], order_ids: Sequence[str]) -> None:
    chain.file_events(unit.session, list(zip(events, order_ids, strict=True)))


# The chain files every event of an order with its place on Kafka: the service's own as
# its relay publishes them (on `orders`), inventory's as its consumer applies them (on
# `stock`). Rebuilt, both come back from the topics, each with the same place.


def file_created(unit: Unit, events: Sequence[OrderCreated], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def file_cancelled(unit: Unit, events: Sequence[OrderCancelled], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def file_confirmed(unit: Unit, events: Sequence[OrderConfirmed], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def file_rejected(unit: Unit, events: Sequence[OrderRejected], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def file_reserved(unit: Unit, events: Sequence[StockReserved], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def file_shortage(unit: Unit, events: Sequence[StockShortage], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def file_released(unit: Unit, events: Sequence[StockReleased], at: Sequence[Envelope]) -> None:
    _file(unit, at, [e.order_id for e in events])


def _reset_chain(session: Session) -> None:
    session.execute(delete(OrderEvent))


def _chain(session: Session) -> list[tuple[object, ...]]:
    e = OrderEvent
    query = select(
        e.event_id,
        e.order_id,
        e.type,
        e.source,
        e.time,
        e.correlation_id,
        e.causation_id,
        e.traceparent,
        e.topic,
        e.partition,
        e.offset,
    )
    return [tuple(row) for row in session.execute(query.order_by(e.event_id))]


VIEWS = (
    View(
        name="known-users",
        tables=("known_users",),
        handlers=(handlers.remember_user,),
        reset=_reset_users,
        rows=_users,
        about="who may place orders, from user's user-registered",
    ),
    View(
        name="known-products",
        tables=("known_products",),
        handlers=(handlers.remember_product,),
        reset=_reset_products,
        rows=_products,
        about="what may be ordered, from product's product-created",
    ),
    View(
        name="chain",
        tables=("order_events",),
        handlers=(
            file_created,
            file_cancelled,
            file_confirmed,
            file_rejected,
            file_reserved,
            file_shortage,
            file_released,
        ),
        reset=_reset_chain,
        rows=_chain,
        about="every event of each order with its place on Kafka, from orders and stock",
    ),
)
